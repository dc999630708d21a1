"""Forwarding benchmark: logical → NATS JetStream and logical → Redis Streams, beside a raw publish loop of the same
client with the same payloads and acknowledgement window, measured in the same run (fsync on).

    .venv/bin/python -m bench.forward_bench            # writes bench/results/forward.{json,md}

1. throughput: N rows inserted in one transaction, a slot made before it; (a) a raw loop publishing N prebuilt
   payloads (the same JSON the forwarder sends) in windows of W, each window awaited (JetStream
   ``publish_async`` + every PubAck; one Redis pipeline of the same dedup script), (b) ``app.forward`` from the
   logical slot with ``window=W``, timed until the broker confirmed the N-th change. Rotated rounds; the median
   of per-round ratios.
2. commit→broker latency at a steady 1,000 changes/s: single-row transactions stamped with clock_timestamp(),
   until the forwarder got the broker's confirmation of each.
3. RSS of a ``pgchanges forward`` process while NATS is stopped for a minute under load (1,000 changes/s keep
   coming): sampled every second; afterwards every change must be in the stream exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import psycopg

import pgchanges
from bench.common import bench_database, latency_summary, machine, steady_inserts, write_results
from pgchanges.change import Change, freeze
from pgchanges.names import TableName
from pgchanges.sinks.redis import DEDUP_SUFFIX, XADD_ONCE
from pgchanges.sources.logical import ensure_publication, ensure_slot, publication_name
from tests.brokers import NatsServer, RedisServer, nats_count, unique

NAME = TableName("public", "bench_events")
TABLE = str(NAME)
CREATE = "CREATE TABLE bench_events (id bigint PRIMARY KEY, at double precision, v text, n numeric)"


def payloads(n: int) -> list[tuple[str, bytes]]:
    """(change id, JSON) of n changes shaped like the forwarder's (same columns, values and id form)."""
    out = []
    for i in range(n):
        new = freeze({"id": i, "at": 0.0, "v": f"value {i}", "n": i * 1.5})
        change = Change(f"0/1A2B3C4D:{i}", "insert", "public", "bench_events", new, None, (), 1234, None, "0/1A2B3C4D",
                        "logical")  # fmt: skip
        out.append((f"raw:{time.monotonic_ns()}:{i}", change.to_json().encode()))
    return out


async def raw_nats(url: str, stream: str, items: list[tuple[str, bytes]], window: int, wait: str = "gather") -> float:
    """``wait``: "gather" awaits every future of a window (asyncio.gather); "last" awaits the window's last
    future and then whatever is still pending, as the sink does (pgchanges/sinks/nats.py ``_acks``)."""
    import nats
    import nats.js.errors
    from nats.js.api import StreamConfig

    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=1 << 30)
    try:
        await js.stream_info(stream)
    except nats.js.errors.NotFoundError:  # as the forwarder creates it
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream.lower()}.*"], duplicate_window=120))
    subject = f"{stream.lower()}.raw"
    start = time.perf_counter()
    for i in range(0, len(items), window):
        futures = [
            await js.publish_async(subject, data, headers={"Nats-Msg-Id": key, "Content-Type": "application/json"})
            for key, data in items[i : i + window]
        ]
        if wait == "gather":
            await asyncio.gather(*futures)
        else:
            await futures[-1]
            pending = [f for f in futures if not f.done()]
            if pending:
                await asyncio.gather(*pending)
    rate = len(items) / (time.perf_counter() - start)
    await nc.close()
    return rate


async def raw_redis(url: str, stream: str, items: list[tuple[str, bytes]], window: int) -> float:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url, socket_timeout=None)  # as the sink: one deadline per window
    sha = await client.script_load(XADD_ONCE)
    start = time.perf_counter()
    for i in range(0, len(items), window):
        pipe = client.pipeline(transaction=False)
        for key, data in items[i : i + window]:
            pipe.evalsha(sha, 2, stream, stream + DEDUP_SUFFIX, key, data, "", "100000")
        async with asyncio.timeout(10):
            await pipe.execute()
    rate = len(items) / (time.perf_counter() - start)
    await client.aclose()
    return rate


def confirmed(forwarder: Any, on_batch: Any) -> None:
    """Call ``on_batch(changes)`` each time the forwarder returns (the broker confirmed the batch)."""
    inner = forwarder.forward

    async def forward(changes: Any) -> Any:
        outcomes = await inner(changes)
        on_batch(changes)
        return outcomes

    forwarder.forward = forward


async def app_forward(conninfo: str, slot: str, n: int, window: int, **sink: Any) -> float:
    app = pgchanges.App(conninfo, source="logical", slot=slot, handler_timeout=None)
    forwarder = app.forward(TABLE, window=window, **sink)
    seen = 0
    done = anyio.Event()

    def count(changes: Any) -> None:
        nonlocal seen
        seen += len(changes)
        if seen >= n:
            done.set()

    confirmed(forwarder, count)
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        await done.wait()
        rate = n / (time.perf_counter() - start)
        app.stop()
    return rate


