"""The polling source: watermark on (column, primary key), late commits, soft deletes, saved watermarks."""

import json
import random
import signal
import threading
import time
from typing import Any

import anyio
import psycopg
import pytest

import pgchanges
from pgchanges.change import Change
from pgchanges.errors import ConfigError, TableNotFound
from tests.cli_process import Running
from tests.conftest import take, wait_until

ITEMS = """CREATE TABLE items (
    id int PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz, note text)"""


def polling(dsn: str, **options: Any) -> Any:
    settings = {"column": "updated_at", "interval": 0.05, "consumer": "test", **options}
    return pgchanges.stream(dsn, tables=["items"], source="polling", **settings)


def versions(db: psycopg.Connection[Any]) -> set[tuple[int, int]]:
    return {(r[0], int(r[1])) for r in db.execute("SELECT id, xmin::text FROM items").fetchall()}


def write_concurrently(dsn: str, writers: int, transactions: int, stop_ids: list[int]) -> None:
    """Writers that insert rows sharing timestamps (whole seconds), rows stamped now() in slow transactions
    (committing behind the watermark), and updates."""

    def work(worker: int) -> None:
        rng = random.Random(worker)
        with psycopg.connect(dsn) as conn:
            for n in range(transactions):
                base = (worker * transactions + n) * 10
                with conn.transaction():
                    kind = rng.random()
                    if kind < 0.4:  # many rows, of many transactions, with the very same watermark value
                        conn.execute(
                            "INSERT INTO items (id, updated_at) "
                            "SELECT g, date_trunc('second', now()) FROM generate_series(%s::int, %s::int) g",
                            (base, base + rng.randint(0, 9)),
                        )
                    elif kind < 0.8:  # now() is the transaction start: commits late, behind the watermark
                        conn.execute("INSERT INTO items (id) VALUES (%s)", (base,))
                        time.sleep(rng.uniform(0, 0.05))  # workload: a slow transaction, not synchronisation
                        conn.execute("INSERT INTO items (id) VALUES (%s)", (base + 1,))
                    else:
                        conn.execute(
                            "UPDATE items SET updated_at = now(), note = %s WHERE id = "
                            "(SELECT id FROM items ORDER BY random() LIMIT 1)",
                            (f"w{worker}",),
                        )
        stop_ids.append(worker)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.anyio
async def test_concurrent_writers_with_equal_timestamps_and_late_commits_miss_nothing(dsn, db):
    db.execute(ITEMS)
    seen: set[tuple[int, int]] = set()
    late = 0
    done: list[int] = []
    async with polling(dsn, batch_size=7) as changes:
        writer = threading.Thread(target=write_concurrently, args=(dsn, 4, 60, done), daemon=True)
        writer.start()

        async def consume() -> None:
            nonlocal late
            async for change in changes:
                seen.add((change.new["id"], change.xid))
                late += bool(change.extra and change.extra.get("late"))
                await changes.ack(change)

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.to_thread.run_sync(writer.join)
            assert len(done) == 4, "a writer thread failed"
            final = versions(db)
            await wait_until(lambda: final <= seen, f"every row's final version; missing {final - seen}", timeout=30)
            tg.cancel_scope.cancel()
    assert final <= seen
    assert late > 0, "the workload should have produced late commits (behind the watermark)"


@pytest.mark.anyio
async def test_a_late_commit_behind_the_watermark_is_delivered(dsn, db):
    db.execute(ITEMS)
    async with polling(dsn) as changes:
        slow = psycopg.connect(dsn)
        try:
            slow.execute("SELECT now()")  # its now() is fixed here, before the rows below
            db.execute("INSERT INTO items (id) VALUES (2)")
            [first] = await take(changes, 1)
            await changes.ack(first)
            slow.execute("INSERT INTO items (id) VALUES (1)")
            slow.commit()
        finally:
            slow.close()
        [second] = await take(changes, 1)
    assert (first.new["id"], second.new["id"]) == (2, 1)
    assert second.new["updated_at"] < first.new["updated_at"] and second.extra == {"late": True}
    assert second.op == "upsert" and second.id.startswith("poll:public.items:1:")


@pytest.mark.anyio
async def test_soft_deletes_and_a_saved_watermark(dsn, db):
    db.execute(ITEMS)
    db.execute("INSERT INTO items (id) SELECT generate_series(1, 3)")
    async with polling(dsn, soft_delete="deleted_at") as changes:
        got = await take(changes, 3)
        await changes.ack(*got[:2])  # the third is not acknowledged: it comes again
    assert [c.new["id"] for c in got] == [1, 2, 3]
    db.execute("UPDATE items SET deleted_at = now(), updated_at = now() WHERE id = 1")
    async with polling(dsn, soft_delete="deleted_at") as changes:
        again = await take(changes, 2)
        await changes.ack(*again)
    assert [(c.op, (c.new or c.old)["id"]) for c in again] == [("upsert", 3), ("delete", 1)]
    assert again[0].id == got[2].id  # the same row version keeps its id
    state = db.execute("SELECT state FROM pgchanges.poll_state WHERE consumer = 'test'").fetchone()[0]
    assert state["position"][1] == "1"


