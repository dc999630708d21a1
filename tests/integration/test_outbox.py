"""The outbox source: nothing lost, retries, dead letters, ordering, exactly-once database work, replay."""

import threading

import anyio
import psycopg
import pytest

import pgchanges
from pgchanges.capture.queries import query
from tests.conftest import outbox_pending, take, wait_until

pytestmark = pytest.mark.anyio

FAST_RETRY = pgchanges.RetryPolicy(max_attempts=3, initial=0.01, maximum=0.05)


async def serve_while(app, body):
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        await body()
        app.stop()


async def test_event_committed_late_is_not_skipped(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    async with pgchanges.stream(dsn, tables=["t"], source="outbox", consumer="late") as changes:
        with psycopg.connect(dsn) as slow:
            slow.execute("INSERT INTO t VALUES (1)")  # smaller event id, commits last
            db.execute("INSERT INTO t VALUES (2)")
            [first] = await take(changes, 1)
            await changes.ack(first)
            slow.commit()
        [second] = await take(changes, 1)
        await changes.ack(second)
    assert (first.new["id"], second.new["id"]) == (2, 1)
    assert second.position < first.position


def cut_once(dsn, consumer, limit, batch=2):
    """One cut as a worker makes it: (events cut, whether it went on with a snapshot cut in pieces)."""
    with psycopg.connect(dsn) as conn:
        seq = conn.execute(query("sequence_position")).fetchone()[0]
        conn.execute(query("take_xid"))
        row = conn.execute(query("cut"), {"consumer": consumer, "batch": batch, "limit": limit, "seq": seq}).fetchone()
        return int(row[1]), bool(row[2])


async def test_a_backlog_is_cut_in_pieces_in_commit_order_without_losing_a_late_commit(dsn, db):
    """With 2 lanes and batches of 2 a cut takes at most 16 events: 60 updates of 6 rows need several pieces,
    and an event that commits late, while the pieces of a snapshot are being cut, comes in a later cut."""
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    seen = []

    def consumer():
        app = pgchanges.App(dsn, source="outbox", consumer="pieces", lanes=2, batch_size=2)
        app.on("t")(lambda change: seen.append((change.new["id"], change.new["v"])))
        return app

    await serve_while(consumer(), anyio.lowlevel.checkpoint)  # the consumer exists from here on
    with psycopg.connect(dsn) as late:
        late.execute("INSERT INTO t VALUES (100, 0)")  # the smallest event id, committed last
        db.execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 6) g")
        for v in range(1, 10):
            for row in range(1, 7):
                db.execute("UPDATE t SET v = %s WHERE id = %s", (v, row))
        backlog = lambda: db.execute(query("consumer_status"), {"consumer": "pieces"}).fetchone()[1]  # noqa: E731
        assert backlog() == 60
        assert cut_once(dsn, "pieces", limit=16) == (16, False)
        assert cut_once(dsn, "pieces", limit=16) == (16, True)  # the same snapshot, ids above the first piece
        assert backlog() == 60, "pieces cut and pieces still to cut are each counted once"

        async def body():
            await wait_until(lambda: len(seen) == 60, lambda: f"the committed backlog: {len(seen)} of 60")
            late.commit()
            await wait_until(lambda: len(seen) == 61, lambda: f"the late event: {len(seen)} of 61")

        await serve_while(consumer(), body)
    assert len(set(seen)) == 61, "each event once"
    for row in range(1, 7):
        assert [v for r, v in seen if r == row] == list(range(10)), f"row {row} out of commit order"
    assert (100, 0) in seen
    assert db.execute("SELECT pending_snapshot, pending_after FROM pgchanges.consumers").fetchone() == (None, None)


