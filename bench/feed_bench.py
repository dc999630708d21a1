"""Change feed benchmark: SSE clients in separate processes on one table fed by one logical slot (fsync on).

    .venv/bin/python -m bench.feed_bench                       # full run: writes bench/results/feed.{json,md}
    .venv/bin/python -m bench.feed_bench --seconds 8 --rates 50,200 --idle 2000 --rounds 1   # a short check

The server is ``pgchanges feed``'s App (logical source, a feed with bearer tokens, the ``--http`` endpoint) in
a process of its own, whose CPU time and RSS are read with psutil. Clients are raw asyncio connections (an
HTTP/1.0 GET, so that the body is the event stream itself) spread over ``--client-procs`` processes: each
event's row carries the ``clock_timestamp()`` of its insert, and each client checks that row ids arrive one
after the other (no gap, no repeat).

1. ``--clients`` (1,000) SSE clients while single-row inserts come at 50/s for ``--seconds``: commit→client
   p50/p99 over every delivery, every client got every change, server CPU and peak RSS. The baseline of the
   same run: commit→handler of a plain ``@app.on`` handler in the server process (what capture alone costs:
   the database's commit and WAL, the walsender, decoding), and handler→client per delivery (what the feed
   adds: the retained log, the fan-out, the sockets, the client processes).
2. The same clients at rising rates (``--rates``): the highest rate at which every client gets every change
   with p99 commit→client under 250 ms (and under 1 s).
3. ``--idle`` (10,000) idle SSE clients: the server's RSS before and after they connect.

The machine is shared (other work may run on its two cores): rounds are repeated and medians reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench.common import bench_database, latency_summary, machine, steady_inserts, write_results

TOKEN = "bench-token"  # a throwaway token of the benchmark's own server
CREATE = "CREATE TABLE bench_events (id bigint PRIMARY KEY, at double precision, v text, n numeric)"
PATH = "/v1/changes?table=public.bench_events&live=sse"


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the server process ----------------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    import anyio

    import pgchanges

    raise_fd_limit()
    app = pgchanges.App(args.dsn, source="logical", slot="bench_feed", http=f"127.0.0.1:{args.port}",
                        handler_timeout=None, heartbeat=None)  # fmt: skip
    app.feed("public.bench_events", tokens={TOKEN: "bench"})
    captured: dict[int, float] = {}

    @app.on("public.bench_events")
    async def baseline(change: Any) -> None:  # when the same process's handler got each row
        captured[change.new["id"]] = time.time()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(app.serve)
            print("listening", flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)  # one line per phase: dump the baseline
            while True:
                Path(args.out).write_text(json.dumps(captured))
                captured.clear()
                print("dumped", flush=True)
                if not await anyio.to_thread.run_sync(sys.stdin.readline):
                    break
            app.stop()

    anyio.run(main)


# -- the client processes --------------------------------------------------------------------------------------


class Client(asyncio.Protocol):
    def __init__(self, request: bytes, ready: asyncio.Event, counter: list[int], total: int) -> None:
        self.request = request
        self.ready, self.counter, self.total = ready, counter, total
        self.buffer = b""
        self.started = False
        self.last = -1
        self.received = 0
        self.errors = 0
        self.arrivals: list[tuple[int, float]] = []
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        now = time.time()
        if not self.started:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if not buffer.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                self.errors += 1
            buffer, self.started = buffer[end + 4 :], True
            self.counter[0] += 1
            if self.counter[0] == self.total:
                self.ready.set()
        parts = buffer.split(b"\n\n")
        self.buffer = parts.pop()
        for event in parts:
            start = event.find(b'"new":{"id":') + 12
            if start < 12:
                continue  # the stream's position, a keep-alive
            row = int(event[start : event.index(b",", start)])
            if self.last >= 0 and row != self.last + 1:
                self.errors += 1
            self.last = row
            self.received += 1
            self.arrivals.append((row, now))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True


async def run_clients(args: argparse.Namespace) -> None:
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    counter = [0]
    request = (f"GET {PATH} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").encode()
    clients: list[Client] = []
    for start in range(0, args.n, 100):  # in steps: the listener's backlog is finite
        for _ in range(min(100, args.n - start)):
            client = Client(request, ready, counter, args.n)
            await loop.create_connection(lambda c=client: c, "127.0.0.1", args.port)
            clients.append(client)
        await asyncio.sleep(0.02)
    await asyncio.wait_for(ready.wait(), 120)
    print("ready", flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        report = {
            "received": [c.received for c in clients],
            "errors": sum(c.errors for c in clients),
            "closed": sum(c.closed for c in clients),
            "arrivals": [x for c in clients for x in c.arrivals],
        }
        for c in clients:
            c.arrivals.clear()
            c.received = 0
            c.last = -1
        Path(line.strip()).write_text(json.dumps(report))
        print("dumped", flush=True)


# -- the conductor ---------------------------------------------------------------------------------------------


class Proc:
    def __init__(self, *argv: str) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "bench.feed_bench", *argv], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip

    def expect(self, word: str) -> None:
        assert self.p.stdout is not None
        line = self.p.stdout.readline().strip()
        assert line == word, f"expected {word!r}, got {line!r}"

    def say(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def stop(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.close()
        self.p.wait(60)


def connect(port: int, count: int, procs: int) -> list[Proc]:
    per = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    clients = [Proc("clients", "--port", str(port), "--n", str(n)) for n in per if n]
    for c in clients:
        c.expect("ready")
    return clients


def phase(conninfo: str, server: Proc, clients: list[Proc], rate: float, seconds: float, first: int,
          tmp: Path, srv: psutil.Process) -> dict[str, Any]:  # fmt: skip
    """Inserts at ``rate`` for ``seconds``; what the clients and the server saw."""
    procs = [psutil.Process(c.p.pid) for c in clients]
    cpu0, t0, peak = srv.cpu_times(), time.monotonic(), srv.memory_info().rss
    clients0 = sum(sum(p.cpu_times()[:2]) for p in procs)
    writer = steady_inserts(conninfo, rate, seconds, first)
    while writer.is_alive():
        peak = max(peak, srv.memory_info().rss)
        writer.join(0.5)
    time.sleep(2.0)  # what is in flight arrives
    cpu1, t1 = srv.cpu_times(), time.monotonic()
    clients_cpu = sum(sum(p.cpu_times()[:2]) for p in procs) - clients0
    expected = int(rate * seconds + 0.999)
    received: list[int] = []
    arrivals: list[tuple[int, float]] = []
    errors = closed = 0
    for i, c in enumerate(clients):
        out = tmp / f"clients-{i}.json"
        c.say(str(out))
        c.expect("dumped")
        report = json.loads(out.read_text())
        received += report["received"]
        arrivals += report["arrivals"]
        errors += report["errors"]
        closed += report["closed"]
    server.say("dump")
    server.expect("dumped")
    handled = {int(k): v for k, v in json.loads((tmp / "server.json").read_text()).items()}
    with psycopg.connect(conninfo) as conn:
        at = dict(conn.execute("SELECT id, at FROM bench_events WHERE id >= %s", (first,)).fetchall())
    written = len(at)
    latencies = [t - at[row] for row, t in arrivals]
    fanout = [t - handled[row] for row, t in arrivals if row in handled]
    baseline = [handled[row] - at[row] for row in handled if row in at]
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0)  # the drain included
    return {
        "rate": rate,
        "seconds": seconds,
        "written": written,
        "expected_per_client": expected,
        "clients": len(received),
        "clients_complete": sum(1 for r in received if r == written),
        "order_errors": errors,
        "closed": closed,
        "deliveries_per_s": round(sum(received) / seconds),
        "client": latency_summary(latencies) if latencies else None,
        "baseline_handler": latency_summary(baseline) if baseline else None,
        "handler_to_client": latency_summary(fanout) if fanout else None,
        "server_cpu_percent": round(100 * cpu, 1),
        "server_peak_rss_mb": round(peak / 1e6, 1),
        "clients_cpu_percent": round(100 * clients_cpu / (t1 - t0), 1),
        "load_average": os.getloadavg()[0],
    }


def kept_up(result: dict[str, Any], p99_ms: float) -> bool:
    client = result["client"]
    return bool(client and result["clients_complete"] == result["clients"] and client["p99_ms"] < p99_ms)


def conduct(args: argparse.Namespace) -> None:
    raise_fd_limit()
    tmp = Path(f"/tmp/pgchanges-feed-bench-{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    results: dict[str, Any] = {"machine": machine(), "args": vars(args), "steady": [], "rates": [], "idle": None}
    with bench_database() as (_cluster, conninfo):
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(CREATE)
        port = 18000 + os.getpid() % 1000
        server = Proc("serve", "--dsn", conninfo, "--port", str(port), "--out", str(tmp / "server.json"))
        server.expect("listening")
        srv = psutil.Process(server.p.pid)
        first = 0
        try:
            clients = connect(port, args.clients, args.client_procs)
            for _ in range(args.rounds):
                found = phase(conninfo, server, clients, 50, args.seconds, first, tmp, srv)
                first += found["written"]
                results["steady"].append(found)
                print("steady", json.dumps(found), flush=True)
            for rate in args.rates:
                found = phase(conninfo, server, clients, rate, args.rate_seconds, first, tmp, srv)
                first += found["written"]
                results["rates"].append(found)
                print("rate", json.dumps(found), flush=True)
                if not kept_up(found, 1000):
                    break
            for c in clients:
                c.stop()
            if args.idle:
                time.sleep(1.0)
                before = srv.memory_info().rss
                idle = connect(port, args.idle, max(2, args.client_procs))
                time.sleep(2.0)
                after = srv.memory_info().rss
                results["idle"] = {"clients": args.idle, "rss_before_mb": round(before / 1e6, 1),
                                   "rss_after_mb": round(after / 1e6, 1),
                                   "kb_per_client": round((after - before) / args.idle / 1e3, 2)}  # fmt: skip
                print("idle", json.dumps(results["idle"]), flush=True)
                for c in idle:
                    c.stop()
        finally:
            server.stop()
    write_results(args.name, results, markdown(results))


def markdown(r: dict[str, Any]) -> str:
    a = r["args"]
    lines = [
        "# Change feed benchmark",
        "",
        f"PostgreSQL 15, fsync on, asyncio, {r['machine']['cpus']} CPUs shared by the server, the clients, "
        "PostgreSQL and the writer (and, when this ran, other agents' work).",
        f"Reproduce: `.venv/bin/python -m bench.feed_bench --clients {a['clients']} --seconds {a['seconds']} "
        f"--rounds {a['rounds']} --rates {','.join(str(x) for x in a['rates'])} --idle {a['idle']}`.",
        "",
        f"## {a['clients']} SSE clients, 50 changes/s (one row per transaction), {a['seconds']} s per round",
        "",
        "| round | deliveries/s | clients with every change | order errors | commit→client p50 | p99 | "
        "baseline commit→handler p50 | p99 | handler→client p50 | p99 | server CPU | server peak RSS | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(r["steady"], 1):
        c, b, f = s["client"] or {}, s["baseline_handler"] or {}, s["handler_to_client"] or {}
        lines.append(
            f"| {i} | {s['deliveries_per_s']:,} | {s['clients_complete']}/{s['clients']} | {s['order_errors']} | "
            f"{c.get('p50_ms')} ms | **{c.get('p99_ms')} ms** | {b.get('p50_ms')} ms | {b.get('p99_ms')} ms | "
            f"{f.get('p50_ms')} ms | {f.get('p99_ms')} ms | "
            f"{s['server_cpu_percent']} % | {s['server_peak_rss_mb']} MB | {s['load_average']:.1f} |"
        )
    if r["steady"]:
        p99 = [s["client"]["p99_ms"] for s in r["steady"] if s["client"]]
        ratio = [s["client"]["p99_ms"] / s["baseline_handler"]["p99_ms"] for s in r["steady"]
                 if s["client"] and s["baseline_handler"]]  # fmt: skip
        lines += ["", f"Median p99 commit→client: **{statistics.median(p99)} ms** (floor: < 250 ms); median ratio "
                  f"to the same run's commit→handler p99: {round(statistics.median(ratio), 2) if ratio else '-'}."]
    lines += ["", "## Rising rates (the same clients)", "",
              "| changes/s | deliveries/s | clients with every change | commit→client p50 | p99 | handler→client p99 | "
              "server CPU |", "|---|---|---|---|---|---|---|"]
    for s in r["rates"]:
        c, f = s["client"] or {}, s["handler_to_client"] or {}
        lines.append(f"| {s['rate']:g} | {s['deliveries_per_s']:,} | {s['clients_complete']}/{s['clients']} | "
                     f"{c.get('p50_ms')} ms | {c.get('p99_ms')} ms | {f.get('p99_ms')} ms | "
                     f"{s['server_cpu_percent']} % |")
    ok250 = [s["rate"] for s in r["rates"] if kept_up(s, 250)]
    ok1000 = [s["rate"] for s in r["rates"] if kept_up(s, 1000)]
    lines += ["", f"Highest rate tried at which every client kept up: {max(ok250, default='none')} changes/s with "
              f"p99 < 250 ms; {max(ok1000, default='none')} changes/s with p99 < 1 s."]
    if r["idle"]:
        i = r["idle"]
        lines += ["", f"## {i['clients']:,} idle SSE clients", "",
                  f"Server RSS {i['rss_before_mb']} MB before, {i['rss_after_mb']} MB after: "
                  f"**{i['kb_per_client']} kB per idle client**."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode")
    s = sub.add_parser("serve")
    s.add_argument("--dsn", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--out", required=True)
    c = sub.add_parser("clients")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--n", type=int, required=True)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rates", type=lambda t: [float(x) for x in t.split(",")], default=[100, 200, 400, 800, 1600])
    parser.add_argument("--rate-seconds", type=float, default=10.0)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--name", default="feed")
    args = parser.parse_args()
    if args.mode == "serve":
        serve(args)
    elif args.mode == "clients":
        asyncio.run(run_clients(args))
    else:
        conduct(args)


if __name__ == "__main__":
    main()
