"""What the benchmark writes: the row, one big transaction, single-row transactions, a steady stamped stream.

Every row has the six columns of the reference run (bigint key, text, int, numeric, timestamptz, jsonb); the
jsonb holds ``t``, the epoch seconds of ``clock_timestamp()`` at the insert, which latency runs subtract from
the consumer's clock on arrival (the stamp is taken before COMMIT, so latency includes the commit itself).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg

ROW = (
    "'item ' || g, mod(g, 1000)::int, (mod(g, 100000) / 100.0)::numeric(12,2), now(), "
    "jsonb_build_object('t', extract(epoch FROM clock_timestamp()), 'g', g, 'tags', jsonb_build_array('a', 'b'), "
    "'note', 'benchmark row')"
)
INSERT_ONE = (
    "INSERT INTO {table} (name, qty, price, at, payload) VALUES (%s, %s, %s, clock_timestamp(), "
    "jsonb_build_object('t', extract(epoch FROM clock_timestamp()), 'g', %s, 'tags', jsonb_build_array('a', 'b'), "
    "'note', 'benchmark row'))"
)
MIXED_CONNECTIONS = 4


def write_bulk(dsn: str, table: str, total: int, per_txn: int) -> float:
    """``total`` rows into ``table`` in transactions of ``per_txn``; returns when the first COMMIT began."""
    first_commit = 0.0
    with psycopg.connect(dsn) as conn:
        for start in range(0, total, per_txn):
            conn.execute(
                f"INSERT INTO {table} (name, qty, price, at, payload) SELECT {ROW} "
                "FROM generate_series(%s::bigint, %s::bigint) g",
                (start + 1, min(total, start + per_txn)),
            )
            first_commit = first_commit or time.time()
            conn.commit()
    return first_commit


def mixed_base_rows(txns: int) -> int:
    """Rows the mixed workload needs in place: 20 % of its transactions delete one each, from half of them."""
    step = 2 * MIXED_CONNECTIONS
    return -(-(txns * 2 // 5) // step) * step


def prepare_mixed(dsn: str, txns: int) -> None:
    """The rows that ``write_mixed`` updates and deletes (written before the slots exist: nobody sees them)."""
    rows = mixed_base_rows(txns)
    write_bulk(dsn, "items", rows, rows)


def write_mixed(dsn: str, txns: int) -> None:
    """``txns`` single-row transactions from 4 connections: 50 % insert, 30 % update, 20 % delete.

    Every statement changes exactly one row, so exactly ``txns`` changes are decoded.
    """
    per_conn = txns // MIXED_CONNECTIONS
    slice_size = mixed_base_rows(txns) // MIXED_CONNECTIONS
    errors: list[BaseException] = []

    def worker(c: int) -> None:
        first = c * slice_size + 1
        deletes = range(first, first + slice_size // 2)
        updates = range(first + slice_size // 2, first + slice_size)
        insert = INSERT_ONE.format(table="items")
        d = u = 0
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                for k in range(per_conn):
                    op = k % 10
                    if op < 5:
                        conn.execute(insert, (f"item {c}-{k}", k % 1000, (k % 100000) / 100, k))
                    elif op < 8:
                        conn.execute(
                            "UPDATE items SET qty = qty + 1, price = price + 0.01, at = clock_timestamp() "
                            "WHERE id = %s",
                            (updates[u % len(updates)],),
                        )
                        u += 1
                    else:
                        conn.execute("DELETE FROM items WHERE id = %s", (deletes[d],))
                        d += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(MIXED_CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def mixed_changes(txns: int) -> int:
    """How many changes ``write_mixed(txns)`` makes (a whole number per connection)."""
    return txns // MIXED_CONNECTIONS * MIXED_CONNECTIONS


def steady_writer(dsn: str, table: str, rate: float, count: int) -> threading.Thread:
    """A started thread inserting ``count`` stamped single-row transactions into ``table`` at ``rate``/s."""

    def run() -> None:
        insert = INSERT_ONE.format(table=table)
        with psycopg.connect(dsn, autocommit=True) as conn:
            interval, next_at = 1.0 / rate, time.perf_counter()
            for i in range(count):
                conn.execute(insert, ("lat", 1, 1.0, i))
                next_at += interval
                if (delay := next_at - time.perf_counter()) > 0:
                    time.sleep(delay)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


Writer = Callable[[str], object]  # writes one workload into the database of the conninfo it is given
