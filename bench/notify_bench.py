"""Notify source benchmark: throughput and latency beside a raw psycopg LISTEN loop, and write-path cost.

    .venv/bin/python -m bench.notify_bench            # writes bench/results/notify.{json,md}

All figures of one run come from one cluster (fsync on) and one process, so ratios compare like with like:
1. drain: N rows inserted in one transaction (N notifications delivered at commit); time from commit to the
   last one received by (a) a raw pq-level LISTEN loop that only counts, (b) an App with a no-op handler.
   Rounds alternate raw/App; the median of each is reported.
2. latency at a steady 1,000 changes/s: single-row transactions stamped with clock_timestamp(); the handler
   (or raw loop, which parses the JSON to read the stamp) records now - stamp: commit→handler latency
   including the commit itself.
3. write TPS of pgbench INSERTs at 2 and 8 clients with and without the notify trigger.

``--section payload`` measures the notify trigger's payload and the listener's parsing instead, beside a bare
``pg_notify(row_to_json(NEW))`` trigger read with ``json.loads`` (what the peers do), on the peers' columns
(bench/results/notify-payload.md): trigger time per row, writer time, and what a consumer that reads every value
receives, live and from a burst.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any

import anyio
import psycopg
from psycopg import sql

import pgchanges
from bench.common import (
    bench_database,
    latency_summary,
    latency_with_app,
    machine,
    pgbench_tps,
    steady_inserts,
    timed_noop_app,
    write_results,
)
from pgchanges.capture import install as capture
from pgchanges.names import TableName

TABLE = TableName("public", "bench_events")
CREATE = "CREATE TABLE IF NOT EXISTS bench_events (id bigint, at double precision, v text, n numeric)"


async def raw_drain(conninfo: str, n: int, produce: Any) -> float:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(TABLE.channel)))
        pgconn = conn.pgconn
        start = produce()
        count = 0
        while count < n:
            await anyio.wait_readable(pgconn.socket)
            pgconn.consume_input()
            while pgconn.notifies() is not None:
                count += 1
        return n / (time.perf_counter() - start)


async def app_drain(conninfo: str, n: int, produce: Any) -> float:
    return await timed_noop_app(pgchanges.App(conninfo), str(TABLE), n, start_clock=produce)


SUSTAINED_SCRIPT = "INSERT INTO bench_events SELECT g, 0, 'value ' || g, g * 1.5 FROM generate_series(1, {batch}) g;\n"


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0


async def sustained(cluster: Any, conninfo: str, kind: str, clients: int, batch: int, seconds: int) -> dict[str, Any]:
    """Delivered changes/s while pgbench writes steadily; the consumer must keep up with real writers."""
    counter = Counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("TRUNCATE bench_events")
    async with anyio.create_task_group() as tg:
        if kind == "raw":
            ready = anyio.Event()
            tg.start_soon(_raw_count, conninfo, counter, ready)
            await ready.wait()
            app = None
        else:
            app = pgchanges.App(conninfo)

            @app.on(str(TABLE), ops={"insert"})
            async def noop(change: pgchanges.Change) -> None:
                counter.count += 1
                counter.last = time.perf_counter()

            await tg.start(app.serve)
        start = time.perf_counter()
        tps = await anyio.to_thread.run_sync(
            pgbench_tps, cluster, "bench", SUSTAINED_SCRIPT.format(batch=batch), clients, seconds
        )
        with psycopg.connect(conninfo) as conn:
            written = int(conn.execute("SELECT count(*) FROM bench_events").fetchone()[0])  # type: ignore[index]
        with anyio.fail_after(60):
            while counter.count < written:
                await anyio.sleep(0.01)
        if app is not None:
            app.stop()
        tg.cancel_scope.cancel()
    return {
        "written": written,
        "received": counter.count,
        "per_s": round(written / (counter.last - start)),
        "writer_tps": round(tps),
    }


async def _raw_count(conninfo: str, counter: Counter, ready: anyio.Event) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(TABLE.channel)))
        pgconn = conn.pgconn
        ready.set()
        while True:
            await anyio.wait_readable(pgconn.socket)
            pgconn.consume_input()
            while pgconn.notifies() is not None:
                counter.count += 1
            counter.last = time.perf_counter()


def bulk_producer(conninfo: str, n: int) -> Any:
    def produce() -> float:
        with psycopg.connect(conninfo) as conn:
            conn.execute(
                "INSERT INTO bench_events SELECT g, 0, 'value ' || g, g * 1.5 FROM generate_series(1, %s) g", (n,)
            )
            conn.commit()  # the clock starts when the notifications are released
            return time.perf_counter()

    return produce


async def app_latency(conninfo: str, rate: float, seconds: float) -> list[float]:
    return await latency_with_app(pgchanges.App(conninfo), str(TABLE), conninfo, rate, seconds)


async def raw_latency(conninfo: str, rate: float, seconds: float) -> list[float]:
    lat: list[float] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(TABLE.channel)))
        pgconn = conn.pgconn
        writer = steady_inserts(conninfo, rate, seconds)
        while writer.is_alive() or pgconn.notifies() is not None:
            with anyio.move_on_after(0.2):
                await anyio.wait_readable(pgconn.socket)
            pgconn.consume_input()
            while (note := pgconn.notifies()) is not None:
                lat.append(time.time() - float(json.loads(note.extra)["n"]["at"]))
    return lat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=10)
    parser.add_argument("--tps-seconds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=10, help="rows per writer transaction (sustained)")
    parser.add_argument("--sustained-seconds", type=int, default=5)
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument("--section", default="all", choices=("all", "payload"))
    args = parser.parse_args()
    if args.section == "payload":
        payload_main(args.rounds, args.backend)
        return

    with bench_database() as (cluster, conninfo):
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(CREATE)
            capture.install(conn, [TABLE])

        raw_rates, app_rates = [], []
        for _ in range(args.rounds):
            produce = bulk_producer(conninfo, args.rows)
            raw_rates.append(anyio.run(raw_drain, conninfo, args.rows, produce, backend=args.backend))
            app_rates.append(anyio.run(app_drain, conninfo, args.rows, produce, backend=args.backend))
            print(f"drain round: raw {raw_rates[-1]:,.0f}/s  app {app_rates[-1]:,.0f}/s", flush=True)
        raw_rate, app_rate = statistics.median(raw_rates), statistics.median(app_rates)

        sustained_runs: dict[str, list[dict[str, Any]]] = {"raw": [], "app": []}
        for _ in range(args.rounds):
            for kind in ("raw", "app"):
                sustained_runs[kind].append(
                    anyio.run(
                        sustained, cluster, conninfo, kind, 4, args.batch, args.sustained_seconds, backend=args.backend
                    )
                )
            print(
                f"sustained round: raw {sustained_runs['raw'][-1]['per_s']:,}/s "
                f"app {sustained_runs['app'][-1]['per_s']:,}/s",
                flush=True,
            )
        raw_sus = statistics.median(r["per_s"] for r in sustained_runs["raw"])
        app_sus = statistics.median(r["per_s"] for r in sustained_runs["app"])

        raw_lat = anyio.run(raw_latency, conninfo, 1000.0, args.latency_seconds, backend=args.backend)
        app_lat = anyio.run(app_latency, conninfo, 1000.0, args.latency_seconds, backend=args.backend)

        tps: dict[str, dict[str, float]] = {}
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_plain (id bigserial, v text)")
            conn.execute("CREATE TABLE bench_notify (id bigserial, v text)")
            capture.install(conn, [TableName("public", "bench_notify")])
        for clients in (2, 8):
            for table in ("bench_plain", "bench_notify"):
                script = f"INSERT INTO {table} (v) VALUES ('pgbench row ' || :client_id);\n"
                tps.setdefault(table, {})[str(clients)] = pgbench_tps(
                    cluster, "bench", script, clients, args.tps_seconds
                )
        version = cluster.version

    data = {
        "benchmark": "notify",
        "postgres": version,
        "backend": args.backend,
        "machine": machine(),
        "drain": {
            "rows": args.rows,
            "raw_per_s": round(raw_rate),
            "app_per_s": round(app_rate),
            "ratio": round(app_rate / raw_rate, 3),
            "raw_rounds": [round(r) for r in raw_rates],
            "app_rounds": [round(r) for r in app_rates],
        },
        "sustained": {
            "writer_clients": 4,
            "rows_per_transaction": args.batch,
            "raw_per_s": raw_sus,
            "app_per_s": app_sus,
            "ratio": round(app_sus / raw_sus, 3),
            "rounds": sustained_runs,
        },
        "latency_at_1000_per_s": {"raw": latency_summary(raw_lat), "app": latency_summary(app_lat)},
        "write_tps": {
            "none": tps["bench_plain"],
            "notify_trigger": tps["bench_notify"],
            "ratio_at_8": round(tps["bench_notify"]["8"] / tps["bench_plain"]["8"], 3),
            "ratio_at_2": round(tps["bench_notify"]["2"] / tps["bench_plain"]["2"], 3),
        },
    }
    d, lr, la, w = data["drain"], data["latency_at_1000_per_s"]["raw"], data["latency_at_1000_per_s"]["app"], tps
    markdown = f"""# Notify source benchmark

