"""The measurements: logical drains, NOTIFY drains, latency at a steady rate, peak RSS of a big transaction.

Logical drains follow the reference method: every consumer of a round is started with its own slot and
frozen (SIGSTOP) once its walsender streams; the workload is written once; when every walsender has gone
idle (its socket is full), the consumers are resumed one at a time, in an order that rotates (and reverses)
from round to round, and each is timed from its resume to its N-th change, alone on the machine. So each
reads the same WAL, with the server's pre-commit work done, as a consumer connected at the time would.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.peers import database as pgdb
from bench.peers.procs import Consumer, cpu_seconds, peak_rss_mb, wait_idle
from bench.peers.roster import BASE_DB, DB, PEER_CHANNEL, Setup, Spec
from bench.peers.workloads import steady_writer, write_bulk


@dataclass
class Run:
    key: str
    name: str
    workload: str
    round: int
    n: int
    rate: float
    cpu_s: float
    rss_mb: float
    first_change_ms: float
    walsender_cpu_s: float = 0.0
    write_s: float = 0.0


@dataclass
class Context:
    setup: Setup
    log_dir: Path
    log: Callable[[str], None] = print
    runs: list[Run] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    rss: list[dict[str, Any]] = field(default_factory=list)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # what was left out of the run, and why
    errors: list[dict[str, str]] = field(default_factory=list)  # what failed during the run
    compiled: dict[str, list[str]] = field(default_factory=dict)  # pgchanges consumer -> compiled modules it ran

    def dsns(self, specs: list[Spec]) -> list[str]:
        """The databases ``specs`` read from, the measured one first."""
        names = {s.dbname for s in specs}
        return [self.setup.dsn(d) for d in (DB, BASE_DB) if d in names]

    def attempt(self, what: str, run: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """``run(*args, **kwargs)``; a failure is logged and recorded, and the run goes on without it."""
        try:
            run(*args, **kwargs)
        except Exception as exc:
            self.log(f"FAILED {what}: {type(exc).__name__}: {exc}")
            self.errors.append({"what": what, "error": f"{type(exc).__name__}: {exc}"})

    def done(self, spec: Spec, line: str) -> dict[str, Any]:
        """The DONE line's data; notes which compiled modules a pgchanges consumer ran."""
        data: dict[str, Any] = json.loads(line)
        if spec.pgchanges:
            self.compiled[spec.key] = data.get("compiled", [])
        return data

    def start(self, spec: Spec, key: str, n: int, mode: str) -> Consumer:
        proc = Consumer(f"{spec.key}-{key}", spec.argv(key, n, mode), self.log_dir, spec.env, spec.cwd)
        if spec.pgchanges:  # the checkout measured must be the one imported, not the venv's own install
            _, hello = proc.wait_line("HELLO", 60)
            imported = Path(json.loads(hello)["pgchanges"]).resolve()
            if not imported.is_relative_to(Path(spec.env["PYTHONPATH"])):
                proc.kill()
                raise RuntimeError(f"{spec.name} imported pgchanges from {imported}, not {spec.env['PYTHONPATH']}")
        return proc


@contextlib.contextmanager
def own_slot(ctx: Context, spec: Spec, slot: str) -> Iterator[None]:
    """``slot`` made for ``spec`` before it starts (if it takes one); its database's slots dropped after."""
    dsn = ctx.setup.dsn(spec.dbname)
    if spec.plugin:
        pgdb.create_slot(dsn, slot, spec.plugin)
    try:
        yield
    finally:
        if spec.group == "logical":
            pgdb.drop_slots(dsn)


@contextlib.contextmanager
def running(ctx: Context, spec: Spec, key: str, n: int, mode: str) -> Iterator[Consumer]:
    """``spec`` started (slot or channel ``key``, ``n`` changes, ``mode``), killed when done with."""
    proc = ctx.start(spec, key, n, mode)
    try:
        yield proc
    finally:
        proc.kill()


