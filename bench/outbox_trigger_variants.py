"""Where the outbox's write-path cost comes from: pgbench single-row INSERTs at 8 clients, trigger variants.

    .venv/bin/python -m bench.outbox_trigger_variants [--rounds 4] [--seconds 6]

Each round runs every variant once, in a rotated order; a variant's figure is the median over the rounds of
its TPS divided by the TPS without capture in the same round (this 2-core machine swings by ±0.1 between
rounds, so single runs mean little). Variants:

- plain: no trigger;
- simplest: a plpgsql row trigger inserting ``to_json(NEW)`` into its own bigserial table;
- events: the same INSERT into ``pgchanges.events`` (its defaults: xid, created_at, id);
- events_definer: the same, SECURITY DEFINER (what lets writers need no privilege on schema pgchanges);
- pgchanges_no_wake: pgchanges' own row trigger (op branches), without the wake-up statement trigger;
- pgchanges: what ``pgchanges install --source outbox`` creates.
"""

from __future__ import annotations

import argparse
import statistics

import psycopg

from bench.common import bench_database, pgbench_tps
from pgchanges.capture import install as capture
from pgchanges.names import TableName

SETUP = """
CREATE TABLE plain (id bigserial PRIMARY KEY, v text);
CREATE TABLE simplest (id bigserial PRIMARY KEY, v text);
CREATE TABLE simplest_outbox (id bigserial PRIMARY KEY, payload json);
CREATE FUNCTION simplest_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO simplest_outbox (payload) VALUES (to_json(NEW)); RETURN NULL; END $$;
CREATE TRIGGER t AFTER INSERT ON simplest FOR EACH ROW EXECUTE FUNCTION simplest_trigger();
CREATE TABLE events (id bigserial PRIMARY KEY, v text);
CREATE TABLE events_definer (id bigserial PRIMARY KEY, v text);
CREATE TABLE pgchanges_no_wake (id bigserial PRIMARY KEY, v text);
CREATE TABLE pgchanges (id bigserial PRIMARY KEY, v text);
"""
AFTER_INSTALL = """
CREATE FUNCTION events_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgchanges.events (table_oid, op, new_row) VALUES (TG_RELID, 'insert', pg_catalog.to_json(NEW));
    RETURN NULL;
END $$;
CREATE FUNCTION events_definer_trigger() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO pgchanges.events (table_oid, op, new_row) VALUES (TG_RELID, 'insert', pg_catalog.to_json(NEW));
    RETURN NULL;
END $$;
CREATE TRIGGER t AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION events_trigger();
CREATE TRIGGER t AFTER INSERT ON events_definer FOR EACH ROW EXECUTE FUNCTION events_definer_trigger();
DROP TRIGGER pgchanges_outbox_wake ON pgchanges_no_wake;
"""
VARIANTS = ("plain", "simplest", "events", "events_definer", "pgchanges_no_wake", "pgchanges")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with bench_database() as (cluster, conninfo):
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(SETUP)
            tables = [TableName("public", "pgchanges_no_wake"), TableName("public", "pgchanges")]
            capture.install(conn, tables, "outbox")
            conn.execute(AFTER_INSTALL)
        for rnd in range(args.rounds):
            order = VARIANTS[rnd % len(VARIANTS) :] + VARIANTS[: rnd % len(VARIANTS)]
            tps = {
                v: pgbench_tps(cluster, "bench", f"INSERT INTO {v} (v) VALUES ('row');\n", args.clients, args.seconds)
                for v in order
            }
            for variant in VARIANTS:
                ratios[variant].append(tps[variant] / tps["plain"])
            print(f"round {rnd}: " + ", ".join(f"{v} {tps[v] / tps['plain']:.3f}" for v in VARIANTS), flush=True)
    print(f"\n| variant | write TPS vs no capture at {args.clients} clients (median of {args.rounds} rounds) |")
    print("|---|---|")
    for variant in VARIANTS:
        print(f"| {variant} | {statistics.median(ratios[variant]):.3f} |")


if __name__ == "__main__":
    main()