PostgreSQL {version}, fsync on, {args.backend}, {data["machine"]["cpus"]} CPUs. Reproduce:
`.venv/bin/python -m bench.notify_bench --backend {args.backend}`.

| measure | raw psycopg LISTEN loop | pgchanges App, no-op handler | ratio |
|---|---|---|---|
| delivered while 4 pgbench writers commit {args.batch}-row transactions (median of {args.rounds}) | {raw_sus:,.0f}/s | {app_sus:,.0f}/s | **{data["sustained"]["ratio"]}** |
| drain of {d["rows"]:,} notifications queued by one transaction (median of {args.rounds}) | {d["raw_per_s"]:,}/s | {d["app_per_s"]:,}/s | {d["ratio"]} |
| commit→handler p50 at 1,000 changes/s | {lr["p50_ms"]} ms | {la["p50_ms"]} ms | |
| commit→handler p99 at 1,000 changes/s | {lr["p99_ms"]} ms | {la["p99_ms"]} ms | |

The sustained row is the comparison that matters for users: both consumers keep up with real writers, and
the ratio says whether pgchanges loses ground. The drain row is CPU cost per change: the raw loop only counts
notifications that were already buffered (about 1 µs each), while pgchanges parses the JSON, types the values,
builds a Change and calls a handler (about 6.5 µs).

