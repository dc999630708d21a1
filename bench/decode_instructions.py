"""The logical source's CPU per change, counted in instructions: a figure that a shared machine does not move.

    .venv/bin/python -m bench.decode_instructions [--baseline CHECKOUT] [--changes N]

Wall-clock rates on this 2-core machine swing by half when anything else runs; ``valgrind --tool=callgrind``
counts the instructions a process executes, which are the same from run to run. This benchmark

1. records the replication stream of the peers' workloads once (a throwaway cluster, the peers' table:
   bigserial, text, int, numeric(12,2), timestamptz, jsonb): ``bulk``, one transaction of inserts, and
   ``mixed``, single-row transactions (half inserts, 30 % updates, 20 % deletes);
2. replays the recorded XLogData messages through the source's framing, the transaction tracker and row
   decoding (no socket, no event loop), in reads of 1,000 messages, each read's changes acknowledged and
   dropped as the App does, with a no-op handler and with one that reads every value (``dict(change.new)``,
   ``dict(change.old)``);
3. runs each replay under callgrind with N changes and with none, and reports the difference divided by N:
   instructions per change, for this checkout and (``--baseline``) another one, e.g. ``git worktree add
   /tmp/before <rev>``.

What it leaves out, on purpose: reading the socket (psycopg's ``get_copy_data``, the same for every version)
and the App's dispatch (``bench.peers`` measures the whole consumer against its peers). Results:
``bench/results/decode-instructions.md``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import psycopg

from bench.common import write_results

COLUMNS = "id bigserial PRIMARY KEY, name text, qty int, price numeric(12,2), at timestamptz, payload jsonb"
ROW = (
    "'item ' || g, mod(g, 1000)::int, (mod(g, 100000) / 100.0)::numeric(12,2), now(), jsonb_build_object('t', "
    "extract(epoch FROM clock_timestamp()), 'g', g, 'tags', jsonb_build_array('a', 'b'), 'note', 'benchmark row')"
)
INSERT = f"INSERT INTO items (name, qty, price, at, payload) SELECT {ROW} FROM generate_series(%s::int, %s::int) g"
HERE = Path(__file__).resolve().parent.parent


def record(directory: Path, bulk: int, mixed: int) -> None:
    """Write ``bulk.pkl`` and ``mixed.pkl``: the raw CopyData messages each slot streamed."""
    from pgchanges.embedded import LocalCluster

    with LocalCluster() as cluster:
        dsn = cluster.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE items ({COLUMNS})")
            conn.execute("CREATE PUBLICATION items_pub FOR TABLE items")
            conn.execute("SELECT pg_create_logical_replication_slot('bulk', 'pgoutput')")
            conn.execute(INSERT, (1, bulk))
            conn.execute("SELECT pg_create_logical_replication_slot('mixed', 'pgoutput')")
            _write_mixed(conn, mixed)
        for slot in ("bulk", "mixed"):
            messages = anyio.run(_stream, dsn, slot)
            (directory / f"{slot}.pkl").write_bytes(pickle.dumps(messages))


def _write_mixed(conn: psycopg.Connection[Any], transactions: int) -> None:
    rnd = random.Random(1)
    ids: list[int] = []
    for i in range(transactions):
        r = rnd.random()
        if r < 0.5 or len(ids) < 10:
            row = conn.execute(INSERT + " RETURNING id", (i, i)).fetchone()
            assert row is not None
            ids.append(row[0])
        elif r < 0.8:
            conn.execute("UPDATE items SET qty = qty + 1, price = price + 0.01 WHERE id = %s", (rnd.choice(ids),))
        else:
            conn.execute("DELETE FROM items WHERE id = %s", (ids.pop(rnd.randrange(len(ids))),))


async def _stream(dsn: str, slot: str) -> list[bytes]:
    """Every message the slot sends until it has been quiet for two seconds."""
    from pgchanges.db.replication import ReplicationStream

    stream = ReplicationStream(dsn)
    await stream.open()
    await stream.start(slot, ["items_pub"])
    pgconn = stream.connection.pgconn
    out: list[bytes] = []
    quiet = 0
    while quiet < 200:
        size, data = pgconn.get_copy_data(1)
        if size > 0:
            out.append(bytes(data))
            quiet = 0
            continue
        quiet += 1
        await anyio.sleep(0.01)
        pgconn.consume_input()
    await stream.close()
    return out


def replay(path: Path, changes: int, read: bool) -> None:
    """Framing, tracker and (``read``) row values over the messages of the first ``changes`` changes."""
    from pgchanges.db import replication
    from pgchanges.rowtypes import text_converter
    from pgchanges.sources.logical_changes import relation_info
    from pgchanges.sources.logical_tracker import TransactionTracker

    messages: list[bytes] = pickle.loads(path.read_bytes())
    cut, count = len(messages), 0
    for index, message in enumerate(messages):
        if message[:1] == b"w" and message[25:26] in (b"I", b"U", b"D"):
            count += 1
            if count > changes:
                cut = index
                break
    messages = messages[:cut] if changes else []
    old_framing = getattr(replication, "_parse", None)  # before 2026-12: an object per message, sliced payload

    def frame(raw: bytes) -> Any:
        view = memoryview(raw)
        if old_framing is not None:
            return old_framing(view)
        return view if view[0] == 119 else replication._parse_other(view)

    tracker = TransactionTracker()
    for start in range(0, len(messages), 1000):
        out: list[Any] = []
        rest = iter([frame(m) for m in messages[start : start + 1000]])
        while (relation := tracker.receive(rest, out)) is not None:
            tracker.add_relation(relation_info(relation, lambda oid: text_converter({}, oid)))
        if read:
            for change in out:
                if change.new is not None:
                    dict(change.new)
                if change.old is not None:
                    dict(change.old)
        tracker.ack(out)


def instructions(checkout: Path, path: Path, changes: int, read: bool) -> int:
    """Instructions of one replay child under callgrind."""
    env = {**os.environ, "PYTHONPATH": f"{checkout / 'src'}:{HERE}"}
    args = [sys.executable, "-m", "bench.decode_instructions", "--replay", str(path), str(changes), str(int(read))]
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *args],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = re.search(r"Collected : ([\d,]+)", done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no total: {done.stderr[-500:]}")
    return int(found.group(1).replace(",", ""))


def per_change(checkout: Path, path: Path, changes: int, read: bool) -> int:
    return round((instructions(checkout, path, changes, read) - instructions(checkout, path, 0, read)) / changes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", type=Path, help="another checkout, measured beside this one")
    parser.add_argument("--changes", type=int, default=20_000, help="changes per replay (mixed: half)")
    parser.add_argument("--replay", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay:
        replay(Path(args.replay[0]), int(args.replay[1]), args.replay[2] == "1")
        return
    checkouts = {"this checkout": HERE} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    rows: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        record(Path(tmp), bulk=args.changes * 2, mixed=args.changes)
        for name, checkout in checkouts.items():
            for workload, n in (("bulk", args.changes), ("mixed", args.changes // 2)):
                for read in (False, True):
                    key = f"{workload}, {'reads every value' if read else 'no-op handler'}"
                    rows.setdefault(key, {})[name] = per_change(checkout, Path(tmp) / f"{workload}.pkl", n, read)
                    print(key, name, rows[key][name], flush=True)
    report(rows, args, {name: _revision(path) for name, path in checkouts.items()})


def _revision(checkout: Path) -> str:
    command = ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    return done.stdout.strip() or "?"


def report(rows: dict[str, dict[str, int]], args: argparse.Namespace, revisions: dict[str, str]) -> None:
    names = list(next(iter(rows.values())))
    head = " | ".join(names) + (" | baseline ÷ this checkout" if "baseline" in names else "")
    lines = [f"| replay of the recorded stream | {head} |", "|---" * (len(names) + 1 + ("baseline" in names)) + "|"]
    for key, figures in rows.items():
        cells = " | ".join(f"{figures[n]:,}" for n in names)
        ratio = f" | {figures['baseline'] / figures['this checkout']:.2f}x" if "baseline" in figures else ""
        lines.append(f"| {key} | {cells}{ratio} |")
    markdown = f"""# The logical source's CPU per change, in instructions

`valgrind --tool=callgrind` instruction counts per change (a replay with {args.changes:,} changes, bulk, or
{args.changes // 2:,}, mixed, minus the same replay with none): framing, the transaction tracker and row decoding,
without the socket or the App. Counts do not depend on what else the machine runs.
Reproduce: `.venv/bin/python -m bench.decode_instructions --baseline <checkout>`.
Revisions: {", ".join(f"{name} {rev}" for name, rev in revisions.items())} (commits; uncommitted edits count too).

{chr(10).join(lines)}

*bulk*: one transaction of inserts into the peers' table (bigserial, text, int, numeric(12,2), timestamptz,
jsonb); *mixed*: single-row transactions, half inserts, 30 % updates, 20 % deletes (three messages each).
"""
    write_results("decode-instructions", {"benchmark": "decode-instructions", "per_change": rows}, markdown)


if __name__ == "__main__":
    main()
