"""Shared benchmark helpers: a durable cluster, percentiles, pgbench runs, result files."""

from __future__ import annotations

import contextlib
import json
import platform
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg

from pgchanges.embedded import LocalCluster

RESULTS = Path(__file__).parent / "results"


def durable_cluster() -> LocalCluster:
    """A cluster with fsync on: write-path figures must include the real commit cost."""
    return LocalCluster(fast_unsafe=False, settings={"max_connections": "100"})


@contextlib.contextmanager
def bench_database() -> Iterator[tuple[LocalCluster, str]]:
    """A durable cluster with an empty database ``bench``: (cluster, conninfo of bench)."""
    with durable_cluster() as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench")
        yield cluster, cluster.dsn("bench")


def trigger_outbox_sql(table: str, *, keyed: bool) -> str:
    """SQL for a reference outbox the write benchmarks set beside pgchanges' capture.

    A table ``table`` (bigserial key, one text column) whose plpgsql row trigger inserts ``to_json(NEW)`` into
    ``{table}_outbox``. ``keyed``: the outbox has a bigserial key (the simplest outbox that orders its events,
    the one DESIGN §5 measured); otherwise one json column and no key, index or sequence (the least an outbox
    row can cost).
    """
    columns = "id bigserial PRIMARY KEY, payload json" if keyed else "payload json"
    return f"""
CREATE TABLE {table} (id bigserial PRIMARY KEY, v text);
CREATE TABLE {table}_outbox ({columns});
CREATE FUNCTION {table}_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO {table}_outbox (payload) VALUES (to_json(NEW)); RETURN NULL; END $$;
CREATE TRIGGER {table}_capture AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_trigger();
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency_summary(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "count": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(percentile(ms, 0.99), 3),
        "max_ms": round(max(ms), 3),
    }


def pgbench_tps(cluster: LocalCluster, dbname: str, script: str, clients: int, seconds: int) -> float:
    path = Path("/tmp") / f"pgchanges-bench-{clients}-{time.monotonic_ns()}.sql"
    path.write_text(script)
    path.chmod(0o644)
    cmd = [
        str(cluster.bindir / "pgbench"),
        "-n",
        "-h",
        "127.0.0.1",
        "-p",
        str(cluster.port),
        "-U",
        "postgres",
        "-c",
        str(clients),
        "-j",
        str(min(clients, 2)),
        "-T",
        str(seconds),
        "-f",
        str(path),
        dbname,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    path.unlink()
    match = re.search(r"tps = ([\d.]+) \((?:without|excluding)", out)
    assert match, out
    return float(match.group(1))


def machine() -> dict[str, Any]:
    import os

    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def write_results(name: str, data: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)


STAMPED_INSERT = "INSERT INTO bench_events VALUES (%s, extract(epoch FROM clock_timestamp()), 'x', 1)"


async def timed_noop_app(
    app: Any,
    table: str,
    n: int,
    *,
    ops: Any = None,
    start_clock: Callable[[], float] | None = None,
    read_values: bool = False,
) -> float:
    """Changes/s of ``app`` with a no-op handler on ``table`` until ``n`` changes were handled.

    ``start_clock``, when given, is called once the App listens (to write the rows) and returns the start time;
    otherwise the clock starts before the App opens (the rows are there already). ``read_values``: the handler
    reads every value of the row (``dict(change.new)``) instead of nothing.
    """
    seen = 0
    done = anyio.Event()

    @app.on(table, ops=ops)
    async def noop(change: Any) -> None:
        nonlocal seen
        if read_values:
            dict(change.new)
        seen += 1
        if seen == n:
            done.set()

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        if start_clock is not None:
            start = start_clock()
        await done.wait()
        rate = n / (time.perf_counter() - start)
        app.stop()
    return rate


def steady_inserts(conninfo: str, rate: float, seconds: float, first_id: int = 0) -> threading.Thread:
    """A started thread inserting ``rate`` stamped rows per second into bench_events for ``seconds``."""

    def run() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            interval, next_at = 1.0 / rate, time.perf_counter()
            end, i = next_at + seconds, first_id
            while next_at < end:
                conn.execute(STAMPED_INSERT, (i,))
                i += 1
                next_at += interval
                if (delay := next_at - time.perf_counter()) > 0:
                    time.sleep(delay)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def latency_with_app(
    app: Any, table: str, conninfo: str, rate: float, seconds: float, first_id: int = 0, ops: Any = None
) -> list[float]:
    """Commit→handler latencies (s) of ``app`` while ``steady_inserts`` writes stamped rows."""
    lat: list[float] = []

    @app.on(table, ops=ops)
    async def record(change: Any) -> None:
        lat.append(time.time() - float(change.new["at"]))

    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        writer = steady_inserts(conninfo, rate, seconds, first_id)
        await anyio.to_thread.run_sync(writer.join)
        await anyio.sleep(0.5)
        app.stop()
    return lat
