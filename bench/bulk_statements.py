"""What outbox capture costs multi-row statements: row triggers against statement triggers with transition tables.

    .venv/bin/python -m bench.bulk_statements [--rounds 7] [--rows 10000] [--small 2000]

Every variant is a copy of one table (bigint key, text, int, numeric(12,2), timestamptz, jsonb: the columns of
the peers' benchmark) with a different capture, all in one database of one durable cluster:

- ``none``: no capture (the baseline of each round);
- ``row``: one plpgsql row trigger per operation inserting ``to_json(NEW)`` into ``pgchanges.events`` (the
  triggers of schema versions 9 and 10, rebuilt here under their own names);
- ``statement``: one statement trigger per operation with a transition table (``REFERENCING NEW TABLE``)
  inserting every row of the statement into ``pgchanges.events`` in one ``INSERT … SELECT``; an UPDATE pairs
  its old and new rows by their position in the two transition tables (two arrays unnested side by side: a
  join on row numbers is planned once per session, so a plan made for one row is kept for 10,000);
- ``pgchanges``: what ``pgchanges install --source outbox`` creates in this version.

Workloads, each timed from the client with ``synchronous_commit = off`` (the commit's fsync is the same for
every variant and would only blur the trigger's cost): an ``INSERT … SELECT`` of ``--rows`` rows, an
``UPDATE`` of all of them, a ``DELETE`` of all of them (each one statement in one transaction), and
bursts of ``--small`` single-row INSERT, UPDATE and DELETE transactions committed one by one by a procedure
(where a statement trigger pays its set-up for one row). Each round runs every variant in a rotated order, the
bursts of the variants are interleaved; a variant's figure is the median over rounds (bursts) of its time
divided by the time of ``none`` in the same round (burst).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import psycopg

from bench.common import bench_database, machine, write_results
from pgchanges.capture import install as capture
from pgchanges.names import TableName

COLUMNS = "id bigint PRIMARY KEY, name text, qty int, price numeric(12,2), at timestamptz, payload jsonb"
ROW = (
    "g, 'item ' || g, mod(g, 1000)::int, (mod(g, 100000) / 100.0)::numeric(12,2), now(), "
    "jsonb_build_object('g', g, 'tags', jsonb_build_array('a', 'b'), 'note', 'benchmark row')"
)
VARIANTS = ("none", "row", "statement", "pgchanges")
WAKE = """
    IF pg_catalog.pg_sequence_last_value('pgchanges.sleep_until'::pg_catalog.regclass)
       OPERATOR(pg_catalog.>) pg_catalog.date_part('epoch', pg_catalog.now()) THEN
        PERFORM pg_catalog.pg_notify('pgchanges:outbox', '');
    END IF;"""

ROW_TRIGGERS = f"""
CREATE FUNCTION bench_row_insert() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO pgchanges.events (table_oid, op, new_row) VALUES (TG_RELID, 'insert', pg_catalog.to_json(NEW));{WAKE}
    RETURN NULL;
END $fn$;
CREATE FUNCTION bench_row_update() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO pgchanges.events (table_oid, op, new_row, old_row)
    VALUES (TG_RELID, 'update', pg_catalog.to_json(NEW), pg_catalog.to_json(OLD));{WAKE}
    RETURN NULL;
END $fn$;
CREATE FUNCTION bench_row_delete() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO pgchanges.events (table_oid, op, old_row) VALUES (TG_RELID, 'delete', pg_catalog.to_json(OLD));{WAKE}
    RETURN NULL;
END $fn$;
CREATE TRIGGER i AFTER INSERT ON t_row FOR EACH ROW EXECUTE FUNCTION bench_row_insert();
CREATE TRIGGER u AFTER UPDATE ON t_row FOR EACH ROW EXECUTE FUNCTION bench_row_update();
CREATE TRIGGER d AFTER DELETE ON t_row FOR EACH ROW EXECUTE FUNCTION bench_row_delete();
"""

STATEMENT_TRIGGERS = f"""
CREATE FUNCTION bench_statement_insert() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO pgchanges.events (table_oid, op, new_row)
    SELECT TG_RELID, 'insert', pg_catalog.to_json(n) FROM pgchanges_new n;
    IF FOUND THEN{WAKE}
    END IF;
    RETURN NULL;
END $fn$;
CREATE FUNCTION bench_statement_update() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO pgchanges.events (table_oid, op, new_row, old_row)
    SELECT TG_RELID, 'update', u.n, u.o
    FROM ROWS FROM (pg_catalog.unnest(ARRAY(SELECT pg_catalog.to_json(n) FROM pgchanges_new n)),
                    pg_catalog.unnest(ARRAY(SELECT pg_catalog.to_json(o) FROM pgchanges_old o))) AS u(n, o);
    IF FOUND THEN{WAKE}
    END IF;
    RETURN NULL;
