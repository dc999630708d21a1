"""``pgchanges demo``: see changes flow in a few seconds, with nothing but Python installed.

With no ``--dsn`` (and no ``DATABASE_URL``) it starts an embedded PostgreSQL in a temporary directory. It
creates a demo table, installs notify capture, writes orders (inserts, status updates, deletes, one row too big
for NOTIFY), prints every change as it arrives, and ends with a summary: changes written and received, and
commit→handler latency.

Its SQL (the demo table, the orders it writes) stays here rather than among pgchanges' named queries: it is
the demo's content, what an application using pgchanges would run against its own table, not pgchanges' I/O.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from functools import partial
from typing import Any

import anyio
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pgchanges import conninfo as ci
from pgchanges.display import format_change
from pgchanges.stream import stream

TABLE = "public.demo_orders"
SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS public.demo_orders (
    id          bigserial PRIMARY KEY,
    customer    text NOT NULL,
    status      text NOT NULL DEFAULT 'new',
    total       numeric(10, 2) NOT NULL,
    items       jsonb NOT NULL DEFAULT '[]',
    note        text,
    written_at  double precision NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
)
"""
CUSTOMERS = ("ada", "grace", "edsger", "barbara", "donald", "frances")
STATUSES = ("paid", "packed", "shipped")
BIG_NOTE_CHARS = 20_000
DRAIN_SECONDS = 10.0


@contextlib.contextmanager
def _database(dsn: str | None) -> Iterator[str]:
    if dsn or os.environ.get("DATABASE_URL"):
        yield ci.resolve(dsn)
        return
    from pgchanges.embedded import LocalCluster  # noqa: PLC0415

    print("-- starting an embedded PostgreSQL (no --dsn given)…", file=sys.stderr, flush=True)
    with LocalCluster() as cluster:
        print(f"-- embedded PostgreSQL {cluster.version} on port {cluster.port}", file=sys.stderr, flush=True)
        yield ci.resolve(cluster.dsn())


def run_demo(args: argparse.Namespace) -> int:
    with _database(args.dsn) as conninfo:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(SCHEMA_SQL)
        stats = anyio.run(partial(_demo, conninfo, args.duration, args.rate, args.format), backend=args.backend)
    _summary(stats)
    return 0 if stats["received"] >= stats["written"] else 1


class _Writer:
    """Writes a plausible mix of order changes, one transaction each, stamping when it committed."""

    def __init__(self, conninfo: str) -> None:
        self.conn = psycopg.connect(conninfo, autocommit=True, row_factory=dict_row)
        self.open_ids: list[int] = []
        self.written = 0
        self.rng = random.Random(7)  # noqa: S311 - demo data

    def step(self, big: bool = False) -> None:
        roll = self.rng.random()
        now = time.time()
        if big or not self.open_ids or roll < 0.5:
            items = [{"sku": f"sku-{self.rng.randint(1, 99)}", "qty": self.rng.randint(1, 3)}]
            note = "x" * BIG_NOTE_CHARS if big else None
            row = self.conn.execute(
                "INSERT INTO public.demo_orders (customer, total, items, note, written_at) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (self.rng.choice(CUSTOMERS), Decimal(self.rng.randint(100, 99999)) / 100, Jsonb(items), note, now),
            ).fetchone()
            assert row is not None
            self.open_ids.append(int(row["id"]))
        elif roll < 0.85:
            self.conn.execute(
                "UPDATE public.demo_orders SET status = %s, written_at = %s WHERE id = %s",
                (self.rng.choice(STATUSES), now, self.rng.choice(self.open_ids)),
            )
        else:
            self.conn.execute("DELETE FROM public.demo_orders WHERE id = %s", (self.open_ids.pop(0),))
        self.written += 1

    def close(self) -> None:
        self.conn.close()


async def _demo(conninfo: str, duration: float, rate: float, fmt: str) -> dict[str, Any]:
    latencies: list[float] = []
    received = 0
    writer = _Writer(conninfo)
    try:
        async with stream(conninfo, tables=[TABLE]) as changes, anyio.create_task_group() as tg:

            async def write_then_finish() -> None:
                deadline = time.monotonic() + duration
                await anyio.to_thread.run_sync(partial(writer.step, big=True))
                while time.monotonic() < deadline:
                    await anyio.sleep(1 / rate)
                    await anyio.to_thread.run_sync(writer.step)
                with anyio.move_on_after(DRAIN_SECONDS):  # let the last changes arrive, then stop
                    while received < writer.written:
                        await anyio.sleep(0.05)
                tg.cancel_scope.cancel()

            tg.start_soon(write_then_finish)
            print(f"-- writing to {TABLE} for {duration:.0f}s; changes as they arrive:", file=sys.stderr)
            async for change in changes:
                row = change.new or change.old or {}
                if change.op in ("insert", "update") and "written_at" in row:
                    latencies.append(time.time() - float(row["written_at"]))
                received += 1
                print(change.to_json() if fmt == "json" else format_change(change), flush=True)
    finally:
        writer.close()
    return {"written": writer.written, "received": received, "latencies": latencies}


def _summary(stats: dict[str, Any]) -> None:
    lat = sorted(stats["latencies"])
    line = f"-- {stats['written']} changes written, {stats['received']} received"
    if lat:
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        line += f"; commit→handler latency p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    print(line, file=sys.stderr)
