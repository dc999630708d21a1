"""What metrics cost the hot path: the logical no-op rate with and without the operator endpoint, same run.

    .venv/bin/python -m bench.metrics_bench --backend asyncio   # writes bench/results/metrics-<backend>.{json,md}

Each round inserts N rows in one transaction, creates one slot per variant before it, and times an App with a
no-op handler from the moment it serves until the N-th change (bench.common.timed_noop_app), for: (a) no metrics, (b) ``http=`` on (the
observer counts and times per batch; the sampler queries the database every 5 s; a scraper fetches /metrics
every 0.5 s meanwhile, far more often than Prometheus would). Both variants run with
the default heartbeat. The order alternates between rounds; the figure is the median of per-round ratios.
A second pair does the same with a plain (``def``) handler, timed per thread hand-off.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio
import httpx
import psycopg

import pgchanges
from bench.common import bench_database, machine, timed_noop_app, write_results
from pgchanges.names import TableName
from pgchanges.sources.logical import ensure_publication, ensure_slot, publication_name

TABLE = TableName("public", "bench_events")
CREATE = "CREATE TABLE bench_events (id bigint PRIMARY KEY, at double precision, v text, n numeric)"


async def scrape_every(app: pgchanges.App, seconds: float) -> None:
    assert app.ops is not None
    async with httpx.AsyncClient() as client:
        while True:
            await anyio.sleep(seconds)
            if app.ops.port:
                (await client.get(f"http://127.0.0.1:{app.ops.port}/metrics")).raise_for_status()


async def run_app(conninfo: str, slot: str, n: int, *, metrics: bool, plain: bool) -> float:
    app = pgchanges.App(conninfo, source="logical", slot=slot, http="127.0.0.1:0" if metrics else None)
    async with anyio.create_task_group() as tg:
        if metrics:
            tg.start_soon(scrape_every, app, 0.5)
        if plain:
            rate = await timed_plain_app(app, n)
        else:
            rate = await timed_noop_app(app, str(TABLE), n, ops="insert", start_clock=time.perf_counter)
        tg.cancel_scope.cancel()
    return rate


async def timed_plain_app(app: pgchanges.App, n: int) -> float:
    """Like timed_noop_app, with a plain function (it runs in worker threads, a batch per hand-off)."""
    done = anyio.Event()
    seen = [0]

    def noop(change: pgchanges.Change) -> None:
        seen[0] += 1

    async def watch() -> None:
        while seen[0] < n:
            await anyio.sleep(0.005)
        done.set()

    app.on(str(TABLE), ops="insert")(noop)
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        start = time.perf_counter()
        tg.start_soon(watch)
        await done.wait()
        rate = n / (time.perf_counter() - start)
        app.stop()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    args = parser.parse_args()
    variants = [("off", False, False), ("on", True, False), ("plain_off", False, True), ("plain_on", True, True)]
    rates: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    with bench_database() as (cluster, conninfo):
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(CREATE)
            ensure_publication(conn, publication_name([TABLE]), [TABLE], False)
        for r in range(args.rounds):
            with psycopg.connect(conninfo, autocommit=True) as conn:
                for name, _, _ in variants:
                    ensure_slot(conn, f"{name}{r}")
                conn.execute(
                    "INSERT INTO bench_events SELECT g, 0, 'value ' || g, g * 1.5 "
                    "FROM generate_series(%s::bigint, %s::bigint) g",
                    (r * args.rows + 1, (r + 1) * args.rows),
                )
            order = variants if r % 2 == 0 else [variants[1], variants[0], variants[3], variants[2]]
            for name, metrics, plain in order:
                rate = anyio.run(
                    lambda s=f"{name}{r}", m=metrics, p=plain: run_app(conninfo, s, args.rows, metrics=m, plain=p),
                    backend=args.backend,
                )
                rates[name].append(rate)
            with psycopg.connect(conninfo, autocommit=True) as conn:
                for name, _, _ in variants:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (f"{name}{r}",))
            print("round " + "  ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items()), flush=True)
        version = cluster.version
    ratio = statistics.median(on / off for on, off in zip(rates["on"], rates["off"], strict=True))
    plain_ratio = statistics.median(on / off for on, off in zip(rates["plain_on"], rates["plain_off"], strict=True))
    data = {
        "benchmark": "metrics",
        "postgres": version,
        "backend": args.backend,
        "machine": machine(),
        "rows": args.rows,
        "rounds": {k: [round(x) for x in v] for k, v in rates.items()},
        "median_per_s": {k: round(statistics.median(v)) for k, v in rates.items()},
        "ratio_async": round(ratio, 3),
        "ratio_plain": round(plain_ratio, 3),
    }
    write_results(f"metrics-{args.backend}", data, markdown_of(data, args))


def markdown_of(data: dict, args: argparse.Namespace) -> str:
    m = data["median_per_s"]
    version = data["postgres"]
    markdown = f"""# Metrics on the hot path

PostgreSQL {version}, fsync on, {args.backend}, {data["machine"]["cpus"]} CPUs. Reproduce:
`.venv/bin/python -m bench.metrics_bench --backend {args.backend}`.

Logical source, {args.rows:,} inserts of one transaction per round, {args.rounds} rounds, the order of the
variants alternating; an App with a no-op handler, with and without `http=` (metrics collected, /metrics
scraped every 0.5 s meanwhile). Ratio: median of the per-round ratios (on / off).

| handler | without metrics (changes/s) | with metrics (changes/s) | ratio |
|---|---|---|---|
| `async def` | {m["off"]:,} | {m["on"]:,} | **{data["ratio_async"]}** |
| plain `def` (worker threads, a batch per hand-off) | {m["plain_off"]:,} | {m["plain_on"]:,} | **{data["ratio_plain"]}** |

Rounds (changes/s): {", ".join(f"{k}: {v}" for k, v in data["rounds"].items())}.
"""
    print(markdown)
    return markdown


if __name__ == "__main__":
    main()