END $fn$;
CREATE FUNCTION bench_statement_delete() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    INSERT INTO pgchanges.events (table_oid, op, old_row)
    SELECT TG_RELID, 'delete', pg_catalog.to_json(o) FROM pgchanges_old o;
    IF FOUND THEN{WAKE}
    END IF;
    RETURN NULL;
END $fn$;
CREATE TRIGGER i AFTER INSERT ON t_statement REFERENCING NEW TABLE AS pgchanges_new
    FOR EACH STATEMENT EXECUTE FUNCTION bench_statement_insert();
CREATE TRIGGER u AFTER UPDATE ON t_statement REFERENCING OLD TABLE AS pgchanges_old NEW TABLE AS pgchanges_new
    FOR EACH STATEMENT EXECUTE FUNCTION bench_statement_update();
CREATE TRIGGER d AFTER DELETE ON t_statement REFERENCING OLD TABLE AS pgchanges_old
    FOR EACH STATEMENT EXECUTE FUNCTION bench_statement_delete();
"""

PROCEDURES = """
CREATE PROCEDURE small(t regclass, op text, n integer) LANGUAGE plpgsql AS $$
BEGIN
    FOR g IN 1 .. n LOOP
        IF op = 'insert' THEN
            EXECUTE format('INSERT INTO %s SELECT $row$ FROM (SELECT $1::bigint AS g) s', t) USING g;
        ELSIF op = 'update' THEN
            EXECUTE format('UPDATE %s SET qty = qty + 1 WHERE id = $1', t) USING g;
        ELSE
            EXECUTE format('DELETE FROM %s WHERE id = $1', t) USING g;
        END IF;
        COMMIT;
    END LOOP;
END $$;
"""

OPS = ("insert", "update", "delete")
WORKLOADS = (*OPS, *(f"small {op}" for op in OPS))


def rotated(rnd: int) -> tuple[str, ...]:
    k = rnd % len(VARIANTS)
    return VARIANTS[k:] + VARIANTS[:k]


def timed(conn: psycopg.Connection[Any], statement: str, params: tuple[Any, ...] = ()) -> float:
    start = time.perf_counter()
    conn.execute(statement, params)
    return time.perf_counter() - start


def bulk_round(conn: psycopg.Connection[Any], variant: str, rows: int) -> dict[str, float]:
    """Seconds of each bulk statement on ``t_{variant}``."""
    t = f"t_{variant}"
    conn.execute("TRUNCATE pgchanges.events")
    conn.execute(f"TRUNCATE {t}")
    return {
        "insert": timed(conn, f"INSERT INTO {t} SELECT {ROW} FROM generate_series(1, %s) g", (rows,)),
        "update": timed(conn, f"UPDATE {t} SET qty = qty + 1"),
        "delete": timed(conn, f"DELETE FROM {t}"),
    }


def small_bursts(conn: psycopg.Connection[Any], bursts: int, size: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per burst of ``size`` single-row transactions, bursts of every variant interleaved (a load spike
    of the shared machine then hits every variant alike, and the median leaves it out)."""
    times: dict[str, dict[str, list[float]]] = {v: {f"small {op}": [] for op in OPS} for v in VARIANTS}
    for burst in range(bursts):
        for variant in rotated(burst):
            conn.execute(f"TRUNCATE t_{variant}")
            for op in OPS:
                times[variant][f"small {op}"].append(timed(conn, "CALL small(%s, %s, %s)", (f"t_{variant}", op, size)))
        conn.execute("TRUNCATE pgchanges.events")
    return times


