"""Logical source benchmark, beside a raw COPY BOTH receive loop measured in the same run (fsync on).

    .venv/bin/python -m bench.logical_bench            # writes bench/results/logical-<backend>.{json,md}

1. throughput: N rows inserted in one transaction; two slots created before it; time from START_REPLICATION to
   the N-th insert for (a) a raw loop that only counts pgoutput Insert messages, (b) an App with a no-op
   handler (decoded, typed Changes). Median of the rounds.
2. latency at a steady 1,000 changes/s: single-row transactions stamped with clock_timestamp().
3. peak RSS of a consumer process while a 500,000-row transaction streams through it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import anyio
import psycopg

import pgchanges
from bench.common import bench_database, latency_summary, latency_with_app, machine, timed_noop_app, write_results
from pgchanges.db.replication import PAYLOAD_START, ReplicationStream
from pgchanges.names import TableName
from pgchanges.sources.logical import ensure_publication, ensure_slot, publication_name

TABLE = TableName("public", "bench_events")
CREATE = "CREATE TABLE bench_events (id bigint PRIMARY KEY, at double precision, v text, n numeric)"


async def raw_receive(conninfo: str, slot: str, n: int) -> float:
    stream = ReplicationStream(conninfo)
    await stream.open()
    start = time.perf_counter()
    await stream.start(slot, [publication_name([TABLE])])
    count = 0
    while count < n:
        for message in await stream.read():
            if isinstance(message, memoryview) and message[PAYLOAD_START] == 73:  # a pgoutput Insert ("I")
                count += 1
    rate = n / (time.perf_counter() - start)
    await stream.close()
    return rate


async def app_receive(conninfo: str, slot: str, n: int, read_values: bool = False) -> float:
    app = pgchanges.App(conninfo, source="logical", slot=slot)
    return await timed_noop_app(app, str(TABLE), n, ops="insert", read_values=read_values)


async def app_latency(conninfo: str, seconds: float) -> list[float]:
    app = pgchanges.App(conninfo, source="logical", slot="latency")
    return await latency_with_app(app, str(TABLE), conninfo, 1000.0, seconds, first_id=50_000_000, ops="insert")


RSS_CONSUMER = """
import resource, sys, anyio, pgchanges
conninfo, n = sys.argv[1], int(sys.argv[2])
async def main():
    seen = 0
    async with pgchanges.stream(conninfo, tables=["public.bench_events"], source="logical", slot="rss") as changes:
        async for change in changes:
            seen += 1
            await changes.ack(change)
            if seen >= n:
                break
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
anyio.run(main)
"""


def peak_rss_mb(conninfo: str, rows: int) -> float:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        ensure_slot(conn, "rss")
        conn.execute("TRUNCATE bench_events")
        conn.execute(
            "INSERT INTO bench_events SELECT g, 0, repeat('v', 40), g * 1.5 FROM generate_series(1, %s::bigint) g",
            (rows,),
        )
    out = subprocess.run(
        [sys.executable, "-c", RSS_CONSUMER, conninfo, str(rows)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=10)
    parser.add_argument("--rss-rows", type=int, default=500_000)
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    args = parser.parse_args()

    with bench_database() as (cluster, conninfo):
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(CREATE)
            ensure_publication(conn, publication_name([TABLE]), [TABLE], False)
        raw_rates: list[float] = []
        app_rates: list[float] = []
        read_rates: list[float] = []
        for r in range(args.rounds):
            slots = (f"raw{r}", f"app{r}", f"read{r}")
            with psycopg.connect(conninfo, autocommit=True) as conn:
                for slot in slots:
                    ensure_slot(conn, slot)
                conn.execute(
                    "INSERT INTO bench_events SELECT g, 0, 'value ' || g, g * 1.5 FROM generate_series(%s::bigint, %s::bigint) g",
                    (r * args.rows + 1, (r + 1) * args.rows),
                )
            raw_rates.append(anyio.run(raw_receive, conninfo, f"raw{r}", args.rows, backend=args.backend))
            app_rates.append(anyio.run(app_receive, conninfo, f"app{r}", args.rows, backend=args.backend))
            read_rates.append(anyio.run(app_receive, conninfo, f"read{r}", args.rows, True, backend=args.backend))
            with psycopg.connect(conninfo, autocommit=True) as conn:
                for slot in slots:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            print(
                f"round: raw {raw_rates[-1]:,.0f}/s  app {app_rates[-1]:,.0f}/s  reading values {read_rates[-1]:,.0f}/s",
                flush=True,
            )
        raw_rate, app_rate, read_rate = (statistics.median(x) for x in (raw_rates, app_rates, read_rates))
        ratio = statistics.median(a / r for a, r in zip(app_rates, raw_rates, strict=True))
        read_ratio = statistics.median(a / r for a, r in zip(read_rates, raw_rates, strict=True))
        with psycopg.connect(conninfo, autocommit=True) as conn:
            ensure_slot(conn, "latency")
        lat = anyio.run(app_latency, conninfo, args.latency_seconds, backend=args.backend)
        rss = peak_rss_mb(conninfo, args.rss_rows)
        version = cluster.version

    data = {
        "benchmark": "logical",
        "postgres": version,
        "backend": args.backend,
        "machine": machine(),
        "throughput": {
            "rows": args.rows,
            "raw_per_s": round(raw_rate),
            "app_per_s": round(app_rate),
            "ratio": round(ratio, 3),
            "reading_values_per_s": round(read_rate),
            "reading_values_ratio": round(read_ratio, 3),
            "raw_rounds": [round(x) for x in raw_rates],
            "app_rounds": [round(x) for x in app_rates],
            "reading_values_rounds": [round(x) for x in read_rates],
        },
        "latency_at_1000_per_s": latency_summary(lat),
        "peak_rss_mb_500k_row_transaction": round(rss, 1),
        "rss_rows": args.rss_rows,
    }
    t, la = data["throughput"], data["latency_at_1000_per_s"]
    markdown = f"""# Logical source benchmark

PostgreSQL {version}, fsync on, {args.backend}, {data["machine"]["cpus"]} CPUs. Reproduce:
`.venv/bin/python -m bench.logical_bench --backend {args.backend}`.

| {t["rows"]:,} inserts of one transaction (median of {args.rounds} rounds) | changes/s | ratio to raw (median of per-round ratios) |
|---|---|---|
| raw COPY BOTH receive loop (counts Insert messages) | {t["raw_per_s"]:,} | 1 |
| pgchanges App, no-op handler | {t["app_per_s"]:,} | **{t["ratio"]}** |
| pgchanges App, handler reads every value (`dict(change.new)`) | {t["reading_values_per_s"]:,} | {t["reading_values_ratio"]} |

pgchanges decodes every pgoutput message, builds a Change, runs the handler and acknowledges by LSN. An
Insert's values are split and typed (psycopg's loaders) when the handler first reads them
(`src/pgchanges/rowmaps.py`): the no-op row shows the cost of everything else, the last row the
cost with every value typed.

| commit→handler at 1,000 changes/s ({la["count"]} samples) | p50 | p99 | max |
|---|---|---|---|
| latency | {la["p50_ms"]} ms | {la["p99_ms"]} ms | {la["max_ms"]} ms |

Peak RSS of a consumer process while a {args.rss_rows:,}-row transaction streams through it:
**{data["peak_rss_mb_500k_row_transaction"]} MB** (the server spills the transaction to disk; the consumer
receives it in batches and acknowledges as it goes).
"""
    write_results(f"logical-{args.backend}", data, markdown)
    print(markdown)
    json.dumps(data)


if __name__ == "__main__":
    main()
