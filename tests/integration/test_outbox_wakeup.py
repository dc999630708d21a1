"""Waking sleeping outbox workers: writers NOTIFY only while some worker sleeps, and never for a dead one."""

import signal
import textwrap
import time

import anyio
import psycopg
import pytest

import pgchanges
from pgchanges.capture import migrations
from pgchanges.capture.install import install
from pgchanges.names import TableName
from tests.cli_process import Running
from tests.conftest import take, wait_for, wait_until

CHANNEL = "pgchanges:outbox"


def writer_notified(dsn, db, write):
    """Whether ``write`` (run on ``db``) made the outbox triggers NOTIFY.

    A sentinel notification sent after the write commits arrives after any notification of the write, so
    receiving the sentinel first proves there was none.
    """
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{CHANNEL}"')
        write()
        db.execute("SELECT pg_notify(%s, 'sentinel')", (CHANNEL,))
        first = next(listener.notifies(timeout=10))
        return first.payload != "sentinel"


def sleep_until_value(db):
    return db.execute("SELECT pg_sequence_last_value('pgchanges.sleep_until')").fetchone()[0]


def test_writers_notify_only_while_a_worker_sleeps(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    install(db, [TableName("public", "t")], "outbox")
    writes = {
        "insert": lambda: db.execute("INSERT INTO t VALUES (1, 0)"),
        "update": lambda: db.execute("UPDATE t SET v = v + 1"),
        "delete": lambda: db.execute("DELETE FROM t"),
        "truncate": lambda: db.execute("TRUNCATE t"),
    }
    for op, write in writes.items():
        assert not writer_notified(dsn, db, write), f"{op} notified with nobody asleep"
    db.execute("SELECT pgchanges.sleep_v1('c', 'w1', 60)")
    for op, write in writes.items():
        assert writer_notified(dsn, db, write), f"{op} did not wake a sleeping worker"
    db.execute("SELECT pgchanges.wake_v1('c', 'w1')")
    assert not writer_notified(dsn, db, writes["insert"])


def test_waking_keeps_the_deadline_of_workers_still_asleep(db):
    migrations.migrate(db)
    db.execute("SELECT pgchanges.sleep_v1('c', 'long', 600)")
    db.execute("SELECT pgchanges.sleep_v1('d', 'short', 30)")
    now = db.execute("SELECT extract(epoch FROM now())").fetchone()[0]
    assert now + 590 < sleep_until_value(db) <= now + 601
    db.execute("SELECT pgchanges.wake_v1('c', 'long')")
    assert now + 20 < sleep_until_value(db) <= now + 31
    db.execute("SELECT pgchanges.wake_v1('d', 'short')")
    assert sleep_until_value(db) == 0


SLEEPER = """
import pgchanges

app = pgchanges.App({dsn!r}, source="outbox", consumer="sleepy", poll_interval={poll!r})

@app.on("public.t")
async def handle(change):
    pass
"""


def sleeping_workers(db, consumer):
    return db.execute(
        "SELECT count(*) FROM pgchanges.sleepers WHERE consumer = %s AND until > now()", (consumer,)
    ).fetchone()[0]


def test_a_worker_killed_in_its_sleep_stops_costing_writers_at_its_deadline(dsn, db, tmp_path):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    (tmp_path / "sleeper.py").write_text(textwrap.dedent(SLEEPER.format(dsn=dsn, poll=0.5)))
    worker = Running("run", "sleeper:app", "-v", cwd=tmp_path)
    worker.wait_stderr("listening for changes")
    wait_for(lambda: sleeping_workers(db, "sleepy") > 0, "the idle worker to go to sleep", timeout=10)
    worker.proc.send_signal(signal.SIGKILL)
    assert worker.finish(timeout=30) == -signal.SIGKILL
    # its sleepers row is left behind: writers still wake it until its deadline (poll interval + slack)
    assert writer_notified(dsn, db, lambda: db.execute("INSERT INTO t VALUES (1)"))
    wait_for(lambda: sleep_until_value(db) < time.time(), "the dead worker's deadline to pass", timeout=5)
    assert not writer_notified(dsn, db, lambda: db.execute("INSERT INTO t VALUES (2)"))


async def first_change_written_while_asleep(dsn, db, write):
    """The first change a stream of consumer ``c`` on ``t`` receives, ``write`` having run once it slept.

    Its poll interval lies far beyond the wait: only a wake-up can deliver in time.
    """
    got = []
    async with pgchanges.stream(dsn, tables=["t"], source="outbox", consumer="c", poll_interval=120) as changes:

        async def receive():
            got.extend(await take(changes, 1, timeout=10))

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await wait_until(lambda: sleeping_workers(db, "c") > 0, "the idle stream to go to sleep")
            write()
        await changes.ack(got[0])
    return got[0]


@pytest.mark.anyio
async def test_a_sleeping_worker_is_woken_by_the_first_write(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    change = await first_change_written_while_asleep(dsn, db, lambda: db.execute("INSERT INTO t VALUES (1)"))
    assert change.new == {"id": 1}
    assert sleeping_workers(db, "c") == 0


@pytest.mark.anyio
async def test_a_write_begun_before_the_worker_slept_is_not_left_for_the_poll(dsn, db):
    """The writer checks for sleepers (none yet) before the worker announces its sleep, and commits after the
    worker's last look: its trigger sent no NOTIFY, yet the event must not wait for the 120 s poll."""
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    async with pgchanges.stream(dsn, tables=["t"], source="outbox", consumer="c", poll_interval=120):
        pass  # the consumer exists from here on
    with psycopg.connect(dsn) as writer:
        writer.execute("INSERT INTO t VALUES (1)")  # its trigger finds nobody asleep: no NOTIFY at commit
        assert sleep_until_value(db) == 0
        change = await first_change_written_while_asleep(dsn, db, writer.commit)
    assert change.new == {"id": 1}
