"""Outbox faults with real worker processes and a real server restart."""

import textwrap
import threading
from collections import defaultdict

import anyio
import psycopg
import pytest

import pgchanges
from pgchanges.embedded import LocalCluster
from tests.cli_process import Running
from tests.conftest import wait_for, wait_until

WORKER = """
import os, signal, time
import pgchanges

app = pgchanges.App({dsn!r}, source="outbox", consumer="procs", batch_size={batch}, lanes={lanes})
out = open({path!r}, "a", buffering=1)

@app.on("public.t")
async def handle(change):
    out.write(f"{{change.new['id']}} {{change.new['v']}} {{time.time_ns()}}\\n")
    if change.new["id"] == {kill_at!r}:
        os.kill(os.getpid(), signal.SIGKILL)
"""


def start_worker(tmp_path, dsn, name, batch, kill_at=None, lanes=8):
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            WORKER.format(dsn=dsn, batch=batch, lanes=lanes, path=str(tmp_path / f"{name}.out"), kill_at=kill_at)
        )
    )
    worker = Running("run", f"{name}:app", "-v", cwd=tmp_path)
    worker.wait_stderr("listening for changes")
    return worker


def handled(tmp_path, name):
    path = tmp_path / f"{name}.out"
    if not path.exists():
        return []
    return [tuple(int(x) for x in line.split()) for line in path.read_text().splitlines()]


def line_count(tmp_path, name):
    path = tmp_path / f"{name}.out"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_worker_killed_mid_batch_loses_nothing_and_repeats_only_its_batch(dsn, db, tmp_path):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    # one lane: every event in one sequence of batches of 10, so the batch in flight is known exactly
    victim = start_worker(tmp_path, dsn, "victim", batch=10, kill_at=55, lanes=1)
    db.execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g")
    assert victim.finish(timeout=60) == -9
    assert [r[0] for r in handled(tmp_path, "victim")] == list(range(1, 56))
    survivor = start_worker(tmp_path, dsn, "survivor", batch=10, lanes=1)
    wait_for(lambda: line_count(tmp_path, "survivor") >= 50, "the survivor to handle the rest")
    survivor.proc.terminate()
    assert survivor.finish() == 0
    # batches 1-5 were acknowledged; batch 6 (51-60) was in flight and is handled again, nothing else
    assert [r[0] for r in handled(tmp_path, "survivor")] == list(range(51, 101))


def test_two_workers_share_twenty_thousand_events_each_handled_once_in_row_order(dsn, db, tmp_path):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    workers = [start_worker(tmp_path, dsn, name, batch=100) for name in ("w1", "w2")]
    for version in range(5):
        for start in range(1, 4001, 500):
            if version == 0:
                db.execute("INSERT INTO t SELECT g, 0 FROM generate_series(%s::int, %s::int) g", (start, start + 499))
            else:
                db.execute("UPDATE t SET v = %s WHERE id BETWEEN %s AND %s", (version, start, start + 499))
    wait_for(lambda: line_count(tmp_path, "w1") + line_count(tmp_path, "w2") >= 20_000, "20,000 events", 120)
    for worker in workers:
        worker.proc.terminate()
        assert worker.finish() == 0
    w1, w2 = handled(tmp_path, "w1"), handled(tmp_path, "w2")
    assert w1 and w2, "both workers should have taken part"
    pairs = [(i, v) for i, v, _ in w1 + w2]
    assert len(pairs) == 20_000 and set(pairs) == {(i, v) for i in range(1, 4001) for v in range(5)}
    by_row = defaultdict(list)
    for i, v, at in w1 + w2:
        by_row[i].append((at, v))
    out_of_order = [i for i, seen in by_row.items() if [v for _, v in sorted(seen)] != [0, 1, 2, 3, 4]]
    assert not out_of_order, f"rows handled out of order: {out_of_order[:10]}"


@pytest.mark.anyio
async def test_server_restart_mid_stream_loses_nothing():
    with LocalCluster() as own:
        with psycopg.connect(own.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        app = pgchanges.App(own.dsn(), source="outbox", consumer="c")
        seen = set()
        app.on("t")(lambda change: seen.add(change.new["id"]))
        stop_writing = threading.Event()

        def write():
            with psycopg.connect(own.dsn(), autocommit=True) as conn:
                for i in range(100):
                    conn.execute("INSERT INTO t VALUES (%s)", (i,))
            own.restart()
            with psycopg.connect(own.dsn(), autocommit=True) as conn:
                for i in range(100, 200):
                    conn.execute("INSERT INTO t VALUES (%s)", (i,))
            stop_writing.set()

        async with anyio.create_task_group() as tg:
            await tg.start(app.serve)
            await anyio.to_thread.run_sync(write)
            await wait_until(lambda: len(seen) == 200, "all 200 changes after the restart", timeout=60)
            app.stop()
    assert seen == set(range(200))
