"""The outbox from the terminal: resumable tail, status, dead letters, replay."""

import signal

import anyio
import pytest

import pgchanges
from pgchanges.change import Change
from tests.cli_process import Running, run
from tests.conftest import outbox_pending, wait_until


def tail(dsn, *extra):
    proc = Running(
        "tail", "orders", "--source", "outbox", "--consumer", "cli", "--format", "json", "--dsn", dsn, *extra
    )
    proc.wait_stderr("-- tailing")
    return proc


def queued(db):
    return outbox_pending(db)


def test_killed_tail_continues_where_it_stopped(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    first = tail(dsn)
    db.execute("INSERT INTO orders SELECT generate_series(1, 3)")
    assert [Change.from_json(line).new["id"] for line in first.lines(3)] == [1, 2, 3]
    # a kill between printing and committing the ack would show the last change again (at-least-once);
    # here we kill once every printed change is acknowledged
    anyio.run(wait_until, lambda: queued(db) == 0, "the acknowledgements to commit")
    first.proc.send_signal(signal.SIGKILL)
    first.finish()
    db.execute("INSERT INTO orders VALUES (4)")
    second = tail(dsn, "--count", "1")
    [line] = second.lines(1)
    assert Change.from_json(line).new["id"] == 4
    assert second.finish() == 0


def test_install_outbox_and_status(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    assert run("install", "orders", "--source", "outbox", "--dsn", dsn).stdout.strip() == (
        "outbox capture installed on public.orders"
    )
    db.execute("INSERT INTO orders SELECT generate_series(1, 5)")
    counted = tail(dsn, "--count", "2")
    assert len(counted.lines(2)) == 2 and counted.finish() == 0
    status = run("status", "--dsn", dsn).stdout
    assert "outbox   public.orders" in status
    [row] = [line.split() for line in status.splitlines() if line.startswith("cli ")]
    assert row[1] == "3" and row[3] == "0"  # backlog 3, nothing in flight


def test_dead_letters_list_retry_drop_and_replay(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    app = pgchanges.App(dsn, source="outbox", consumer="billing", retry=pgchanges.RetryPolicy(max_attempts=1))
    app.on("orders")(lambda change: 1 / 0)

    async def fail_twice():
        async with anyio.create_task_group() as tg:
            await tg.start(app.serve)
            db.execute("INSERT INTO orders VALUES (1), (2)")
            await wait_until(
                lambda: db.execute("SELECT count(*) FROM pgchanges.dead_letters").fetchone()[0] == 2, "2 dead letters"
            )
            app.stop()

    anyio.run(fail_twice)
    listed = run("dead-letters", "list", "--dsn", dsn).stdout.splitlines()
    assert (
        len(listed) == 2 and "ZeroDivisionError: division by zero" in listed[0] and "insert public.orders" in listed[0]
    )
    first_id = int(listed[0].split()[2])
    assert (
        "1 dead letter(s) of billing queued again"
        in run("dead-letters", "retry", str(first_id), "--consumer", "billing", "--dsn", dsn).stdout
    )
    assert db.execute("SELECT event_id FROM pgchanges.parked").fetchall() == [(first_id,)]
    assert (
        "1 dead letter(s) of billing dropped"
        in run("dead-letters", "drop", "--consumer", "billing", "--dsn", dsn).stdout
    )
    replayed = run("replay", "--consumer", "billing", "--since", str(first_id), "--dsn", dsn)
    assert replayed.stdout.strip() == "2 event(s) queued again for billing"
    bad = run("replay", "--consumer", "nobody", "--since", "1", "--dsn", dsn)
    assert bad.returncode == 1 and "no outbox consumer named 'nobody'" in bad.stderr


@pytest.mark.parametrize("action", ["retry", "drop"])
def test_dead_letter_changes_need_a_consumer(dsn, action):
    result = run("dead-letters", action, "--dsn", dsn)
    assert result.returncode == 1 and "needs --consumer" in result.stderr