def rotated(items: list[Any], rnd: int) -> list[Any]:
    """``items`` rotated by the round and reversed on odd rounds: nobody always goes first, or last."""
    if not items:
        return []
    order = items[rnd % len(items) :] + items[: rnd % len(items)]
    return order[::-1] if rnd % 2 else order


def logical_round(
    ctx: Context,
    specs: list[Spec],
    workload: str,
    rnd: int,
    n: int,
    write: Callable[[str], object],
    prepare: Callable[[str], object] | None = None,
) -> None:
    dsns = ctx.dsns(specs)
    for dsn in dsns:
        with pgdb.connect(dsn) as conn:
            conn.execute("TRUNCATE items RESTART IDENTITY")
        if prepare:
            prepare(dsn)
    slots = {s.key: f"{workload.replace('-', '_')}_{rnd}_{i}" for i, s in enumerate(specs)}
    for spec in specs:
        if spec.plugin:
            pgdb.create_slot(ctx.setup.dsn(spec.dbname), slots[spec.key], spec.plugin)
    procs: dict[str, Consumer] = {}
    try:
        # a temporary slot is found by its name pattern: those consumers start first, one at a time
        for spec in sorted(specs, key=lambda s: s.temp_slot_like is None):
            procs[spec.key] = ctx.start(spec, slots[spec.key], n, "throughput")
            if spec.temp_slot_like:
                freeze_when_streaming(ctx, spec, procs[spec.key], slots[spec.key])
        for spec in specs:
            if procs[spec.key].walsender is None:
                freeze_when_streaming(ctx, spec, procs[spec.key], slots[spec.key])
        started = time.monotonic()
        for dsn in dsns:  # a slot skips the other database's WAL while frozen, before it is timed
            write(dsn)
        wrote = time.monotonic() - started
        waited = wait_idle([p.walsender for p in procs.values() if p.walsender])
        ctx.log(f"  {workload} round {rnd}: wrote {n:,} changes in {wrote:.1f} s, walsenders idle after {waited:.1f} s")
        for spec in rotated(specs, rnd):
            ctx.runs.append(_drain(ctx, spec, procs.pop(spec.key), workload, rnd, n))
    finally:
        for proc in procs.values():
            proc.kill()
        for dsn in dsns:
            pgdb.drop_slots(dsn)


def freeze_when_streaming(ctx: Context, spec: Spec, proc: Consumer, slot: str) -> None:
    proc.wait_line("READY", 90)
    proc.walsender = pgdb.streaming_walsender(ctx.setup.dsn(spec.dbname), slot, spec.temp_slot_like)
    proc.freeze()


def _drain(ctx: Context, spec: Spec, proc: Consumer, workload: str, rnd: int, n: int) -> Run:
    try:
        assert proc.walsender is not None
        pids = proc.pids()
        cpu0, server0 = cpu_seconds(pids), cpu_seconds([proc.walsender])
        t0 = time.time()
        proc.resume()
        _, done = proc.wait_line("DONE", max(60.0, n / 1000))
        cpu1, server1 = cpu_seconds(pids), cpu_seconds([proc.walsender])
        rss = peak_rss_mb(pids)
    finally:
        proc.kill()
    data = ctx.done(spec, done)
    run = Run(
        spec.key,
        spec.name,
        workload,
        rnd,
        n,
        n / (data["t_last"] - t0),
        cpu1 - cpu0,
        rss,
        (data["t_first"] - t0) * 1000,
        server1 - server0,
    )
    ctx.log(
        f"    {spec.name:48s} {run.rate:>10,.0f}/s  cpu {run.cpu_s:5.2f} s  walsender {run.walsender_cpu_s:5.2f} s"
        f"  rss {rss:5.1f} MB"
    )
    return run


