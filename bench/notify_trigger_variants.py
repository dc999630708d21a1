"""The notify triggers against the peers' bare ``pg_notify(row_to_json(NEW))`` (issue 15, notify).

    .venv/bin/python -m bench.notify_trigger_variants [--rounds 5]   # writes bench/results/notify-trigger-variants.*

The notify floor (live, reads values, at least 0.9 of asyncpg) is bound by the writer: a live consumer cannot receive
faster than the rows are written, and the writer pays for the trigger. On a table of the peers' columns, per
trigger: its own time per row (EXPLAIN ANALYZE of 5,000 inserts, rolled back), the time to write 20,000 rows in
transactions of 1,000 (as ``bench.peers`` writes them), the time of a single-row INSERT statement (a DO loop
of 5,000, one transaction: the statement's cost alone) and of a single-row transaction committed by a client
(1,000 of them), in rotated rounds; ratios are per-round medians.

* ``installed``: what ``pgchanges install`` puts on a table now: for INSERT (and DELETE) a statement trigger
  with a transition table (``notify_rows_v3``, migration 0012);
* ``row_v2``: the row trigger of migration 0011 (``notify_row_v2``), what install put before;
* the rest are copies of ``notify_row_v2`` with one thing changed, the search that led to the statement
  triggers: ``copy`` (another name only: the noise floor), ``names_as_arguments`` (schema and table as a JSON
  fragment made when the trigger is created, instead of two ``to_json(name)`` per row), ``… no_sequence``
  (also without ``nextval``, the event id), ``… no_xid`` (also without ``pg_current_xact_id()``),
  ``explicit_casts``, ``no_security_definer``, ``no_spill_check`` and ``lean`` (names as arguments, neither
  SECURITY DEFINER nor the spill check).

Updates and deletes: the same timings for ``installed`` (UPDATE keeps the row trigger, DELETE has a statement
trigger) and ``row_v2`` with triggers on every event, against no trigger.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import psycopg

from bench.common import bench_database, machine, write_results
from bench.notify_bench import PEER_COLUMNS, PEER_ROW, PER_TXN, trigger_us_per_row, write_rows
from pgchanges.capture import install as capture
from pgchanges.names import TableName

CAT = "OPERATOR(pg_catalog.||)"
NAMES = f"""',"s":' {CAT} pg_catalog.to_json(TG_TABLE_SCHEMA) {CAT} ',"t":' {CAT} pg_catalog.to_json(TG_TABLE_NAME)"""


def variant(
    name: str,
    *,
    names: str = NAMES,
    event_id: str = "",
    xid: bool = True,
    cast: str = "",
    definer: str = "SECURITY DEFINER",
    spill_check: bool = True,
) -> str:
    """notify_row_v2 (capture/sql/0011_notify_payload_v2.sql) with the pieces given; spilling left out."""
    event_id = event_id or "pg_catalog.nextval('pgchanges.event_seq'::pg_catalog.regclass)"
    xid_piece = f"""{CAT} ',"x":' {CAT} pg_catalog.pg_current_xact_id(){cast}""" if xid else ""
    rows = {
        op: f"pg_catalog.to_json({op})::pg_catalog.text" if cast else f"pg_catalog.to_json({op})"
        for op in ("NEW", "OLD")
    }
    channel = "TG_ARGV[1]" if names == "TG_ARGV[0]" else "TG_ARGV[0]"
    relid = "TG_RELID::pg_catalog.int8::pg_catalog.text" if cast else "TG_RELID"
    return f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql {definer} AS $fn$
DECLARE
    payload pg_catalog.text := '{{"v":2,"id":' {CAT} {event_id}{cast} {CAT} ',"r":' {CAT} {relid} {xid_piece}
        {CAT} {names} {CAT} CASE
            WHEN TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN ',"op":"insert","n":' {CAT} {rows["NEW"]}
            WHEN TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN ',"op":"delete","o":' {CAT} {rows["OLD"]}
            ELSE ',"op":"update","n":' {CAT} {rows["NEW"]} {CAT} ',"o":' {CAT} {rows["OLD"]}
        END {CAT} '}}';
BEGIN{SPILL_CHECK if spill_check else ""}
    PERFORM pg_catalog.pg_notify({channel}, payload);
    RETURN NULL;
END
$fn$;"""


SPILL_CHECK = """
    IF pg_catalog.octet_length(payload) OPERATOR(pg_catalog.>=) 8000 THEN
        RAISE 'a spill: not measured here';
    END IF;"""

PEER = """CREATE FUNCTION peer_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('peer', row_to_json(NEW)::text); RETURN NULL; END $$;"""