async def test_unacknowledged_changes_are_delivered_again(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    db.execute("INSERT INTO t VALUES (0)")  # installs nothing yet: capture comes with the stream
    async with pgchanges.stream(dsn, tables=["t"], source="outbox", consumer="c") as changes:
        db.execute("INSERT INTO t VALUES (1), (2)")
        one, two = await take(changes, 2)
        await changes.ack(one)
    async with pgchanges.stream(dsn, tables=["t"], source="outbox", consumer="c") as changes:
        [again] = await take(changes, 1)
        await changes.ack(again)
    assert again.id == two.id and again.extra["attempt"] == 1


async def test_each_consumer_gets_every_change(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    async with (
        pgchanges.stream(dsn, tables=["t"], source="outbox", consumer="a") as a,
        pgchanges.stream(dsn, tables=["t"], source="outbox", consumer="b") as b,
    ):
        db.execute("INSERT INTO t VALUES (1)")
        [from_a] = await take(a, 1)
        [from_b] = await take(b, 1)
        await a.ack(from_a)
        await b.ack(from_b)
    assert from_a.id == from_b.id


def as_handler(kind, body):
    """``body`` as an async handler, or as a plain function (run by the plain-run path, several per thread)."""
    if kind == "plain":
        return body

    async def handler(change):
        return body(change)

    return handler


HANDLER_KINDS = pytest.mark.parametrize("kind", ["async", "plain"])


@HANDLER_KINDS
async def test_failing_handler_is_retried_then_dead_lettered_with_its_error(dsn, db, kind):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    app = pgchanges.App(dsn, source="outbox", consumer="c", retry=FAST_RETRY)
    attempts, ok = [], []

    def handler(change):
        if change.new["id"] == 1:
            attempts.append(change.extra["attempt"])
            raise ValueError("poison row")
        ok.append(change.new["id"])

    app.on("t")(as_handler(kind, handler))

    async def body():
        db.execute("INSERT INTO t VALUES (1)")
        db.execute("INSERT INTO t VALUES (2)")  # another row is not held up by the poison event
        await wait_until(lambda: ok == [2], "the healthy change")
        await wait_until(lambda: len(attempts) == 3, "three attempts")
        await wait_until(
            lambda: db.execute("SELECT count(*) FROM pgchanges.dead_letters").fetchone()[0] == 1, "a dead letter"
        )

    await serve_while(app, body)
    assert attempts == [1, 2, 3]
    row = db.execute("SELECT attempts, error FROM pgchanges.dead_letters").fetchone()
    assert row == (3, "ValueError: poison row")
    assert outbox_pending(db) == 0


@HANDLER_KINDS
async def test_later_changes_of_a_row_wait_for_its_failing_change(dsn, db, kind):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    app = pgchanges.App(dsn, source="outbox", consumer="c", retry=FAST_RETRY, lanes=1)
    seen = []

    def handler(change):
        if change.new["id"] == 1 and change.op == "insert" and change.extra["attempt"] < 3:
            raise RuntimeError("not yet")
        seen.append((change.new["id"], change.op, change.extra["attempt"]))

    app.on("t")(as_handler(kind, handler))

    async def body():
        with db.transaction():  # one batch: the failure and the changes behind it are handled together
            db.execute("INSERT INTO t VALUES (1, 0)")
            db.execute("UPDATE t SET v = 1 WHERE id = 1")
            db.execute("INSERT INTO t VALUES (2, 0)")
            db.execute("UPDATE t SET v = 2 WHERE id = 1")
        await wait_until(lambda: len(seen) == 4, "all four changes")

    await serve_while(app, body)
    row_one = [s[1:] for s in seen if s[0] == 1]
    assert row_one == [("insert", 3), ("update", 1), ("update", 1)]
    assert (2, "insert", 1) in seen


async def test_transaction_handler_writes_commit_with_the_ack_exactly_once(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    db.execute("CREATE TABLE ledger (event_id bigint, note text)")
    app = pgchanges.App(dsn, source="outbox", consumer="c", retry=FAST_RETRY)
    calls = []

    @app.on("t", transaction=True)
    async def book(change, tx):
        await tx.execute("INSERT INTO ledger VALUES (%s, 'booked')", (change.position,))
        calls.append(change.extra["attempt"])
        if change.extra["attempt"] == 1:
            raise RuntimeError("crash after writing")

    @app.on("t", transaction=True)
    def book_sync(change, tx):  # sync handlers get the connection of the same transaction
        tx.connection.execute("INSERT INTO ledger VALUES (%s, 'sync')", (change.position,))

    async def body():
        db.execute("INSERT INTO t VALUES (1)")
        await wait_until(lambda: calls == [1, 2], "a failed and a successful attempt")
        await wait_until(lambda: outbox_pending(db) == 0, "the acknowledgement")

    await serve_while(app, body)
    assert db.execute("SELECT note FROM ledger ORDER BY note").fetchall() == [("booked",), ("sync",)]


@HANDLER_KINDS
async def test_hanging_handler_times_out_and_is_retried(dsn, db, kind):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    app = pgchanges.App(dsn, source="outbox", consumer="c", retry=FAST_RETRY, handler_timeout=0.2, lanes=1)
    done = []
    release = threading.Event()  # lets the abandoned thread of a hung plain handler end with the test

    if kind == "async":

        @app.on("t")
        async def handler(change):
            if change.new["id"] == 1 and change.extra["attempt"] == 1:
                await anyio.sleep_forever()
            done.append((change.new["id"], change.extra["attempt"]))
    else:

        @app.on("t")
        def plain_handler(change):
            if change.new["id"] == 1 and change.extra["attempt"] == 1:
                release.wait(30)
                return
            done.append((change.new["id"], change.extra["attempt"]))

    async def body():
        with db.transaction():  # one batch: the change behind the hung one is handled after the timeout
            db.execute("INSERT INTO t VALUES (1)")
            db.execute("INSERT INTO t VALUES (2)")
        await wait_until(lambda: len(done) == 2, "the retry after the timeout")

    try:
        await serve_while(app, body)
    finally:
        release.set()
    assert sorted(done) == [(1, 2), (2, 1)]
    error = db.execute("SELECT count(*) FROM pgchanges.dead_letters").fetchone()[0]
    assert error == 0


async def test_worker_reconnects_after_its_connection_is_terminated(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    app = pgchanges.App(dsn, source="outbox", consumer="c", application_name="outbox-victim")
    seen = []
    app.on("t")(lambda c: seen.append(c.new["id"]))

    async def body():
        db.execute("INSERT INTO t VALUES (1)")
        await wait_until(lambda: seen == [1], "the first change")
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'outbox-victim'")
        db.execute("INSERT INTO t VALUES (2)")
        await wait_until(lambda: 2 in seen, "a change after the connection was killed", timeout=20)

    await serve_while(app, body)
    assert sorted(set(seen)) == [1, 2]


async def test_replay_and_retention(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    async with pgchanges.stream(dsn, tables=["t"], source="outbox", consumer="c") as changes:
        db.execute("INSERT INTO t SELECT generate_series(1, 5)")
        got = sorted(await take(changes, 5), key=lambda c: c.position)
        await changes.ack(*got)
        since = {"since_id": got[2].position, "below_id": None, "since_time": None}
        db.execute(query("replay"), {"consumer": "c", **since})
        again = await take(changes, 3)
        await changes.ack(*again)
    assert sorted(c.new["id"] for c in again) == [3, 4, 5]  # rows in different lanes: no order among them
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query("purge_events"), {"retention": 0, "limit": 1000})
        left = conn.execute("SELECT count(*) FROM pgchanges.events").fetchone()[0]
    assert left == 0


async def test_retention_removes_finished_events_past_it_and_keeps_younger_ones(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    async with pgchanges.stream(dsn, tables=["t"], source="outbox", consumer="c") as changes:
        db.execute("INSERT INTO t SELECT generate_series(1, 6)")
        await changes.ack(*await take(changes, 6))
    ids = [r[0] for r in db.execute("SELECT id FROM pgchanges.events ORDER BY id")]
    db.execute("UPDATE pgchanges.events SET created_at = now() - interval '2 hours' WHERE id <= %s", (ids[2],))
    db.execute(query("purge_events"), {"retention": 3600, "limit": 1000})
    assert [r[0] for r in db.execute("SELECT id FROM pgchanges.events ORDER BY id")] == ids[3:]
    db.execute(query("purge_events"), {"retention": 0, "limit": 1000})
    assert db.execute("SELECT count(*) FROM pgchanges.events").fetchone()[0] == 0


async def test_status_counts(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    async with pgchanges.stream(dsn, tables=["t"], source="outbox", consumer="c") as changes:
        db.execute("INSERT INTO t SELECT generate_series(1, 3)")
        [first, *_rest] = await take(changes, 3)
        row = db.execute(query("consumer_status"), {"consumer": "c"}).fetchone()
        await changes.ack(first)
    name, backlog, oldest, in_flight, retrying, dead, _sleeping, _seen = row
    assert (name, backlog, in_flight, retrying, dead) == ("c", 3, 3, 0, 0)
    assert oldest >= 0


def test_many_writers_and_a_long_transaction_lose_nothing(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, w int)")

    def writer(w):
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(200):
                conn.execute("INSERT INTO t VALUES (%s, %s)", (w * 1000 + i, w))

    async def main():
        got = set()
        async with pgchanges.stream(dsn, tables=["t"], source="outbox", consumer="c", batch_size=50) as changes:
            with psycopg.connect(dsn) as long_tx:
                long_tx.execute("INSERT INTO t VALUES (999999, -1)")
                threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
                for thread in threads:
                    thread.start()
                async for change in changes:
                    got.add(change.new["id"])
                    await changes.ack(change)
                    if len(got) == 800:
                        break
                for thread in threads:
                    thread.join()
                long_tx.commit()
            async for change in changes:
                got.add(change.new["id"])
                await changes.ack(change)
                break
        return got

    got = anyio.run(main)
    assert got == {w * 1000 + i for w in range(4) for i in range(200)} | {999999}


async def test_a_stream_whose_connection_dies_before_the_ack_gets_the_batch_again(dsn, db):
    """The acknowledgement commits the claim's transaction; when the connection died first, ack() does not
    raise: the server rolled the claim back and the same changes come again (the CI's partition found it)."""
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    async with pgchanges.stream(dsn, tables=["t"], source="outbox", consumer="c") as changes:
        db.execute("INSERT INTO t VALUES (1)")
        [first] = await take(changes, 1)
        killed = db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE state = 'idle in transaction' AND datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        assert killed == [(True,)], "the claim's connection, idle in its transaction"
        await changes.ack(first)
        [again] = await take(changes, 1)
        await changes.ack(again)
        db.execute("INSERT INTO t VALUES (2)")
        [second] = await take(changes, 1)
        await changes.ack(second)
    assert again.id == first.id
    assert second.new["id"] == 2
    assert outbox_pending(db) == 0