Latency is measured from `clock_timestamp()` inside the writing statement, so it includes the commit (fsync).

| write TPS (pgbench INSERT) | 2 clients | 8 clients |
|---|---|---|
| no capture | {w["bench_plain"]["2"]:,.0f} | {w["bench_plain"]["8"]:,.0f} |
| notify trigger | {w["bench_notify"]["2"]:,.0f} | {w["bench_notify"]["8"]:,.0f} |
| ratio | {data["write_tps"]["ratio_at_2"]} | {data["write_tps"]["ratio_at_8"]} |
"""
    write_results(f"notify-{args.backend}", data, markdown)
    print(markdown)


PEER_COLUMNS = "id bigserial PRIMARY KEY, name text, qty int, price numeric(12,2), at timestamptz, payload jsonb"
PEER_ROW = (
    "'item ' || g, mod(g, 1000)::int, (mod(g, 100000) / 100.0)::numeric(12,2), now(), "
    "jsonb_build_object('t', extract(epoch FROM clock_timestamp()), 'g', g, 'tags', jsonb_build_array('a', 'b'), "
    "'note', 'benchmark row')"
)
PEER_TRIGGER = """
CREATE FUNCTION peer_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('peer', row_to_json(NEW)::text); RETURN NULL; END $$;
CREATE TRIGGER peer AFTER INSERT ON items_peer FOR EACH ROW EXECUTE FUNCTION peer_notify();
"""
PAYLOAD_TABLES = ("items_none", "items_peer", "items_format1", "items_pgc")
PER_TXN = 1000


def format_1_trigger() -> str:
    """The notify trigger of schema versions 6 to 10 (payload format 1), rebuilt on items_format1."""
    from pgchanges.capture import migrations

    sql = next(m.sql for m in migrations.available() if m.version == 6)
    start = sql.index("CREATE OR REPLACE FUNCTION pgchanges.notify_row_v1()")
    body = sql[start : sql.index("$fn$;", start) + len("$fn$;")].replace("pgchanges.notify_row_v1()", "format1()")
    return body + "\nCREATE TRIGGER f AFTER INSERT ON items_format1 FOR EACH ROW EXECUTE FUNCTION format1('format1');"


def write_rows(conninfo: str, table: str, n: int) -> float:
    """Seconds to insert ``n`` rows into ``table`` in transactions of PER_TXN rows."""
    start = time.perf_counter()
    with psycopg.connect(conninfo) as conn:
        for first in range(0, n, PER_TXN):
            conn.execute(
                f"INSERT INTO {table} (name, qty, price, at, payload) SELECT {PEER_ROW} "
                "FROM generate_series(%s::bigint, %s::bigint) g",
                (first + 1, first + PER_TXN),
            )
            conn.commit()
    return time.perf_counter() - start


def trigger_us_per_row(conninfo: str, table: str, n: int = 5000) -> float:
    """The trigger's own time per row, as EXPLAIN ANALYZE reports it (rolled back)."""
    with psycopg.connect(conninfo) as conn:
        plan = conn.execute(
            f"EXPLAIN (ANALYZE, FORMAT JSON) INSERT INTO {table} (name, qty, price, at, payload) "
            f"SELECT {PEER_ROW} FROM generate_series(1, {n}) g"
        ).fetchone()[0]  # type: ignore[index]
        conn.rollback()
    return float(plan[0]["Triggers"][0]["Time"]) / n * 1000