@pytest.mark.anyio
async def test_a_read_only_role_polls_and_keeps_its_watermark_in_a_file(dsn, db, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    db.execute(ITEMS)
    db.execute("INSERT INTO items (id) VALUES (1), (2)")
    role = f"reader_{db.info.backend_pid}"
    db.execute(f"CREATE ROLE {role} LOGIN; GRANT SELECT ON items TO {role}")
    reader = dsn.replace("user=postgres", f"user={role}")
    try:
        async with polling(reader) as changes:
            assert changes.source.state_location.startswith(f"file {tmp_path}")
            got = await take(changes, 2)
            await changes.ack(*got)
        db.execute("INSERT INTO items (id) VALUES (3)")
        async with polling(reader) as changes:
            [third] = await take(changes, 1)
    finally:
        db.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
    assert [c.new["id"] for c in got] == [1, 2] and third.new["id"] == 3
    assert db.execute("SELECT to_regnamespace('pgchanges')").fetchone() == (None,)  # nothing was installed
    [state_file] = (tmp_path / "pgchanges").iterdir()
    assert json.loads(state_file.read_text())["public.items"]["position"][1] == "2"


@pytest.mark.anyio
async def test_a_new_consumer_starting_now_skips_existing_rows(dsn, db):
    db.execute(ITEMS)
    db.execute("INSERT INTO items (id, updated_at) SELECT g, '2026-01-01' FROM generate_series(1, 3) g")
    app = pgchanges.App(dsn, source="polling", column="updated_at", interval=0.05, consumer="late", start="now")
    seen: list[int] = []
    app.on("items")(lambda change: seen.append(change.new["id"]))

    def first_poll_saved() -> bool:  # "now" is the consumer's first poll
        return db.execute("SELECT count(*) FROM pgchanges.poll_state WHERE consumer = 'late'").fetchone()[0] == 1

    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        await wait_until(first_poll_saved, "the first poll")
        db.execute("INSERT INTO items (id, updated_at) VALUES (4, '2026-01-01')")  # same timestamp, larger key
        await wait_until(lambda: seen, "the row written after the start")
        app.stop()
    assert seen == [4]


@pytest.mark.anyio
async def test_polling_survives_terminated_connections(dsn, db):
    db.execute(ITEMS)
    app = pgchanges.App(dsn, source="polling", column="updated_at", interval=0.05, application_name="poll-victim")
    seen: list[int] = []
    app.on("items")(lambda change: seen.append(change.new["id"]))
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO items (id) VALUES (1)")
        await wait_until(lambda: seen == [1], "the first row")
        killed = db.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'poll-victim'"
        ).fetchone()[0]
        db.execute("INSERT INTO items (id) VALUES (2)")
        await wait_until(lambda: 2 in seen, "a row after the connections were terminated", timeout=20)
        app.stop()
    assert killed == 2 and sorted(set(seen)) == [1, 2]
    state = db.execute("SELECT state FROM pgchanges.poll_state").fetchone()[0]
    assert state["position"][1] == "2"


@pytest.mark.anyio
async def test_app_polls_tables_of_a_pattern_including_new_ones(dsn, db):
    db.execute("CREATE TABLE feed_a (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
    app = pgchanges.App(dsn, source="polling", column="at", interval=0.05, consumer="app")
    seen: list[Change] = []
    app.on("public.feed_*")(seen.append)
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO feed_a (id) VALUES (1)")
        db.execute("CREATE TABLE feed_b (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
        db.execute("INSERT INTO feed_b (id) VALUES (2)")
        await wait_until(lambda: len(seen) >= 2, "rows of both tables")
        app.stop()
    assert sorted((c.table, c.new["id"]) for c in seen) == [("feed_a", 1), ("feed_b", 2)]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("setup", "options", "error", "message"),
    [
        ("CREATE TABLE items (id int PRIMARY KEY)", {}, ConfigError, "has no column 'updated_at'"),
        ("CREATE TABLE items (updated_at timestamptz)", {}, ConfigError, "needs a primary key"),
        ("SELECT 1", {}, TableNotFound, "table public.items does not exist"),
        (ITEMS, {"column": None}, ConfigError, "needs the watermark column"),
        (ITEMS, {"soft_delete": "gone"}, ConfigError, "has no column 'gone'"),
    ],
)
async def test_bad_configuration_gets_a_clear_error(dsn, db, setup, options, error, message):
    db.execute(setup)
    with pytest.raises(error, match=message):
        async with polling(dsn, **options):
            pass


def test_cli_tail_polling_resumes_after_a_kill(dsn, db):
    db.execute(ITEMS)
    db.execute("INSERT INTO items (id) VALUES (1), (2)")
    args = ("tail", "items", "--source", "polling", "--column", "updated_at", "--consumer", "cli")
    first = Running(*args, "--interval", "0.05", "--format", "json", "--dsn", dsn)
    assert [Change.from_json(line).new["id"] for line in first.lines(2)] == [1, 2]

    def saved() -> bool:
        row = db.execute("SELECT state FROM pgchanges.poll_state WHERE consumer = 'cli'").fetchone()
        return row is not None and row[0]["position"][1] == "2"

    anyio.run(wait_until, saved, "the watermark to be saved")
    first.proc.send_signal(signal.SIGKILL)
    first.finish()
    db.execute("INSERT INTO items (id) VALUES (3)")
    second = Running(*args, "--count", "1", "--format", "json", "--dsn", dsn)
    assert Change.from_json(second.lines(1)[0]).new["id"] == 3
    assert second.finish() == 0