async def app_latency(conninfo: str, seconds: float, **sink: Any) -> list[float]:
    slot = sink.pop("slot")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        ensure_slot(conn, slot)  # now: only the rows stamped from here on follow
    app = pgchanges.App(conninfo, source="logical", slot=slot, handler_timeout=None)
    forwarder = app.forward(TABLE, ops="insert", **sink)
    lat: list[float] = []
    confirmed(forwarder, lambda changes: lat.extend(time.time() - float(c.new["at"]) for c in changes))
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        writer = steady_inserts(conninfo, 1000.0, seconds, first_id=50_000_000 + len(sink["subject"]) * 10_000_000)
        await anyio.to_thread.run_sync(writer.join)
        await anyio.sleep(0.5)
        app.stop()
    return lat


def throughput(conninfo: str, nats: NatsServer, redis: RedisServer, args: argparse.Namespace) -> dict[str, Any]:
    names = ("raw_nats", "raw_nats_last", "forward_nats", "raw_redis", "forward_redis")
    rates: dict[str, list[float]] = {name: [] for name in names}
    items = payloads(args.rows)
    for r in range(args.rounds):
        stream = f"B{r}"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for slot in (f"nats{r}", f"redis{r}"):
                ensure_slot(conn, slot)
            conn.execute(
                "INSERT INTO bench_events SELECT g, 0, 'value ' || g, g * 1.5 FROM generate_series(%s::bigint, %s::bigint) g",
                (r * args.rows + 1, (r + 1) * args.rows),
            )
        nats_sink = {"to": nats.url, "stream": stream, "subject": stream.lower() + ".{table}"}
        redis_sink = {"to": redis.url, "subject": f"bench{r}"}
        runs = [
            ("raw_nats", partial(raw_nats, nats.url, f"R{r}", items, args.window)),
            ("forward_nats", partial(app_forward, conninfo, f"nats{r}", args.rows, args.window, **nats_sink)),
            ("raw_nats_last", partial(raw_nats, nats.url, f"L{r}", items, args.window, "last")),
            ("raw_redis", partial(raw_redis, redis.url, f"raw{r}", items, args.window)),
            ("forward_redis", partial(app_forward, conninfo, f"redis{r}", args.rows, args.window, **redis_sink)),
        ]
        order = runs if r % 2 == 0 else runs[::-1]  # rotate: raw first in even rounds, the forwarders in odd ones
        for name, run in order:
            rates[name].append(anyio.run(run))
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for slot in (f"nats{r}", f"redis{r}"):
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        print("round", r, {k: round(v[-1]) for k, v in rates.items()}, flush=True)
    out: dict[str, Any] = {k: round(statistics.median(v)) for k, v in rates.items()}
    # Each round's ratio is to the faster of that round's raw loops (for NATS: gather, or the sink's own wait).
    best_nats = [max(a, b) for a, b in zip(rates["raw_nats"], rates["raw_nats_last"], strict=True)]
    for broker, raw in (("nats", best_nats), ("redis", rates["raw_redis"])):
        pairs = zip(rates[f"forward_{broker}"], raw, strict=True)
        out[f"ratio_{broker}"] = round(statistics.median(f / r for f, r in pairs), 3)
    out["rounds"] = {k: [round(x) for x in v] for k, v in rates.items()}
    return out