async def peer_consumer(conninfo: str, n: int, write: Any) -> float:
    """Changes/s of a psycopg LISTEN loop that json.loads every payload of items_peer; ``write()`` writes."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("LISTEN peer")
        pgconn, count, rows = conn.pgconn, 0, []
        start = write()
        while count < n:
            await anyio.wait_readable(pgconn.socket)
            pgconn.consume_input()
            while (note := pgconn.notifies()) is not None:
                rows.append(json.loads(note.extra))
                count += 1
        return n / (time.perf_counter() - start)


def live_writer(conninfo: str, table: str, n: int) -> Any:
    """A start_clock for the consumers: starts a thread writing ``n`` rows, returns the time it started."""

    def start() -> float:
        threading.Thread(target=write_rows, args=(conninfo, table, n), daemon=True).start()
        return time.perf_counter()

    return start


def burst_writer(conninfo: str, table: str, n: int) -> Any:
    """A start_clock for the consumers: ``n`` rows in one transaction; returns the time of its commit."""

    def start() -> float:
        with psycopg.connect(conninfo) as conn:
            conn.execute(
                f"INSERT INTO {table} (name, qty, price, at, payload) SELECT {PEER_ROW} FROM generate_series(1, %s) g",
                (n,),
            )
            conn.commit()
        return time.perf_counter()

    return start


def payload_main(rounds: int, backend: str, rows: int = 20_000) -> None:
    figures: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)
        print(f"  {name}: {value:,.2f}", flush=True)

    with bench_database() as (cluster, conninfo):
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for table in PAYLOAD_TABLES:
                conn.execute(f"CREATE TABLE {table} ({PEER_COLUMNS})")
            capture.install(conn, [TableName("public", "items_pgc")])
            conn.execute(PEER_TRIGGER)
            conn.execute(format_1_trigger())
        for rnd in range(rounds):
            print(f"round {rnd}", flush=True)
            for table in PAYLOAD_TABLES[rnd % 4 :] + PAYLOAD_TABLES[: rnd % 4]:
                if table != "items_none":
                    record(f"trigger µs/row {table}", trigger_us_per_row(conninfo, table))
                record(f"writer s {table}", write_rows(conninfo, table, rows))
            for kind, writer in (("live", live_writer), ("burst", burst_writer)):
                peer = anyio.run(peer_consumer, conninfo, rows, writer(conninfo, "items_peer", rows), backend=backend)
                record(f"{kind} peer", peer)
                for read in (True, False):
                    app = pgchanges.App(conninfo)
                    start = writer(conninfo, "items_pgc", rows)
                    rate = anyio.run(
                        lambda app=app, start=start, read=read: timed_noop_app(
                            app, "public.items_pgc", rows, start_clock=start, read_values=read
                        ),
                        backend=backend,
                    )
                    record(f"{kind} pgchanges {'reads values' if read else 'no-op'}", rate)
                    record(f"{kind} ratio {'reads values' if read else 'no-op'}", rate / peer)
        version = cluster.version
    median = {name: statistics.median(values) for name, values in figures.items()}
    write_payload_results(median, figures, rounds, rows, backend, version)


def write_payload_results(
    median: dict[str, float], figures: dict[str, list[float]], rounds: int, rows: int, backend: str, version: int
) -> None:
    def fig(name: str, fmt: str = ",.0f") -> str:
        return format(median[name], fmt)

    def trigger_row(label: str, table: str) -> str:
        micros = fig(f"trigger µs/row {table}", ".2f") if f"trigger µs/row {table}" in median else "0"
        return f"| {label} | {micros} | {fig(f'writer s {table}', '.3f')} |"

    trig = "\n".join(
        trigger_row(label, table)
        for label, table in (
            ("no trigger", "items_none"),
            ("bare `pg_notify(row_to_json(NEW))` (the peers' trigger)", "items_peer"),
            ("pgchanges payload format 1 (`notify_row_v1`, schema versions 6 to 10)", "items_format1"),
            ("pgchanges as installed now", "items_pgc"),
        )
    )
    markdown = f"""# Notify: the trigger's payload and the listener's parsing

