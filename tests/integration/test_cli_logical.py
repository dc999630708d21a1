"""Logical capture from the terminal: install, resumable tail on a named slot, slots."""

import signal
import time

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


WORKER = """
import os, signal
import pgchanges

app = pgchanges.App({dsn!r}, source="logical", slot="killed")
out = open({path!r}, "a", buffering=1)

@app.on("public.orders")
async def handle(change):
    out.write(f"{{change.id}} {{change.new['id']}}\\n")
    if {kill!r} and change.new["id"] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_consumer_killed_mid_transaction_gets_the_whole_transaction_again(dsn, db, tmp_path):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    run("install", "orders", "--source", "logical", "--slot", "killed", "--dsn", dsn)
    results = {}
    for name, kill in (("victim", True), ("survivor", False)):
        (tmp_path / f"{name}.py").write_text(WORKER.format(dsn=dsn, path=str(tmp_path / f"{name}.out"), kill=kill))
        worker = Running("run", f"{name}:app", "-v", cwd=tmp_path)
        worker.wait_stderr("listening for changes")
        if kill:
            db.execute("INSERT INTO orders SELECT generate_series(1, 5)")  # one transaction of five rows
            assert worker.finish() == -9
        else:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len((tmp_path / "survivor.out").read_text().split("\n")) < 6:
                time.sleep(0.1)
            worker.proc.terminate()
            assert worker.finish() == 0
        results[name] = [line.split() for line in (tmp_path / f"{name}.out").read_text().splitlines()]
    assert [int(n) for _, n in results["victim"]] == [1, 2, 3]
    # the slot only moves past a transaction once all of it is handled: the killed consumer's transaction
    # comes again whole, with the same ids
    assert [int(n) for _, n in results["survivor"]] == [1, 2, 3, 4, 5]
    assert [i for i, _ in results["survivor"][:3]] == [i for i, _ in results["victim"]]
