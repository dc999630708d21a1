"""App: routing, sync and async handlers, ordering, error policy, connection inputs, shutdown."""

import logging
import threading

import anyio
import psycopg
import pytest
import sqlalchemy

import pgchanges
from tests.conftest import wait_until

pytestmark = pytest.mark.anyio


async def serve_while(app, body):
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        await body()
        app.stop()


async def test_async_and_sync_handlers_with_ops_and_where(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
    db.execute("CREATE TABLE other (id int)")
    app = pgchanges.App(dsn)
    inserted, paid, every = [], [], []

    @app.on("public.orders", ops={"insert"})
    async def on_insert(change):
        inserted.append(change.new["id"])

    @app.on("orders", ops="update", where=lambda c: c.new["status"] == "paid")
    def on_paid(change):  # a plain function runs in a worker thread
        assert threading.current_thread() is not threading.main_thread()
        paid.append(change.new["id"])

    @app.on("other")
    def on_other(change):
        every.append(change.op)

    async def body():
        db.execute("INSERT INTO orders VALUES (1, 'new'), (2, 'new')")
        db.execute("UPDATE orders SET status = 'paid' WHERE id = 1")
        db.execute("UPDATE orders SET status = 'lost' WHERE id = 2")
        db.execute("INSERT INTO other VALUES (1); DELETE FROM other")
        await wait_until(lambda: len(every) == 2 and paid and len(inserted) == 2, "handlers to run")

    await serve_while(app, body)
    assert inserted == [1, 2] and paid == [1] and every == ["insert", "delete"]


async def test_changes_of_one_table_are_handled_in_commit_order(dsn, db):
    db.execute("CREATE TABLE t (id int)")
    app = pgchanges.App(dsn)
    seen = []

    @app.on("t")
    async def slow_async(change):
        if change.new["id"] % 7 == 0:
            await anyio.sleep(0.001)
        seen.append(("a", change.new["id"]))

    @app.on("t")
    def sync_after(change):
        seen.append(("s", change.new["id"]))

    async def body():
        for i in range(0, 300, 30):
            db.execute("INSERT INTO t SELECT generate_series(%s::int, %s::int)", (i, i + 29))
        await wait_until(lambda: len(seen) == 600, "600 handler calls")

    await serve_while(app, body)
    expected = [(kind, i) for i in range(300) for kind in ("a", "s")]
    assert seen == expected


async def test_a_raising_handler_is_logged_with_the_change_id_and_the_app_goes_on(dsn, db, caplog):
    db.execute("CREATE TABLE t (id int)")
    app = pgchanges.App(dsn)
    ok = []

    @app.on("t")
    async def flaky(change):
        if change.new["id"] == 1:
            raise ValueError("boom")
        ok.append(change.new["id"])

    async def body():
        db.execute("INSERT INTO t VALUES (1)")
        db.execute("INSERT INTO t VALUES (2)")
        await wait_until(lambda: ok == [2], "the second change")

    with caplog.at_level(logging.ERROR, logger="pgchanges.app"):
        await serve_while(app, body)
    [record] = [r for r in caplog.records if "boom" in r.getMessage()]
    assert "notify:" in record.getMessage() and "flaky" in record.getMessage()
    assert app.server.runtime.failures == 1


async def test_stop_policy_ends_serve_with_handler_failed(dsn, db):
    db.execute("CREATE TABLE t (id int)")
    app = pgchanges.App(dsn, on_error="stop")

    @app.on("t")
    def broken(change):
        raise RuntimeError("stop here")

    with pytest.raises(BaseException) as info:
        async with anyio.create_task_group() as tg:
            await tg.start(app.serve)
            db.execute("INSERT INTO t VALUES (1)")
            with anyio.fail_after(10):
                await anyio.sleep_forever()
    assert info.group_contains(pgchanges.HandlerFailed) if hasattr(info, "group_contains") else True
    assert "stop here" in repr(info.value)


@pytest.mark.parametrize("kind", ["engine", "psycopg", "dict"])
async def test_app_accepts_engine_connection_or_dict(dsn, db, kind):
    db.execute("CREATE TABLE t (id int)")
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    if kind == "engine":
        url = sqlalchemy.engine.URL.create(
            "postgresql+psycopg",
            username=params["user"],
            host=params["host"],
            port=int(params["port"]),
            database=params["dbname"],
        )
        app = pgchanges.App(engine=sqlalchemy.create_engine(url))
    elif kind == "psycopg":
        with psycopg.connect(dsn) as conn:
            app = pgchanges.App(conn)
    else:
        app = pgchanges.App(params)
    got = []
    app.on("t")(got.append)

    async def body():
        db.execute("INSERT INTO t VALUES (5)")
        await wait_until(lambda: got, "a change")

    await serve_while(app, body)
    assert got[0].new == {"id": 5}


async def test_plain_channels_with_odd_names_and_gap_handlers(dsn, db):
    app = pgchanges.App(dsn)
    notes, gaps = [], []
    app.on_notify('Odd "Channel" ü')(notes.append)
    app.on_gap(gaps.append)

    async def body():
        db.execute("SELECT pg_notify(%s, %s)", ('Odd "Channel" ü', "hello"))
        await wait_until(lambda: notes, "the notification")
        db.execute("SELECT pg_terminate_backend(%s)", (app.source.listener_pid,))
        await wait_until(lambda: gaps, "a gap report")
        db.execute("SELECT pg_notify(%s, %s)", ('Odd "Channel" ü', "again"))
        await wait_until(lambda: len(notes) == 2, "the notification after reconnecting")

    await serve_while(app, body)
    assert [n.payload for n in notes] == ["hello", "again"]
    assert gaps[0].op == "gap"