PostgreSQL {version}, fsync on, {backend}, 2 CPUs shared with other work while it ran. Reproduce:
`.venv/bin/python -m bench.notify_bench --section payload --rounds {rounds}`. Medians of {rounds} rounds (the
tables' order rotates between rounds). Table: the peers' columns (bigserial, text, int, numeric(12,2),
timestamptz, jsonb); {rows:,} rows written in transactions of {PER_TXN:,}.

| trigger | trigger µs per row (EXPLAIN ANALYZE) | writer s for {rows:,} rows |
|---|---|---|
{trig}

Consumers reading every value (the peer: psycopg `notifies()` + `json.loads`, on the peers' trigger; pgchanges:
an App whose handler does `dict(change.new)`, values typed exactly: Decimal numeric, aware datetime, jsonb with
float fractions). *live*: timed from the writer's start, while it writes; *burst*: all rows in one
transaction, timed from its commit (the consumer's own capacity).

| | peer changes/s | pgchanges, reads values | ratio to peer | pgchanges, no-op | ratio to peer |
|---|---|---|---|---|---|
| live | {fig("live peer")} | {fig("live pgchanges reads values")} | {fig("live ratio reads values", ".2f")} | {fig("live pgchanges no-op")} | {fig("live ratio no-op", ".2f")} |
| burst | {fig("burst peer")} | {fig("burst pgchanges reads values")} | {fig("burst ratio reads values", ".2f")} | {fig("burst pgchanges no-op")} | {fig("burst ratio no-op", ".2f")} |
"""
    write_results("notify-payload", {"rounds": figures, "median": median, "machine": machine()}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