def notify_run(ctx: Context, spec: Spec, rnd: int, n: int, per_txn: int, paused: bool) -> None:
    """``n`` inserts in transactions of ``per_txn``: live (timed from the first COMMIT, writer included) or
    paused (the consumer frozen while the rows are written, timed from its resume: its own capacity)."""
    dsn = ctx.setup.dsn(spec.dbname)
    with pgdb.connect(dsn) as conn:
        conn.execute(f"TRUNCATE {spec.notify_table} RESTART IDENTITY")
    with running(ctx, spec, PEER_CHANNEL, n, "throughput") as proc:
        proc.wait_line("READY", 90)
        time.sleep(0.2)  # LISTEN is in place at READY; let start-up work settle before the clock starts
        pids = proc.pids()
        if paused:
            proc.freeze()
        cpu0 = cpu_seconds(pids)
        started = time.time()
        t0 = write_bulk(dsn, spec.notify_table, n, per_txn)
        wrote = time.time() - started
        if paused:
            time.sleep(0.3)
            t0 = time.time()
            proc.resume()
        _, done = proc.wait_line("DONE", max(60.0, n / 500))
        cpu1, rss = cpu_seconds(pids), peak_rss_mb(pids)
    data = ctx.done(spec, done)
    mode = "paused" if paused else "live"
    run = Run(
        spec.key,
        spec.name,
        f"notify-{mode}",
        rnd,
        n,
        n / (data["t_last"] - t0),
        cpu1 - cpu0,
        rss,
        (data["t_first"] - t0) * 1000,
        write_s=wrote,
    )
    ctx.runs.append(run)
    ctx.log(
        f"    {mode:6s} {spec.name:46s} {run.rate:>10,.0f}/s  cpu {run.cpu_s:5.2f} s  rss {rss:5.1f} MB"
        f"  (writer {wrote:.2f} s)"
    )


def latency_run(ctx: Context, spec: Spec, rnd: int, seconds: float, rate: float = 1000.0) -> None:
    """Commit→handler latency while a writer inserts ``rate`` single-row transactions a second."""
    count = int(seconds * rate)
    dsn, logical = ctx.setup.dsn(spec.dbname), spec.group == "logical"
    slot = f"latency_{rnd}"
    with own_slot(ctx, spec, slot), running(ctx, spec, slot if logical else PEER_CHANNEL, count, "latency") as proc:
        proc.wait_line("READY", 90)
        if logical:
            pgdb.streaming_walsender(dsn, slot, spec.temp_slot_like)
        time.sleep(0.3)
        writer = steady_writer(dsn, "items" if logical else spec.notify_table, rate, count)
        _, done = proc.wait_line("DONE", seconds + 120)
        writer.join()
    ms = sorted(x * 1000 for x in json.loads(done)["lat"])
    row = {
        "key": spec.key,
        "name": spec.name,
        "group": spec.group,
        "round": rnd,
        "count": len(ms),
        "p50_ms": percentile(ms, 0.5),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": ms[-1],
    }
    ctx.latency.append(row)
    ctx.log(f"    latency {spec.group:7s} {spec.name:44s} p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms")


def rss_run(ctx: Context, spec: Spec, rows: int) -> None:
    """Peak RSS of ``spec`` (a logical consumer) through one transaction of ``rows`` inserts."""
    dsn = ctx.setup.dsn(spec.dbname)
    with pgdb.connect(dsn) as conn:
        conn.execute("TRUNCATE items RESTART IDENTITY")
    with own_slot(ctx, spec, "rss"), running(ctx, spec, "rss", rows, "throughput") as proc:
        proc.wait_line("READY", 90)
        write_bulk(dsn, "items", rows, rows)
        ctx.done(spec, proc.wait_line("DONE", max(120.0, rows / 1000))[1])
        rss = peak_rss_mb(proc.pids())
    ctx.rss.append({"key": spec.key, "name": spec.name, "rows": rows, "rss_mb": rss})
    ctx.log(f"    rss {spec.name:48s} {rss:6.1f} MB through {rows:,} rows in one transaction")


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def as_dicts(runs: list[Run]) -> list[dict[str, Any]]:
    return [asdict(r) for r in runs]