def rss_with_nats_stopped(conninfo: str, directory: Path, outage: float) -> dict[str, Any]:
    """Peak RSS of a forwarder process while its NATS server is away for ``outage`` seconds under load."""
    import subprocess
    import sys

    directory.mkdir()
    server = NatsServer(directory)
    server.start()
    stream, slot = unique("RSS"), unique("rss")
    cmd = [sys.executable, "-m", "pgchanges.cli", "forward", TABLE, "--to", server.url, "--slot", slot,
           "--stream", stream, "--subject", "rss.{table}", "--dsn", conninfo]  # fmt: skip
    with psycopg.connect(conninfo, autocommit=True) as conn:
        ensure_slot(conn, slot)
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            status = Path(f"/proc/{proc.pid}/status").read_text()
            samples.append(int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1]) / 1024)

    seconds = outage + 10
    writer = steady_inserts(conninfo, 1000.0, seconds, first_id=900_000_000)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time.sleep(5)
    server.stop()
    time.sleep(outage)
    server.start()
    writer.join()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        written = conn.execute("SELECT count(*) FROM bench_events WHERE id >= 900000000").fetchone()[0]
    deadline = time.monotonic() + 120
    while nats_count(server.url, stream) < written and time.monotonic() < deadline:
        time.sleep(0.5)
    count = nats_count(server.url, stream)
    stop.set()
    proc.terminate()
    proc.wait(timeout=30)
    server.stop()
    return {"outage_s": outage, "peak_rss_mb": round(max(samples), 1), "written": written, "in_stream": count}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--latency-seconds", type=float, default=10)
    parser.add_argument("--outage", type=float, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, bench_database() as (cluster, conninfo):
        nats, redis = NatsServer(Path(tmp) / "n"), RedisServer(Path(tmp) / "r")
        for server in (nats, redis):
            server.directory.mkdir()
            server.start()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(CREATE)
            ensure_publication(conn, publication_name([NAME]), [NAME], False)
        t = throughput(conninfo, nats, redis, args)
        lat_nats = anyio.run(lambda: app_latency(conninfo, args.latency_seconds, slot="lat_nats", to=nats.url,
                                                 stream="LAT", subject="lat.{table}"))  # fmt: skip
        lat_redis = anyio.run(lambda: app_latency(conninfo, args.latency_seconds, slot="lat_redis", to=redis.url,
                                                  subject="latency"))  # fmt: skip
        for server in (nats, redis):
            server.stop()
        rss = rss_with_nats_stopped(conninfo, Path(tmp) / "rss", args.outage) if args.outage else {}
        version = cluster.version
    report(version, args, t, latency_summary(lat_nats), latency_summary(lat_redis), rss)


def report(version: str, args: argparse.Namespace, t: dict[str, Any], ln: dict[str, Any], lr: dict[str, Any],
           rss: dict[str, Any]) -> None:  # fmt: skip
    data = {"benchmark": "forward", "postgres": version, "backend": "asyncio", "machine": machine(),
            "rows": args.rows, "window": args.window, "throughput": t,
            "latency_at_1000_per_s": {"nats": ln, "redis": lr}, "rss_nats_stopped": rss}  # fmt: skip
    met = t["ratio_nats"] >= 0.7 and t["ratio_redis"] >= 0.7
    verdict = "**The throughput floor is met** for both brokers." if met else "**The throughput floor is not met.**"
    markdown = f"""# Forwarding benchmark

PostgreSQL {version}, fsync on, asyncio, {data["machine"]["cpus"]} CPUs, private nats-server and redis-server.
Reproduce: `.venv/bin/python -m bench.forward_bench` (`--outage 60` seconds of NATS down, `--rounds`, `--rows`).

| {args.rows:,} inserts of one transaction, window {args.window} (median of {args.rounds} rotated rounds) | changes/s | ratio (median of per-round ratios) |
|---|---|---|
| raw JetStream loop, `publish_async` of the same payloads and headers, `asyncio.gather` of each window's PubAcks | {t["raw_nats"]:,} | |
| raw JetStream loop, the same, awaiting the window's last PubAck first (as the sink does) | {t["raw_nats_last"]:,} | 1 (the faster raw loop of each round) |
| logical → `app.forward(to="nats://…")` | {t["forward_nats"]:,} | **{t["ratio_nats"]}** (floor ≥ 0.7) |
| raw Redis loop: one pipeline of the same dedup script per window, one deadline per window (as the sink) | {t["raw_redis"]:,} | 1 |
| logical → `app.forward(to="redis://…")` | {t["forward_redis"]:,} | **{t["ratio_redis"]}** (floor ≥ 0.7) |

Per round (changes/s): {t["rounds"]}

| commit→broker confirmation at 1,000 changes/s | samples | p50 | p99 | max |
|---|---|---|---|---|
| NATS JetStream (PubAck) | {ln["count"]} | {ln["p50_ms"]} ms | **{ln["p99_ms"]} ms** | {ln["max_ms"]} ms |
| Redis Streams (script reply) | {lr["count"]} | {lr["p50_ms"]} ms | **{lr["p99_ms"]} ms** | {lr["max_ms"]} ms |

Floor: p99 < 50 ms.

{verdict} The raw loops are the client's own publish path with the sink's settings and nothing else (no
database, no walsender); the forwarder also reads the slot, decodes and types each row, writes its JSON and
plans the rounds (one change per row in flight). What closed the gap (py-spy of the forwarder before each
step, December 2026): `Change.to_json_bytes` in C (`pgchanges/_jsonwrite.c`: a fifth of the NATS forwarder's
time was `to_json`); waiting for a window's last PubAck instead of a callback on each of its futures
(`asyncio.wait` over 1,000 futures); one deadline per Redis window instead of redis-py's default 5 s
`socket_timeout`, which entered a timeout context per reply read (a quarter of the Redis forwarder's time);
and reading ahead: the logical feed's next batch is read and its messages made while the batch in hand
waits for the broker (`pgchanges/serving.py`), reads split into equal batches (a read of 1,200 made a
1,000 and a 200, and the 200 paid a whole round trip). The raw loops got the same client settings, so the
ratio is to the faster loop, not to a handicapped one; the window size itself barely moves the raw loops
(300 to 1,000 in flight: within the machine's noise).

RSS of a `pgchanges forward` process while NATS was stopped for {rss.get("outage_s")} s with 1,000 changes/s
still committed: peak **{rss.get("peak_rss_mb")} MB** (floor < 200 MB); afterwards {rss.get("in_stream")} of
{rss.get("written")} changes were in the stream (each once: the stream dedups by Nats-Msg-Id).
"""
    write_results("forward", data, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
