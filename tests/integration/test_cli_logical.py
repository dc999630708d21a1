"""Logical capture from the terminal: install, resumable tail on a named slot, slots."""

import signal

from pgchanges.change import Change
from tests.cli_process import Running, run


def tail(dsn, *extra):
    proc = Running(
        "tail", "orders", "--source", "logical", "--slot", "cli_slot", "--format", "json", "--dsn", dsn, *extra
    )
    proc.wait_stderr("-- tailing")
    return proc


def test_install_tail_resume_and_slots(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    installed = run("install", "orders", "--source", "logical", "--slot", "cli_slot", "--dsn", dsn)
    assert installed.returncode == 0 and "logical capture installed on public.orders" in installed.stdout
    first = tail(dsn)
    db.execute("INSERT INTO orders SELECT generate_series(1, 3)")
    assert [Change.from_json(x).new["id"] for x in first.lines(3)] == [1, 2, 3]
    first.proc.send_signal(signal.SIGKILL)
    first.finish()
    db.execute("INSERT INTO orders VALUES (4)")
    second = tail(dsn)
    seen = []
    while not seen or seen[-1] != 4:
        seen.append(Change.from_json(second.lines(1)[0]).new["id"])
    second.proc.send_signal(signal.SIGTERM)
    second.finish()
    # acknowledged after printing: a killed tail may show its last changes again, never skips one
    assert seen[-1] == 4 and set(seen[:-1]) <= {1, 2, 3}
    listed = run("slots", "--dsn", dsn).stdout
    assert "cli_slot" in listed and "retained" in listed
    dropped = run("slots", "drop", "cli_slot", "--dsn", dsn)
    assert dropped.returncode == 0 and "cli_slot" not in run("slots", "--dsn", dsn).stdout
    missing = run("slots", "drop", "cli_slot", "--dsn", dsn)
    assert missing.returncode == 1 and "no replication slot named 'cli_slot'" in missing.stderr


def test_temporary_slot_tail_leaves_no_slot(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    proc = Running("tail", "orders", "--source", "logical", "--count", "1", "--dsn", dsn)
    proc.wait_stderr("-- tailing")
    db.execute("INSERT INTO orders VALUES (1)")
    assert "insert" in proc.lines(1)[0]
    assert proc.finish() == 0
    assert db.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0


def test_consumer_killed_mid_transaction_gets_the_whole_transaction_again(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    run("install", "orders", "--source", "logical", "--slot", "cli_slot", "--dsn", dsn)
    victim = tail(dsn)
    db.execute("INSERT INTO orders SELECT generate_series(1, 5)")  # one transaction of five rows
    printed = [Change.from_json(x) for x in victim.lines(3)]  # acknowledged after printing, mid-transaction
    victim.proc.send_signal(signal.SIGKILL)
    victim.finish()
    survivor = tail(dsn, "--count", "5")
    again = [Change.from_json(x) for x in survivor.lines(5)]
    assert survivor.finish() == 0
    # the slot only moves past a transaction once all of it is acknowledged: nothing lost, and what is
    # repeated is exactly the unfinished transaction, with the same ids
    assert [c.new["id"] for c in again] == [1, 2, 3, 4, 5]
    assert [c.id for c in again[:3]] == [c.id for c in printed]
    assert len({c.xid for c in again}) == 1