def variants() -> dict[str, tuple[str, str]]:
    """table -> (CREATE FUNCTION, the trigger's function call)."""

    def fragment(table: str) -> str:
        return f"""',"s":"public","t":"{table}"'"""

    return {
        "peer": (PEER, "peer_notify()"),
        "row_v2": ("", "pgchanges.notify_row_v2('c')"),
        "copy": (variant("v_copy"), "v_copy('c')"),
        "names_as_arguments": (variant("v_args", names="TG_ARGV[0]"), f"v_args({fragment('names_as_arguments')}, 'c')"),
        "names_as_arguments_no_sequence": (
            variant("v_noseq", names="TG_ARGV[0]", event_id="'1'"),
            f"v_noseq({fragment('names_as_arguments_no_sequence')}, 'c')",
        ),
        "names_as_arguments_no_xid": (
            variant("v_noxid", names="TG_ARGV[0]", xid=False),
            f"v_noxid({fragment('names_as_arguments_no_xid')}, 'c')",
        ),
        "explicit_casts": (variant("v_cast", cast="::pg_catalog.text"), "v_cast('c')"),
        "no_security_definer": (variant("v_invoker", definer=""), "v_invoker('c')"),
        "no_spill_check": (variant("v_nocheck", spill_check=False), "v_nocheck('c')"),
        "lean": (
            variant("v_lean", names="TG_ARGV[0]", definer="", spill_check=False),
            f"v_lean({fragment('lean')}, 'c')",
        ),
    }


def write_single_rows(conninfo: str, table: str, n: int) -> float:
    """Microseconds per statement of ``n`` single-row INSERT statements in one transaction (a DO loop)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        start = time.perf_counter()
        conn.execute(
            f"DO $$ BEGIN FOR g IN 1..{n} LOOP INSERT INTO {table} (name, qty, price, at, payload) "
            f"SELECT {PEER_ROW}; END LOOP; END $$"
        )
        return (time.perf_counter() - start) / n * 1e6


EVERY_EVENT = ["none_every_event", "installed_every_event", "row_v2_every_event"]


def write_single_transactions(conninfo: str, table: str, n: int) -> float:
    """Microseconds per transaction of ``n`` single-row INSERT transactions, each committed by the client."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        statement = f"INSERT INTO {table} (name, qty, price, at, payload) SELECT {PEER_ROW} FROM (SELECT %s::bigint g) s"
        start = time.perf_counter()
        for g in range(n):
            conn.execute(statement, (g,))
        return (time.perf_counter() - start) / n * 1e6


