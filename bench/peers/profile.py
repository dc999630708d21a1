"""Where pgchanges spends its time: py-spy on a pgchanges consumer while it drains (``--only profile``).

The consumer is frozen while the workload is written and py-spy attached before it is resumed, so the
samples cover the drain alone, as the throughput runs time it. Samples whose innermost frame is a wait (the
event loop's select, a worker thread's condition) are idle and left out; the rest are summed per function
(line numbers folded) as *self* (the function itself) and *inclusive* (it and what it calls), and per kind of
work by where the innermost frame's code lives. Raw collapsed stacks stay in the run's log directory.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.peers import database as pgdb
from bench.peers.procs import Consumer, wait_idle
from bench.peers.roster import Spec
from bench.peers.runs import Context, freeze_when_streaming, own_slot, running

# (kind of work, substrings of the innermost frame's file): the first that matches names the sample
CATEGORIES = [
    ("the handler itself (for reads values: dict() in C)", ("pgchanges_client.py",)),
    ("typing values: rows, rowtypes, psycopg's loaders, json, Decimal, datetime",
     ("pgchanges/sources/lazy_row", "pgchanges/sources/rows", "pgchanges/rowtypes", "pgchanges/valuecodec",
      "psycopg/", "json/", "decimal", "datetime")),
    ("Mapping protocol: collections.abc and the lazy mappings", ("_collections_abc", "pgchanges/lazy.py")),
    ("pgoutput decoding", ("pgchanges/pgoutput",)),
    ("Change objects", ("pgchanges/change.py",)),
    ("source bookkeeping: transactions, positions, acknowledgements", ("pgchanges/sources/",)),
    ("dispatch: serving, runtime, routing, lanes", ("pgchanges/serving", "pgchanges/runtime", "pgchanges/routing",
                                                     "pgchanges/app.py", "pgchanges/lanes", "pgchanges/plain_run")),
    ("replication and LISTEN socket I/O", ("pgchanges/db/",)),
    ("other pgchanges code", ("pgchanges/",)),
    ("event loop", ("asyncio/", "anyio/", "trio/", "selectors.py", "threading.py")),
]  # fmt: skip
IDLE = ("select (selectors.py", "EpollSelector.select", "Condition.wait (threading.py", "Event.wait (threading.py",
        "Queue.get (queue.py", "_worker (concurrent", "Thread.join", "Lock.acquire", "WorkerThread.run (anyio",
        "_blocking_worker", "get_events (trio")  # fmt: skip
OUTER = ("<module> (", "main (pgchanges_client", "serve (pgchanges_client")  # with the event loop: in every stack


def profile_run(
    ctx: Context,
    spec: Spec,
    label: str,
    n: int,
    write: Callable[[str], object],
    prepare: Callable[[str], object] | None = None,
) -> None:
    dsn = ctx.setup.dsn(spec.dbname)
    for table in ("items", spec.notify_table):
        with pgdb.connect(dsn) as conn:
            conn.execute(f"TRUNCATE {table} RESTART IDENTITY")
    if prepare:
        prepare(dsn)
    out = ctx.log_dir / f"profile-{label.replace(' ', '-').replace(',', '')}.txt"
    with own_slot(ctx, spec, "profile"), running(ctx, spec, "profile", n, "throughput") as proc:
        if spec.group == "logical":
            freeze_when_streaming(ctx, spec, proc, "profile")
        else:
            proc.wait_line("READY", 90)
            time.sleep(0.2)
            proc.freeze()
        write(dsn)
        if proc.walsender:
            wait_idle([proc.walsender])
        _record(ctx, proc, out, n)
    ctx.profiles[label] = summarize(out)
    ctx.log(f"    profile {label}: {ctx.profiles[label]['samples']:,} busy samples ({out})")


def _record(ctx: Context, proc: Consumer, out: Path, n: int) -> None:
    """py-spy on ``proc`` (frozen) from its resume to its DONE line, raw stacks into ``out``."""
    argv = [str(ctx.setup.peers.py_spy), "record", "--pid", str(proc.process.pid), "--rate", "1000"]
    spy = subprocess.Popen([*argv, "--format", "raw", "--nonblocking", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(1.0)  # py-spy attaches
        proc.resume()
        proc.wait_line("DONE", max(60.0, n / 1000))
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
    finally:
        if spy.poll() is None:
            spy.kill()


def fold(frame: str) -> str:
    """``f (path/file.py:123)`` -> ``f (path/file.py)``."""
    head, sep, rest = frame.rpartition(" (")
    return f"{head} ({rest.rsplit(':', 1)[0].rstrip(')')})" if sep else frame


def category(frame: str) -> str:
    return next((name for name, needles in CATEGORIES if any(n in frame for n in needles)), "other")


def summarize(path: Path, top: int = 12) -> dict[str, Any]:
    """Shares (%) of the busy samples: per kind of work, and the top functions by self and inclusive time."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines() if path.exists() else []:
        stack, _, count_text = line.rpartition(" ")
        frames = [fold(f) for f in stack.split(";") if f]
        if not frames or not count_text.isdigit() or frames[-1].startswith(IDLE):
            continue
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        kinds[category(frames[-1])] += count
        for frame in set(frames):
            if not frame.startswith(OUTER) and category(frame) != "event loop":
                inclusive[frame] += count

    def shares(counter: Counter[str], k: int) -> list[tuple[str, float]]:
        return [(key, round(100 * v / total, 1)) for key, v in counter.most_common(k)] if total else []

    return {"samples": total, "categories": shares(kinds, 20), "self": shares(own, top),
            "inclusive": shares(inclusive, top)}  # fmt: skip