def check_events(conn: psycopg.Connection[Any], rows: int) -> None:
    """Every variant that captures wrote one event per row and operation, updates with both rows."""
    for variant in ("row", "statement", "pgchanges"):
        conn.execute("TRUNCATE pgchanges.events")
        conn.execute(f"INSERT INTO t_{variant} SELECT {ROW} FROM generate_series(1, %s) g", (rows,))
        conn.execute(f"UPDATE t_{variant} SET qty = -qty")
        conn.execute(f"DELETE FROM t_{variant}")
        bad = conn.execute(
            """SELECT count(*) FILTER (WHERE op = 'update' AND (new_row->>'id' <> old_row->>'id'
                                         OR (new_row->>'qty')::int <> -(old_row->>'qty')::int)),
                      count(*) FILTER (WHERE op = 'insert'), count(*) FILTER (WHERE op = 'delete')
               FROM pgchanges.events"""
        ).fetchone()
        assert bad == (0, rows, rows), f"{variant}: {bad}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=200, help="single-row transactions per burst")
    parser.add_argument("--bursts", type=int, default=30)
    args = parser.parse_args()
    seconds: dict[str, dict[str, list[float]]] = {v: {w: [] for w in WORKLOADS} for v in VARIANTS}
    with bench_database() as (cluster, conninfo):
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for variant in VARIANTS:
                conn.execute(f"CREATE TABLE t_{variant} ({COLUMNS})")
            capture.install(conn, [TableName("public", "t_pgchanges")], "outbox")
            conn.execute(ROW_TRIGGERS)
            conn.execute(STATEMENT_TRIGGERS)
            conn.execute(PROCEDURES.replace("$row$", ROW.replace("'", "''")))
            conn.execute("SET synchronous_commit = off")
            check_events(conn, 1000)
            for variant in VARIANTS:  # warm plans and caches
                bulk_round(conn, variant, 1000)
            small_bursts(conn, 1, 100)
            for rnd in range(args.rounds):
                conn.execute("CHECKPOINT")
                for variant in rotated(rnd):
                    for workload, s in bulk_round(conn, variant, args.rows).items():
                        seconds[variant][workload].append(s)
                print(f"round {rnd} done", flush=True)
            for variant, by_workload in small_bursts(conn, args.bursts, args.small).items():
                seconds[variant].update(by_workload)
        version = cluster.version
    report(seconds, args, version)


DECISION = """
What this decided (issue 15, deliverable 4): pgchanges keeps its row triggers. Statement triggers with transition
tables cost a multi-row statement a third to a half less (one `INSERT … SELECT` per statement instead of one
trigger call and one `INSERT` per row), but every single-row statement more (the transition table and a larger
plan per statement, for one row), and single-row transactions are the outbox's common case: the write path of
schema version 9 was tuned for them. Tables written mostly by bulk statements would gain; a per-table choice
(a capture rule's option that installs the statement triggers above instead) is left as a follow-up.

Two things the statement variant must do that a row trigger gets for free: pair an UPDATE's old and new rows
(by position in the two transition tables, which PostgreSQL fills in the same order), and stay linear: a join
of the two tables on row numbers is planned once per session with the first statement's row count, so a plan
made for one row was kept for a 10,000-row UPDATE and ran for minutes; the variant above unnests two arrays
side by side instead (no join, no plan to go wrong, but the whole statement's rows in memory at once).
"""


def report(seconds: dict[str, dict[str, list[float]]], args: argparse.Namespace, version: int) -> None:
    ratio = {
        v: {
            w: round(statistics.median(a / b for a, b in zip(s, seconds["none"][w], strict=True)), 2)
            for w, s in by_w.items()
        }
        for v, by_w in seconds.items()
    }
    median_s = {v: {w: round(statistics.median(s), 4) for w, s in by_w.items()} for v, by_w in seconds.items()}
    per_row = {w: args.rows if w in OPS else args.small for w in WORKLOADS}
    added_us = {
        v: {w: round((median_s[v][w] - median_s["none"][w]) / per_row[w] * 1e6, 2) for w in WORKLOADS} for v in VARIANTS
    }
    head = "| variant | " + " | ".join(WORKLOADS) + " |\n|---|" + "---|" * len(WORKLOADS)
    ratios = "\n".join(f"| {v} | " + " | ".join(f"{ratio[v][w]:.2f}" for w in WORKLOADS) + " |" for v in VARIANTS)
    micros = "\n".join(
        f"| {v} | " + " | ".join(f"{added_us[v][w]:+.1f}" for w in WORKLOADS) + " |" for v in VARIANTS[1:]
    )
    markdown = f"""# Outbox capture of multi-row statements: row triggers against statement triggers

PostgreSQL {version}, 2 CPUs shared with other work while it ran, `synchronous_commit = off`. Reproduce:
`.venv/bin/python -m bench.bulk_statements --rounds {args.rounds} --rows {args.rows} --bursts {args.bursts} --small {args.small}`.
Bulk workloads: one statement of {args.rows:,} rows in one transaction, {args.rounds} rounds, every variant in each
round in a rotated order. Small: {args.bursts} bursts of {args.small} single-row transactions committed by a
procedure, the bursts of every variant interleaved. Figures: the median of per-round (per-burst) ratios to the
same workload without capture (see the module docstring of `bench/bulk_statements.py` for the variants).

Time with capture ÷ time without (lower is better):

{head}
{ratios}

Microseconds added per row (median times):

{head}
{micros}
{DECISION}"""
    write_results(
        "outbox-bulk-statements",
        {"machine": machine(), "args": vars(args), "seconds": seconds, "ratio": ratio, "added_us_per_row": added_us},
        markdown,
    )
    print(markdown)


if __name__ == "__main__":
    main()