def update_and_delete(conninfo: str, table: str, n: int) -> dict[str, float]:
    """Seconds to update ``n`` rows in statements (and transactions) of PER_TXN rows; microseconds per single-row
    UPDATE statement (a DO loop over a quarter of them, one transaction); seconds to delete the ``n`` rows as the
    update went."""
    write_rows(conninfo, table, n)  # not timed
    timed: dict[str, float] = {}
    with psycopg.connect(conninfo) as conn:
        first = conn.execute(f"SELECT min(id) FROM {table}").fetchone()[0]  # type: ignore[index]

        def in_statements(statement: str) -> float:
            start = time.perf_counter()
            for low in range(first, first + n, PER_TXN):
                conn.execute(statement, (low, low + PER_TXN - 1))
                conn.commit()
            return time.perf_counter() - start

        timed["update_s"] = in_statements(f"UPDATE {table} SET qty = qty + 1 WHERE id BETWEEN %s AND %s")
        start = time.perf_counter()
        conn.execute(
            f"DO $$ BEGIN FOR g IN {first}..{first + n // 4 - 1} LOOP "
            f"UPDATE {table} SET qty = qty + 1 WHERE id = g; END LOOP; END $$"
        )
        conn.commit()
        timed["single_update_us"] = (time.perf_counter() - start) / (n // 4) * 1e6
        timed["delete_s"] = in_statements(f"DELETE FROM {table} WHERE id BETWEEN %s AND %s")
    return timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    made = variants()
    tables = ["none", "installed", *made]
    figures: dict[tuple[str, str], list[float]] = {}
    with bench_database() as (cluster, conninfo):
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for table in tables:
                conn.execute(f"CREATE TABLE {table} ({PEER_COLUMNS})")
            capture.install(conn, [TableName("public", "installed")])
            for table, (create, call) in made.items():
                if create:
                    conn.execute(create)
                conn.execute(f"CREATE TRIGGER x AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {call}")
            for table in EVERY_EVENT:
                conn.execute(f"CREATE TABLE {table} ({PEER_COLUMNS})")
            capture.install(conn, [TableName("public", "installed_every_event")])
            conn.execute(
                "CREATE TRIGGER x AFTER INSERT OR UPDATE OR DELETE ON row_v2_every_event "
                "FOR EACH ROW EXECUTE FUNCTION pgchanges.notify_row_v2('c')"
            )
        for rnd in range(args.rounds):
            for table in tables[rnd % len(tables) :] + tables[: rnd % len(tables)]:
                if table != "none":
                    figures.setdefault(("us", table), []).append(trigger_us_per_row(conninfo, table))
                figures.setdefault(("s", table), []).append(write_rows(conninfo, table, args.rows))
                figures.setdefault(("single", table), []).append(write_single_rows(conninfo, table, args.rows // 4))
                figures.setdefault(("txn", table), []).append(write_single_transactions(conninfo, table, args.rows // 20))
            for table in EVERY_EVENT[rnd % 3 :] + EVERY_EVENT[: rnd % 3]:
                for measure, value in update_and_delete(conninfo, table, args.rows).items():
                    figures.setdefault((measure, table), []).append(value)
            print("round", rnd, flush=True)
        version = cluster.version
    report(tables, figures, args, version)


def report(tables: list[str], figures: dict[tuple[str, str], list[float]], args: Any, version: str) -> None:
    peer = figures[("s", "peer")]
    rows = []
    data: dict[str, Any] = {"benchmark": "notify-trigger-variants", "postgres": version, "machine": machine(),
                            "rounds": args.rounds, "rows": args.rows, "variants": {}}  # fmt: skip
    for table in tables:
        us = statistics.median(figures[("us", table)]) if ("us", table) in figures else 0.0
        seconds = figures[("s", table)]
        ratio = statistics.median(a / b for a, b in zip(seconds, peer, strict=True))
        single = figures[("single", table)]
        single_ratio = statistics.median(a / b for a, b in zip(single, figures[("single", "peer")], strict=True))
        txn = figures[("txn", table)]
        txn_ratio = statistics.median(a / b for a, b in zip(txn, figures[("txn", "peer")], strict=True))
        data["variants"][table] = {"trigger_us_per_row": round(us, 2), "writer_s": round(statistics.median(seconds), 3),
                                   "writer_ratio_to_peer": round(ratio, 3),
                                   "single_row_statement_us": round(statistics.median(single), 2),
                                   "single_row_ratio_to_peer": round(single_ratio, 3),
                                   "single_row_transaction_us": round(statistics.median(txn), 1),
                                   "single_row_transaction_ratio_to_peer": round(txn_ratio, 3)}  # fmt: skip
        rows.append(
            f"| {table} | {us:.2f} | {statistics.median(seconds):.3f} | {ratio:.3f} "
            f"| {statistics.median(single):.1f} | {single_ratio:.3f} | {statistics.median(txn):.0f} | {txn_ratio:.3f} |"
        )
    ops = []
    for table in EVERY_EVENT:
        medians = {m: statistics.median(figures[(m, table)]) for m in ("update_s", "single_update_us", "delete_s")}
        data.setdefault("every_event", {})[table] = {m: round(v, 3) for m, v in medians.items()}
        ops.append(f"| {table.removesuffix('_every_event')} | {medians['update_s']:.3f} | "
                   f"{medians['single_update_us']:.1f} | {medians['delete_s']:.3f} |")  # fmt: skip
    markdown = f"""# Notify trigger variants

PostgreSQL {version}, fsync on, {data["machine"]["cpus"]} CPUs. Reproduce: `.venv/bin/python -m bench.notify_trigger_variants
--rounds {args.rounds}` (the module docstring says what each variant is). {args.rows:,} rows per write, in transactions of
1,000; medians of {args.rounds} rotated rounds.

| table's trigger | trigger µs per row (EXPLAIN ANALYZE) | writer s | writer ÷ the peers' writer | single-row INSERT µs | ÷ the peers' | single-row transaction µs | ÷ the peers' |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Updates and deletes ({args.rows:,} rows, statements of 1,000 committed one by one; single-row UPDATE statements
in a DO loop), triggers on every event:

| table's triggers | UPDATE s | single-row UPDATE µs | DELETE s |
|---|---|---|---|
{chr(10).join(ops)}

What this decided (issue 15, migration 0012): the copies of the row trigger show that no single piece of its
payload (the names, the event id, the xid, the casts, SECURITY DEFINER, the spill check) closes the gap to the
peers' writer; the PL/pgSQL call per row does. A statement trigger with a transition table makes a statement's
payloads in one query, and a bulk insert then costs its writer no more than the peers' bare trigger. The
price is per statement: a single-row INSERT pays a query on the transition table where the row trigger
evaluated expressions (compare the single-row columns; in a transaction committed by a client it is lost in
the commit). For UPDATE, pairing old and new rows made that price about double a single-row UPDATE's trigger
cost (measured while choosing, with the pairing of migration 0012's comment), so UPDATE keeps the row trigger;
DELETE, like INSERT, gains on bulk statements.
"""
    write_results("notify-trigger-variants", data, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
