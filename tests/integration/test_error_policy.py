"""The one error policy on every source: a raising where, on_error callables and "stop", declared features."""

import anyio
import pytest

import pgchanges
from tests.conftest import outbox_pending, wait_until

pytestmark = pytest.mark.anyio

FAST_RETRY = pgchanges.RetryPolicy(max_attempts=2, initial=0.01, maximum=0.02)
SOURCES = {
    "notify": {},
    "outbox": {"consumer": "c", "retry": FAST_RETRY},
    "logical": {},
    "polling": {"column": "id", "consumer": "c", "interval": 0.05},
}


@pytest.mark.parametrize("source", sorted(SOURCES))
async def test_a_raising_where_reaches_the_policy_on_every_source(dsn, db, source):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    failures, seen = [], []

    def record(change, exc):
        failures.append((change.new["id"], str(exc)))

    app = pgchanges.App(dsn, source=source, on_error=record, **SOURCES[source])

    def broken(change):
        raise ValueError("filter broke")

    @app.on("t")
    async def every(change):
        seen.append(change.new["id"])

    @app.on("t", where=broken)
    async def never(change):
        raise AssertionError("a failing where must not let the change through")

    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO t VALUES (1)")
        await wait_until(lambda: seen and failures, lambda: f"seen {seen}, failures {failures}")
        app.stop()
    assert failures[0] == (1, "filter broke")
    assert seen[0] == 1


async def test_the_outbox_honours_on_error_stop_and_delivers_the_change_again(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    app = pgchanges.App(dsn, source="outbox", consumer="c", retry=FAST_RETRY, on_error="stop")

    @app.on("t")
    async def fails(change):
        raise RuntimeError("stop here")

    with pytest.raises(BaseExceptionGroup) as info, anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(app.serve)
            db.execute("INSERT INTO t VALUES (1)")
            await anyio.sleep_forever()  # ended by the App's failure, or by fail_after
    assert info.group_contains(pgchanges.HandlerFailed)
    assert outbox_pending(db) == 1  # not acknowledged: the change comes again after a restart
    again = pgchanges.App(dsn, source="outbox", consumer="c", retry=FAST_RETRY)
    got = []

    @again.on("t")
    async def handled(change):
        got.append(change.new["id"])

    async with anyio.create_task_group() as tg:
        await tg.start(again.serve)
        await wait_until(lambda: got == [1], "the change delivered again")
        await wait_until(lambda: outbox_pending(db) == 0, "the acknowledgement")
        again.stop()


@pytest.mark.parametrize(
    ("source", "declare", "message"),
    [
        ("logical", "transaction", "transaction=True need source='outbox'"),
        ("outbox", "on_transaction", "on_transaction handlers need source='logical'"),
        ("polling", "on_notify", r"\(on_notify\) need source='notify'"),
    ],
)
async def test_a_handler_the_source_cannot_serve_is_refused_when_serving_starts(dsn, db, source, declare, message):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    app = pgchanges.App(dsn, source=source, **({"column": "id"} if source == "polling" else {}))
    if declare == "transaction":
        app.on("t", transaction=True)(lambda change, tx: None)
    elif declare == "on_transaction":
        app.on("t")(lambda change: None)
        app.on_transaction(["t"])(lambda changes: None)
    else:
        app.on("t")(lambda change: None)
        app.on_notify("channel")(lambda note: None)
    with pytest.raises(pgchanges.ConfigError, match=message):
        await app.serve()
