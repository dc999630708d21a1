"""A pgchanges consumer run by the peers benchmark in its own process (App, logical or notify source).

    pgchanges_client.py --dsn DSN --source logical|notify --table public.items [--slot S] --n N
                        --mode throughput|latency --variant noop|read --backend asyncio|trio

It imports pgchanges from ``$PYTHONPATH`` (the checkout being measured). Prints ``HELLO {json}`` (where
pgchanges was imported from), ``READY`` once the App serves (slot streaming, or LISTEN in place), then
``DONE {json}`` when the N-th change reached the handler (with the compiled modules pgchanges loaded), and idles until the harness kills it, so that the
harness can read its CPU and peak RSS first. The protocol is the one every client of ``clients/`` follows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import anyio

import pgchanges


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--source", default="logical", choices=("logical", "notify"))
    p.add_argument("--table", required=True)
    p.add_argument("--slot")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--mode", default="throughput", choices=("throughput", "latency"))
    p.add_argument("--variant", default="noop", choices=("noop", "read"))
    p.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    a = p.parse_args()
    hello = {"pgchanges": pgchanges.__file__, "version": getattr(pgchanges, "__version__", "?")}
    print("HELLO " + json.dumps(hello), flush=True)
    anyio.run(serve, a, backend=a.backend)


def say_done(seen: int, t_first: float, t_last: float, lat: list[float]) -> None:
    done = {"n": seen, "t_first": t_first, "t_last": t_last, "lat": lat, "compiled": compiled_modules()}
    sys.stdout.write("DONE " + json.dumps(done) + "\n")
    sys.stdout.flush()


def compiled_modules() -> list[str]:
    """pgchanges' modules loaded from compiled code (else their pure-Python twins ran)."""
    loaded = list(sys.modules.items())
    return sorted(n for n, m in loaded if n.startswith("pgchanges") and str(getattr(m, "__file__", "")).endswith(".so"))


async def serve(a: argparse.Namespace) -> None:
    n, latency, read = a.n, a.mode == "latency", a.variant == "read"
    options: dict[str, Any] = {"slot": a.slot} if a.source == "logical" else {}
    app = pgchanges.App(a.dsn, source=a.source, on_error="stop", **options)
    seen = 0
    t_first = 0.0
    lat: list[float] = []
    done = anyio.Event()
    now = time.time

    # one handler per variant, so that the measured one carries no branch of the others
    if latency:

        @app.on(a.table, ops="insert")
        async def stamped(change: pgchanges.Change) -> None:
            nonlocal seen
            assert change.new is not None
            lat.append(now() - float(change.new["payload"]["t"]))  # float(): some versions give Decimal here
            seen += 1
            if seen == n:
                say_done(seen, t_first, now(), lat)
                done.set()

    elif read:

        @app.on(a.table)
        async def reads_values(change: pgchanges.Change) -> None:
            nonlocal seen, t_first
            if change.new is not None:
                dict(change.new)
            if change.old is not None:
                dict(change.old)
            seen += 1
            if seen == 1:
                t_first = now()
            if seen == n:
                say_done(seen, t_first, now(), lat)
                done.set()

    else:

        @app.on(a.table)
        async def noop(change: pgchanges.Change) -> None:
            nonlocal seen, t_first
            seen += 1
            if seen == 1:
                t_first = now()
            if seen == n:
                say_done(seen, t_first, now(), lat)
                done.set()

    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        print("READY", flush=True)
        await done.wait()
        await anyio.sleep_forever()


if __name__ == "__main__":
    main()
