"""Where the outbox's write-path cost comes from: trigger variants on single-row INSERT transactions.

    .venv/bin/python -m bench.outbox_trigger_variants [--bursts 25] [--rounds 6] [--seconds 6]

Two measures, both against the same table without capture, measured in the same run:

1. **server time per transaction**: a procedure commits single-row INSERTs one by one (no client, no network,
   ``synchronous_commit = off`` so that only CPU is timed); bursts of every variant are interleaved and the
   median burst per variant is taken. This is the quiet measure: it shows microseconds a variant adds.
2. **pgbench at 8 clients**, fsync on: each round runs every variant once in a rotated order; a variant's
   figure is the median over rounds of its TPS divided by the TPS without capture in the same round (this
   2-core machine swings by ±0.1 between rounds, so single runs mean little).

Variants:

- plain: no trigger;
- empty: a plpgsql row trigger that does nothing (``RETURN NULL``): what any row trigger costs;
- keyless: a plpgsql row trigger inserting ``to_json(NEW)`` into a one-column table with no key, no index and
  no sequence: the least an outbox row can cost (it gives up ordering and a way to find events);
- simplest: a plpgsql row trigger inserting ``to_json(NEW)`` into its own bigserial table (a ceiling for any
  trigger-based capture);
- events: the same INSERT into ``pgchanges.events`` (its defaults: id, xid, created_at), SECURITY DEFINER;
- version8: pgchanges' triggers of schema version 8 (one row function branching on the operation, and a
  statement trigger that queries ``pgchanges.sleepers``), rebuilt here for comparison;
- pgchanges: what ``pgchanges install --source outbox`` creates now (the events INSERT plus one read of the
  ``pgchanges.sleep_until`` sequence).
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg

from bench.common import bench_database, pgbench_tps, trigger_outbox_sql, write_results
from pgchanges.capture import install as capture
from pgchanges.names import TableName

SETUP = (
    """
CREATE TABLE plain (id bigserial PRIMARY KEY, v text);
CREATE TABLE empty (id bigserial PRIMARY KEY, v text);
CREATE FUNCTION empty_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER t AFTER INSERT ON empty FOR EACH ROW EXECUTE FUNCTION empty_trigger();
CREATE TABLE events (id bigserial PRIMARY KEY, v text);
CREATE TABLE version8 (id bigserial PRIMARY KEY, v text);
CREATE TABLE pgchanges (id bigserial PRIMARY KEY, v text);
"""
    + trigger_outbox_sql("keyless", keyed=False)
    + trigger_outbox_sql("simplest", keyed=True)
)
AFTER_INSTALL = """
CREATE FUNCTION events_trigger() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO pgchanges.events (table_oid, op, new_row) VALUES (TG_RELID, 'insert', pg_catalog.to_json(NEW));
    RETURN NULL;
END $$;
CREATE TRIGGER t AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION events_trigger();

