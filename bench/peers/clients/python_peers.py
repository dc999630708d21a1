"""The Python peers of the benchmark, one per run: what a user would write without pgchanges.

    python_peers.py --peer asyncpg|psycopg|wal2json --dsn DSN (--channel C | --slot S) --n N
                    --mode throughput|latency

* ``asyncpg``: ``conn.add_listener(channel, callback)`` and ``json.loads`` of a ``row_to_json(NEW)`` payload;
* ``psycopg``: psycopg 3 ``conn.notifies()`` and ``json.loads``;
* ``wal2json``: psycopg2's ``LogicalReplicationConnection`` on a wal2json slot (format-version 2, one JSON
  document per change), ``json.loads`` of each, ``send_feedback`` per message (psycopg2 only stores the LSN
  and sends it every ``status_interval``).

asyncpg and psycopg2 come from the peers' install directory (on ``PYTHONPATH``), not from the project's venv.
Same protocol as ``pgchanges_client.py``: ``READY``, then ``DONE {json}`` at the N-th change, then idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from typing import Any


class Counter:
    """Counts changes, stamps the first and the N-th, and collects latencies."""

    def __init__(self, n: int, latency: bool) -> None:
        self.n, self.latency = n, latency
        self.seen = 0
        self.t_first = 0.0
        self.lat: list[float] = []

    def count(self) -> bool:
        """One more change; True at the N-th (after saying DONE)."""
        self.seen += 1
        if self.seen == 1:
            self.t_first = time.time()
        if self.seen != self.n:
            return False
        done = {"n": self.seen, "t_first": self.t_first, "t_last": time.time(), "lat": self.lat}
        sys.stdout.write("DONE " + json.dumps(done) + "\n")
        sys.stdout.flush()
        return True


async def run_asyncpg(a: argparse.Namespace, counter: Counter) -> None:
    import asyncpg

    conn = await asyncpg.connect(a.dsn)
    loads, now, lat = json.loads, time.time, counter.lat

    def on_notify(connection: Any, pid: int, channel: str, payload: str) -> None:
        row = loads(payload)
        if counter.latency:
            lat.append(now() - row["payload"]["t"])
        counter.count()

    await conn.add_listener(a.channel, on_notify)
    print("READY", flush=True)
    await asyncio.Event().wait()


def run_psycopg(a: argparse.Namespace, counter: Counter) -> None:
    import psycopg
    from psycopg import sql

    conn = psycopg.connect(a.dsn, autocommit=True)
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(a.channel)))
    print("READY", flush=True)
    loads, now, lat = json.loads, time.time, counter.lat
    for note in conn.notifies():
        row = loads(note.payload)
        if counter.latency:
            lat.append(now() - row["payload"]["t"])
        if counter.count():
            threading.Event().wait()


def run_wal2json(a: argparse.Namespace, counter: Counter) -> None:
    import psycopg2
    import psycopg2.extras

    conn = psycopg2.connect(a.dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    cur = conn.cursor()
    options = {"format-version": "2", "include-transaction": "true", "add-tables": "public.items"}
    cur.start_replication(slot_name=a.slot, decode=False, options=options)
    print("READY", flush=True)
    loads, now, lat = json.loads, time.time, counter.lat

    def consume(msg: Any) -> None:
        change = loads(msg.payload)
        if change["action"] in ("I", "U", "D"):
            if counter.latency:
                cols = {c["name"]: c["value"] for c in change["columns"]}
                lat.append(now() - loads(cols["payload"])["t"])  # wal2json sends jsonb as a JSON string
            if counter.count():
                threading.Event().wait()
        msg.cursor.send_feedback(flush_lsn=msg.data_start)

    cur.consume_stream(consume)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--peer", required=True, choices=("asyncpg", "psycopg", "wal2json"))
    p.add_argument("--dsn", required=True)
    p.add_argument("--channel")
    p.add_argument("--slot")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--mode", default="throughput", choices=("throughput", "latency"))
    a = p.parse_args()
    counter = Counter(a.n, a.mode == "latency")
    if a.peer == "asyncpg":
        asyncio.run(run_asyncpg(a, counter))
    elif a.peer == "psycopg":
        run_psycopg(a, counter)
    else:
        run_wal2json(a, counter)


if __name__ == "__main__":
    main()