CREATE FUNCTION version8_row() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF TG_LEVEL OPERATOR(pg_catalog.=) 'STATEMENT' THEN
        INSERT INTO pgchanges.events (table_oid, op) VALUES (TG_RELID, 'truncate');
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        INSERT INTO pgchanges.events (table_oid, op, new_row) VALUES (TG_RELID, 'insert', pg_catalog.to_json(NEW));
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
        INSERT INTO pgchanges.events (table_oid, op, new_row, old_row)
        VALUES (TG_RELID, 'update', pg_catalog.to_json(NEW), pg_catalog.to_json(OLD));
    ELSE
        INSERT INTO pgchanges.events (table_oid, op, old_row) VALUES (TG_RELID, 'delete', pg_catalog.to_json(OLD));
    END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION version8_wake() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    PERFORM 1 FROM pgchanges.sleepers LIMIT 1;
    IF FOUND THEN
        PERFORM pg_catalog.pg_notify('pgchanges:outbox', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER t AFTER INSERT OR UPDATE OR DELETE ON version8 FOR EACH ROW EXECUTE FUNCTION version8_row();
CREATE TRIGGER w AFTER INSERT OR UPDATE OR DELETE ON version8 FOR EACH STATEMENT EXECUTE FUNCTION version8_wake();

CREATE PROCEDURE burst(t regclass, n integer) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. n LOOP
        EXECUTE format('INSERT INTO %s (v) VALUES (''row'')', t);
        COMMIT;
    END LOOP;
END $$;
"""
VARIANTS = ("plain", "empty", "keyless", "simplest", "events", "version8", "pgchanges")


def rotated(rnd: int) -> tuple[str, ...]:
    k = rnd % len(VARIANTS)
    return VARIANTS[k:] + VARIANTS[:k]


def server_time_per_transaction(conninfo: str, bursts: int, rows: int) -> dict[str, float]:
    """Median µs per single-row INSERT transaction, server side, interleaved bursts per variant."""
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        for variant in VARIANTS:  # warm caches and plans
            conn.execute("CALL burst(%s, 500)", (variant,))
        for rnd in range(bursts):
            for variant in rotated(rnd):
                start = time.perf_counter()
                conn.execute("CALL burst(%s, %s)", (variant, rows))
                times[variant].append((time.perf_counter() - start) / rows * 1e6)
    return {v: statistics.median(t) for v, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bursts", type=int, default=25)
    parser.add_argument("--burst-rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with bench_database() as (cluster, conninfo):
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(SETUP)
            capture.install(conn, [TableName("public", "pgchanges")], "outbox")
            conn.execute(AFTER_INSTALL)
        micros = server_time_per_transaction(conninfo, args.bursts, args.burst_rows)
        print("server µs per transaction: " + ", ".join(f"{v} {micros[v]:.1f}" for v in VARIANTS), flush=True)
        for rnd in range(args.rounds):
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute("CHECKPOINT")
            tps = {
                v: pgbench_tps(cluster, "bench", f"INSERT INTO {v} (v) VALUES ('row');\n", args.clients, args.seconds)
                for v in rotated(rnd)
            }
            for variant in VARIANTS:
                ratios[variant].append(tps[variant] / tps["plain"])
            print(f"round {rnd}: " + ", ".join(f"{v} {tps[v] / tps['plain']:.3f}" for v in VARIANTS), flush=True)
        version = cluster.version

    median_ratio = {v: round(statistics.median(r), 3) for v, r in ratios.items()}
    rows = "\n".join(
        f"| {v} | {micros[v]:.1f} | +{micros[v] - micros['plain']:.1f} | {median_ratio[v]:.3f} |" for v in VARIANTS
    )
    markdown = f"""# Where the outbox's write-path cost comes from

PostgreSQL {version}, 2 CPUs, single-row INSERT transactions. Reproduce:
`.venv/bin/python -m bench.outbox_trigger_variants`. Server time: median of {args.bursts} interleaved bursts
of {args.burst_rows} transactions committed by a procedure (`synchronous_commit = off`). pgbench:
{args.clients} clients, fsync on, {args.rounds} rounds of {args.seconds} s, every variant in each round in a
rotated order, median of per-round ratios to no capture.

| variant | server µs per transaction | added by capture | pgbench TPS vs no capture |
|---|---|---|---|
{rows}

Variants:
- `plain`: no trigger;
- `empty`: a plpgsql row trigger that does nothing (what any row trigger costs);
- `keyless`: a row trigger inserting `to_json(NEW)` into a one-column table with no key, index or sequence (the
  least an outbox row can cost; it gives up ordering and any way to find new events);
- `simplest`: a plpgsql row trigger inserting `to_json(NEW)` into its own bigserial table (the outbox that
  DESIGN §5 measured);
- `events`: the same INSERT into `pgchanges.events`, SECURITY DEFINER;
- `version8`: pgchanges' triggers of schema version 8 (a row function branching on the operation and a wake-up
  statement trigger);
- `pgchanges`: the triggers installed now (schema version 9: one function per operation that also reads the
  `pgchanges.sleep_until` sequence).

pgbench rounds (ratio to plain):
{chr(10).join(f"- {v}: " + ", ".join(f"{r:.3f}" for r in ratios[v]) for v in VARIANTS)}
"""
    write_results(
        "outbox-trigger-variants",
        {"server_us_per_transaction": micros, "pgbench_ratio_rounds": ratios, "pgbench_ratio": median_ratio},
        markdown,
    )
    print(markdown)


if __name__ == "__main__":
    main()
