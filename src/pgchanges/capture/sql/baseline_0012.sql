-- pgchanges schema: the baseline of migration 0012.
--
-- A fresh install runs this one file instead of 0001_base.sql .. 0012_notify_statement_triggers.sql. It
-- creates the schema exactly as those twelve migrations, applied one by one, leave it (tables, columns in their order,
-- defaults, constraints, indexes, sequences, functions, the view) and records the twelve as applied, so a
-- database installed from here and one migrated from any earlier version are the same from then on.
-- tests/integration/test_baseline.py compares the catalogs of the two, so they cannot drift apart.
--
-- Never edit this file, nor a numbered migration, once it has landed. Every change to the schema is a new
-- numbered migration (0013_*.sql and on), which then applies on top of this baseline and of 0012 alike.
-- Functions carry a version suffix, so that a migration can add a new version beside the one it replaces.
--
-- The numbered migrations tell how each object came to be; the comments here say what each one is for.
-- Applied by pgchanges.capture.migrations inside one transaction, under its advisory lock. The SQL needs
-- PostgreSQL 14 or newer (CREATE OR REPLACE TRIGGER; xid8 and pg_snapshot need 13); see
-- pgchanges.db.server_version for the versions pgchanges supports.

CREATE SCHEMA IF NOT EXISTS pgchanges;

-- What has been applied: the migrations this file stands for are recorded at its end.
CREATE TABLE pgchanges.migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per captured table and source, so uninstall and status know what exists. key_columns: the
-- primary key (the ordering key of outbox events); channels: the NOTIFY channels of the notify triggers.
CREATE TABLE pgchanges.captures (
    table_oid     oid NOT NULL,
    schema_name   name NOT NULL,
    table_name    name NOT NULL,
    source        text NOT NULL,
    installed_at  timestamptz NOT NULL DEFAULT now(),
    key_columns   text[],
    channels      text[],
    PRIMARY KEY (table_oid, source)
);

-- Ids for changes captured by triggers: unique, never reused; not gapless and not commit-ordered.
CREATE SEQUENCE pgchanges.event_seq AS bigint;


-- ---------------------------------------------------------------------------------------------------------
-- The notify source
-- ---------------------------------------------------------------------------------------------------------

-- NOTIFY payloads must be shorter than 8000 bytes. Larger ones are stored here and the notification
-- carries only their id; listeners fetch them. Rows are removed by age, not on fetch, because several
-- listeners may need the same payload.
CREATE TABLE pgchanges.spill (
    id          bigint PRIMARY KEY,
    payload     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX spill_created_at ON pgchanges.spill (created_at);

-- Row trigger of the notify source: of UPDATE on a table, whose INSERT and DELETE have the statement triggers of
-- notify_rows_v3 (they write the same payloads); of every event on a partitioned table (cloned onto each
-- partition, so a statement naming a partition is signalled too). Its arguments are the channels to signal (one per matching rule). The payload is JSON, written by concatenation in one expression:
--   v: format version (2), id: event id, r: table oid, x: transaction id, s/t: schema/table, op,
--   n/o: new/old row as to_json() writes it (typed back to Python by the listener), absent when there is none.
-- Payloads of 8000 bytes or more are stored in pgchanges.spill and the notification carries only their id
-- (v, id, spill, s, t). SECURITY DEFINER so that writers need no privilege on the pgchanges schema (the event
-- sequence, the spill table); no SET clause, which would save and restore search_path on every call: every
-- function, operator, type and table is schema-qualified, so a writer's search_path redirects nothing.
CREATE FUNCTION pgchanges.notify_row_v2() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $fn$
DECLARE
    payload  pg_catalog.text := '{"v":2,"id":'
        OPERATOR(pg_catalog.||) pg_catalog.nextval('pgchanges.event_seq'::pg_catalog.regclass)
        OPERATOR(pg_catalog.||) ',"r":' OPERATOR(pg_catalog.||) TG_RELID
        OPERATOR(pg_catalog.||) ',"x":' OPERATOR(pg_catalog.||) pg_catalog.pg_current_xact_id()
        OPERATOR(pg_catalog.||) ',"s":' OPERATOR(pg_catalog.||) pg_catalog.to_json(TG_TABLE_SCHEMA)
        OPERATOR(pg_catalog.||) ',"t":' OPERATOR(pg_catalog.||) pg_catalog.to_json(TG_TABLE_NAME)
        OPERATOR(pg_catalog.||) CASE
            WHEN TG_OP OPERATOR(pg_catalog.=) 'INSERT'
                THEN ',"op":"insert","n":' OPERATOR(pg_catalog.||) pg_catalog.to_json(NEW)
            WHEN TG_OP OPERATOR(pg_catalog.=) 'DELETE'
                THEN ',"op":"delete","o":' OPERATOR(pg_catalog.||) pg_catalog.to_json(OLD)
            ELSE ',"op":"update","n":' OPERATOR(pg_catalog.||) pg_catalog.to_json(NEW)
                 OPERATOR(pg_catalog.||) ',"o":' OPERATOR(pg_catalog.||) pg_catalog.to_json(OLD)
        END OPERATOR(pg_catalog.||) '}';
    event_id  pg_catalog.int8;
BEGIN
    IF pg_catalog.octet_length(payload) OPERATOR(pg_catalog.>=) 8000 THEN
        event_id := pg_catalog.currval('pgchanges.event_seq'::pg_catalog.regclass);  -- the nextval above
        INSERT INTO pgchanges.spill (id, payload) VALUES (event_id, payload);
        payload := '{"v":2,"id":' OPERATOR(pg_catalog.||) event_id
            OPERATOR(pg_catalog.||) ',"spill":true,"s":' OPERATOR(pg_catalog.||) pg_catalog.to_json(TG_TABLE_SCHEMA)
            OPERATOR(pg_catalog.||) ',"t":' OPERATOR(pg_catalog.||) pg_catalog.to_json(TG_TABLE_NAME)
            OPERATOR(pg_catalog.||) '}';
    END IF;
    PERFORM pg_catalog.pg_notify(TG_ARGV[0], payload);
    IF TG_NARGS OPERATOR(pg_catalog.>) 1 THEN
        FOR i IN 1 .. TG_NARGS OPERATOR(pg_catalog.-) 1 LOOP
            PERFORM pg_catalog.pg_notify(TG_ARGV[i], payload);
        END LOOP;
    END IF;
    RETURN NULL;
END
$fn$;

-- TRUNCATE trigger of the notify source (same arguments): the payload of format 2 without rows.
CREATE FUNCTION pgchanges.notify_truncate_v2() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $fn$
DECLARE
    payload  pg_catalog.text := '{"v":2,"id":'
        OPERATOR(pg_catalog.||) pg_catalog.nextval('pgchanges.event_seq'::pg_catalog.regclass)
        OPERATOR(pg_catalog.||) ',"r":' OPERATOR(pg_catalog.||) TG_RELID
        OPERATOR(pg_catalog.||) ',"x":' OPERATOR(pg_catalog.||) pg_catalog.pg_current_xact_id()
        OPERATOR(pg_catalog.||) ',"s":' OPERATOR(pg_catalog.||) pg_catalog.to_json(TG_TABLE_SCHEMA)
        OPERATOR(pg_catalog.||) ',"t":' OPERATOR(pg_catalog.||) pg_catalog.to_json(TG_TABLE_NAME)
        OPERATOR(pg_catalog.||) ',"op":"truncate"}';
BEGIN
    FOR i IN 0 .. TG_NARGS OPERATOR(pg_catalog.-) 1 LOOP
        PERFORM pg_catalog.pg_notify(TG_ARGV[i], payload);
    END LOOP;
    RETURN NULL;
END
$fn$;

-- Spilled payload of the notify source, for notify_rows_v3 (payloads of 8000 bytes or more): stored in
-- pgchanges.spill, and the notification carries only its id (v, id, spill, s, t), as notify_row_v2 does. Not
-- SECURITY DEFINER, and not for PUBLIC: it runs inside notify_rows_v3, as the schema's owner; nobody else may
-- store a payload under an id of their choosing (a writer's spill of that id would then fail).
CREATE FUNCTION pgchanges.notify_spill_v3(p_payload pg_catalog.text) RETURNS pg_catalog.text
LANGUAGE plpgsql
AS $fn$
DECLARE
    fields   pg_catalog.json := p_payload::pg_catalog.json;
    event_id pg_catalog.int8 := (fields OPERATOR(pg_catalog.->>) 'id')::pg_catalog.int8;
BEGIN
    INSERT INTO pgchanges.spill (id, payload) VALUES (event_id, p_payload);
    RETURN '{"v":2,"id":' OPERATOR(pg_catalog.||) event_id
        OPERATOR(pg_catalog.||) ',"spill":true,"s":' OPERATOR(pg_catalog.||) (fields OPERATOR(pg_catalog.->) 's')
        OPERATOR(pg_catalog.||) ',"t":' OPERATOR(pg_catalog.||) (fields OPERATOR(pg_catalog.->) 't') OPERATOR(pg_catalog.||) '}';
END
$fn$;
REVOKE EXECUTE ON FUNCTION pgchanges.notify_spill_v3(pg_catalog.text) FROM PUBLIC;

-- Statement trigger of the notify source: AFTER INSERT or DELETE (one event per trigger), with the statement's
-- rows in the transition table pgchanges_new or pgchanges_old. Its arguments are the channels to signal (one
-- per matching rule). Each row's payload is made once (the OFFSET 0 fences keep nextval and the
-- spill to one evaluation per row; the channels are a LATERAL subquery of each payload) and sent to every
-- channel, in the order of the transition tables: payload format 2 as notify_row_v2 writes it (v, id, r, x,
-- s, t, op, n, o). SECURITY DEFINER so that writers need no privilege on the pgchanges schema; no SET clause:
-- every function, operator, type and table is schema-qualified, and an unqualified name finds the transition
-- table before any table of that name.
CREATE FUNCTION pgchanges.notify_rows_v3() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $fn$
DECLARE
    head pg_catalog.text := ',"r":' OPERATOR(pg_catalog.||) TG_RELID
        OPERATOR(pg_catalog.||) ',"x":' OPERATOR(pg_catalog.||) pg_catalog.pg_current_xact_id()
        OPERATOR(pg_catalog.||) ',"s":' OPERATOR(pg_catalog.||) pg_catalog.to_json(TG_TABLE_SCHEMA)
        OPERATOR(pg_catalog.||) ',"t":' OPERATOR(pg_catalog.||) pg_catalog.to_json(TG_TABLE_NAME);
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        PERFORM 1
        FROM (SELECT CASE WHEN pg_catalog.octet_length(made.payload) OPERATOR(pg_catalog.<) 8000 THEN made.payload
                          ELSE pgchanges.notify_spill_v3(made.payload) END AS payload
              FROM (SELECT '{"v":2,"id":' OPERATOR(pg_catalog.||) pg_catalog.nextval('pgchanges.event_seq'::pg_catalog.regclass)
                           OPERATOR(pg_catalog.||) head OPERATOR(pg_catalog.||) ',"op":"insert","n":' OPERATOR(pg_catalog.||) pg_catalog.to_json(n) OPERATOR(pg_catalog.||) '}' AS payload
                    FROM pgchanges_new n
                    OFFSET 0) made
              OFFSET 0) fitted,
             LATERAL (SELECT pg_catalog.pg_notify(c.channel, fitted.payload)
                      FROM pg_catalog.unnest(TG_ARGV) AS c(channel)) AS sent;
    ELSE
        PERFORM 1
        FROM (SELECT CASE WHEN pg_catalog.octet_length(made.payload) OPERATOR(pg_catalog.<) 8000 THEN made.payload
                          ELSE pgchanges.notify_spill_v3(made.payload) END AS payload
              FROM (SELECT '{"v":2,"id":' OPERATOR(pg_catalog.||) pg_catalog.nextval('pgchanges.event_seq'::pg_catalog.regclass)
                           OPERATOR(pg_catalog.||) head OPERATOR(pg_catalog.||) ',"op":"delete","o":' OPERATOR(pg_catalog.||) pg_catalog.to_json(o) OPERATOR(pg_catalog.||) '}' AS payload
                    FROM pgchanges_old o
                    OFFSET 0) made
              OFFSET 0) fitted,
             LATERAL (SELECT pg_catalog.pg_notify(c.channel, fitted.payload)
                      FROM pg_catalog.unnest(TG_ARGV) AS c(channel)) AS sent;
    END IF;
    RETURN NULL;
END
$fn$;


-- ---------------------------------------------------------------------------------------------------------
-- The outbox source
-- ---------------------------------------------------------------------------------------------------------
--
-- Writers pay one INSERT into pgchanges.events per row, from a row trigger, and NOTIFY only while some
-- consumer may be sleeping. Every column and index of pgchanges.events is paid by every captured write, so
-- the table is lean: names come from the catalog (or pgchanges.table_names) when events are read; retention
-- walks ids, so created_at has no index; and the cut finds its events by id, so there is no index on xid.
--
-- Consumers read events in batches cut by snapshot, in lanes by row key:
--
-- * A **cut** (one statement, any worker, one at a time per consumer) takes the events that became visible
--   between the consumer's last cut snapshot and the current snapshot (pg_visible_in_snapshot: an event that
--   commits late is in the cut after its commit, never skipped), splits them by row key into the consumer's
--   lanes, and records one batch row per lane and batch of events: an array of event ids, not a copy.
-- * Each cut leaves a mark: the event sequence S read first, then the cut's own transaction id Y assigned.
--   A transaction with an xid above Y got it after S was read, and writes its events after getting its xid,
--   so all its events have ids above S. Every event not visible in the last cut's snapshot P belongs to a
--   transaction with xid >= xmin(P); so with the latest mark whose Y < xmin(P), the cut need only look at
--   ids above that mark's S. (A snapshot's xmax would not do: a transaction may hold an xid >= xmax that was
--   assigned before the snapshot, while older ones run.)
-- * Cuts are taken in pieces, so that a backlog after downtime is never one huge statement: a cut takes at
--   most a set number of events, in id order, of the snapshot it started with (pending_snapshot); the next
--   cuts take the rest of that same snapshot (ids above pending_after) before a new snapshot is started.
--   cut_snapshot moves to the snapshot only when all of it is cut, so pieces only split the events of one
--   cut by id. The pieces of one snapshot are taken in id order and numbered as cuts in that order, and a
--   row's events (which commit in id order) therefore reach its lane in commit order.

CREATE TABLE pgchanges.events (
    id           bigint PRIMARY KEY DEFAULT nextval('pgchanges.event_seq'),
    xid          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    table_oid    oid NOT NULL,
    op           text NOT NULL,
    new_row      json,
    old_row      json,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgchanges.consumers (
    name              text PRIMARY KEY,
    table_oids        oid[] NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    seen_at           timestamptz NOT NULL DEFAULT now(),
    lanes             integer NOT NULL DEFAULT 8 CHECK (lanes BETWEEN 1 AND 1024),
    cut_snapshot      pg_snapshot NOT NULL DEFAULT '1:1:',
    cuts              bigint NOT NULL DEFAULT 0,
    pending_snapshot  pg_snapshot,  -- the snapshot being cut in pieces, NULL when none is
    pending_after     bigint        -- the largest event id cut of it so far
);

CREATE TABLE pgchanges.dead_letters (
    consumer   text NOT NULL,
    event_id   bigint NOT NULL,
    attempts   integer NOT NULL,
    error      text,
    failed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX dead_letters_event ON pgchanges.dead_letters (event_id);

CREATE TABLE pgchanges.cut_marks (
    consumer  text NOT NULL REFERENCES pgchanges.consumers (name) ON DELETE CASCADE,
    cut_xid    xid8 NOT NULL,   -- Y: the cutting transaction's id, assigned after seq was read
    seq        bigint NOT NULL,  -- S
    PRIMARY KEY (consumer, cut_xid)
);

-- The mark a cut after snapshot p_prev starts from: every event not visible in p_prev has an id above its seq
-- ('0' and 0 while there is no such mark: every event is looked at). The cut and the status both use it.
CREATE FUNCTION pgchanges.cut_floor_v1(p_consumer text, p_prev pg_snapshot, OUT cut_xid xid8, OUT seq bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT coalesce(m.cut_xid, '0'::xid8), coalesce(m.seq, 0)
    FROM (SELECT 1) AS one LEFT JOIN LATERAL (
        SELECT k.cut_xid, k.seq FROM pgchanges.cut_marks k
        WHERE k.consumer = p_consumer AND k.cut_xid < pg_snapshot_xmin(p_prev)
        ORDER BY k.cut_xid DESC LIMIT 1) m ON true
$fn$;

CREATE TABLE pgchanges.lanes (
    consumer  text NOT NULL REFERENCES pgchanges.consumers (name) ON DELETE CASCADE,
    lane      integer NOT NULL,
    PRIMARY KEY (consumer, lane)
);

CREATE TABLE pgchanges.batches (
    consumer   text NOT NULL,
    lane       integer NOT NULL,
    cut        bigint NOT NULL,
    chunk      integer NOT NULL,
    event_ids  bigint[] NOT NULL,  -- ascending
    first_id   bigint NOT NULL,
    PRIMARY KEY (consumer, lane, cut, chunk)
);
CREATE INDEX batches_first_id ON pgchanges.batches (first_id);

-- Events taken out of their batch: failed ones waiting for their retry (run_at), and those held behind them.
CREATE TABLE pgchanges.parked (
    consumer    text NOT NULL,
    event_id    bigint NOT NULL,
    lane        integer NOT NULL,
    row_key     text NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    run_at      timestamptz NOT NULL DEFAULT '-infinity',
    last_error  text,
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX parked_lane ON pgchanges.parked (consumer, lane, event_id);
CREATE INDEX parked_event ON pgchanges.parked (event_id);
CREATE INDEX parked_row ON pgchanges.parked (consumer, row_key, event_id);

-- The lane of a row key: stable, spread evenly. Inlined by the planner (no SET clause: schema-qualified).
CREATE FUNCTION pgchanges.lane_v1(row_key text, lanes integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $fn$
    SELECT (pg_catalog.hashtext(row_key) OPERATOR(pg_catalog.&) 2147483647) OPERATOR(pg_catalog.%) lanes
$fn$;

-- The ordering key of an event: table oid plus primary-key values (table oid alone without a key).
-- row_key_v1 looks the key columns up; row_key_v2 gives the same text from the key columns the caller already
-- joined, and is inlined by the planner (a SQL expression without SET clause or sub-select, so everything in
-- it is schema-qualified), which a function call per event in the cut is not.
CREATE FUNCTION pgchanges.row_key_v1(p_table oid, p_row json) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT p_table::text || coalesce(':' || (
        SELECT string_agg(coalesce(p_row ->> u.k, ''), ',' ORDER BY u.o)
        FROM pgchanges.captures c, unnest(c.key_columns) WITH ORDINALITY AS u(k, o)
        WHERE c.table_oid = p_table AND c.source = 'outbox'), '')
$fn$;

CREATE FUNCTION pgchanges.row_key_multi_v1(p_table oid, p_key text[], p_row json) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT p_table::text || ':' || array_to_string(ARRAY(SELECT coalesce(p_row ->> k, '') FROM unnest(p_key) AS k), ',')
$fn$;

CREATE FUNCTION pgchanges.row_key_v2(p_table oid, p_key text[], p_row json) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $fn$
    SELECT CASE
        WHEN p_key IS NULL OR pg_catalog.cardinality(p_key) OPERATOR(pg_catalog.=) 0 THEN p_table::pg_catalog.text
        WHEN pg_catalog.cardinality(p_key) OPERATOR(pg_catalog.=) 1
            THEN p_table::pg_catalog.text OPERATOR(pg_catalog.||) ':'
                 OPERATOR(pg_catalog.||) COALESCE(p_row OPERATOR(pg_catalog.->>) p_key[1], '')
        ELSE pgchanges.row_key_multi_v1(p_table, p_key, p_row)
    END
$fn$;

-- Outbox events carry the table oid, not its name (lean writes), and names are looked up when events are
-- read. A table renamed or dropped in between would show its new name (or none), so the event triggers
-- record each outbox-captured table's earlier name here, valid for the events with id < until_event_id
-- (the table's lock held by the DDL orders every write to it before or after that sequence value).
CREATE TABLE pgchanges.table_names (
    table_oid       oid NOT NULL,
    until_event_id  bigint NOT NULL,
    schema_name     name NOT NULL,
    table_name      name NOT NULL,
    PRIMARY KEY (table_oid, until_event_id)
);

-- Events with the name their table had when they were written (see table_names) and their row key.
CREATE VIEW pgchanges.events_named AS
SELECT e.id, e.xid, e.table_oid, e.op, e.new_row, e.old_row, e.created_at,
       coalesce(h.schema_name, n.nspname, k.schema_name, '?')::text AS schema_name,
       coalesce(h.table_name, r.relname, k.table_name, e.table_oid::text)::text AS table_name,
       pgchanges.row_key_v2(e.table_oid, k.key_columns, coalesce(e.new_row, e.old_row)) AS row_key
FROM pgchanges.events e
LEFT JOIN pg_catalog.pg_class r ON r.oid = e.table_oid
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
LEFT JOIN pgchanges.captures k ON k.table_oid = e.table_oid AND k.source = 'outbox'
LEFT JOIN LATERAL (
    SELECT t.schema_name, t.table_name FROM pgchanges.table_names t
    WHERE t.table_oid = e.table_oid AND t.until_event_id > e.id ORDER BY t.until_event_id LIMIT 1) h ON true;

-- Waking sleeping workers. A worker with nothing to do sleeps until a NOTIFY on 'pgchanges:outbox' or its
-- deadline. Writers NOTIFY only while some worker may be asleep, so the NOTIFY commit lock is paid on the
-- idle to busy transition, not on every write: the row trigger reads one shared value, the sequence
-- sleep_until (the time until which some worker may be sleeping, in epoch seconds), and NOTIFYs while it
-- lies ahead. The sequence is not transactional: writers see it at once, without locks. (A statement trigger
-- that queries pgchanges.sleepers would be a second trigger call per statement, and a WHEN clause does not
-- spare it: a statement trigger's WHEN is compiled again for every statement.)
--
-- Sleeping workers keep pgchanges.sleepers (with the time each sleeps until) and the sequence in step under an
-- advisory lock (sleep_v1, wake_v1). A worker killed while asleep stops costing writers at its deadline.
-- sleepers.until has a default only because 0009 added it to rows of earlier workers; sleep_v1 always sets it.
CREATE UNLOGGED TABLE pgchanges.sleepers (
    consumer  text NOT NULL,
    worker    text NOT NULL,
    since     timestamptz NOT NULL DEFAULT now(),
    until     timestamptz NOT NULL DEFAULT now() + interval '1 minute',
    PRIMARY KEY (consumer, worker)
);

CREATE SEQUENCE pgchanges.sleep_until MINVALUE 0 START 0;
SELECT pg_catalog.setval('pgchanges.sleep_until', 0, true);

-- Writers NOTIFY while the latest deadline of the sleeping workers lies ahead; the workers that are still
-- asleep set it.
CREATE FUNCTION pgchanges.publish_sleep_until_v1() RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    DELETE FROM pgchanges.sleepers WHERE until <= now();
    SELECT setval('pgchanges.sleep_until',
                  coalesce(ceil(extract(epoch FROM (SELECT max(until) FROM pgchanges.sleepers)))::bigint, 0), true);
$fn$;

-- A worker goes to sleep for at most p_seconds (it wakes by itself then, so the deadline may lapse).
CREATE FUNCTION pgchanges.sleep_v1(p_consumer text, p_worker text, p_seconds double precision) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT pg_advisory_xact_lock(7451207624310960641);  -- serialises sleep_v1 and wake_v1
    INSERT INTO pgchanges.sleepers (consumer, worker, until)
    VALUES (p_consumer, p_worker, now() + make_interval(secs => p_seconds))
    ON CONFLICT (consumer, worker) DO UPDATE SET until = excluded.until, since = now();
    SELECT pgchanges.publish_sleep_until_v1();
$fn$;

CREATE FUNCTION pgchanges.wake_v1(p_consumer text, p_worker text) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT pg_advisory_xact_lock(7451207624310960641);
    DELETE FROM pgchanges.sleepers WHERE consumer = p_consumer AND worker = p_worker;
    SELECT pgchanges.publish_sleep_until_v1();
$fn$;

-- The row triggers, one per operation and without a branch: PL/pgSQL sets up each simple expression once
-- per transaction, so in single-row transactions every IF would cost a fresh set-up. SECURITY DEFINER so
-- that writers need no privilege on schema pgchanges; no SET clause (a GUC save and restore on every call):
-- every function, operator, type and table is schema-qualified, so a writer's search_path cannot redirect
-- anything (tests/integration/test_outbox_security.py tries). Identical notifications of one transaction are
-- merged by PostgreSQL.
CREATE FUNCTION pgchanges.outbox_insert_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $fn$
BEGIN
    INSERT INTO pgchanges.events (table_oid, op, new_row) VALUES (TG_RELID, 'insert', pg_catalog.to_json(NEW));
    IF pg_catalog.pg_sequence_last_value('pgchanges.sleep_until'::pg_catalog.regclass)
       OPERATOR(pg_catalog.>) pg_catalog.date_part('epoch', pg_catalog.now()) THEN
        PERFORM pg_catalog.pg_notify('pgchanges:outbox', '');
    END IF;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION pgchanges.outbox_update_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $fn$
BEGIN
    INSERT INTO pgchanges.events (table_oid, op, new_row, old_row)
    VALUES (TG_RELID, 'update', pg_catalog.to_json(NEW), pg_catalog.to_json(OLD));
    IF pg_catalog.pg_sequence_last_value('pgchanges.sleep_until'::pg_catalog.regclass)
       OPERATOR(pg_catalog.>) pg_catalog.date_part('epoch', pg_catalog.now()) THEN
        PERFORM pg_catalog.pg_notify('pgchanges:outbox', '');
    END IF;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION pgchanges.outbox_delete_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $fn$
BEGIN
    INSERT INTO pgchanges.events (table_oid, op, old_row) VALUES (TG_RELID, 'delete', pg_catalog.to_json(OLD));
    IF pg_catalog.pg_sequence_last_value('pgchanges.sleep_until'::pg_catalog.regclass)
       OPERATOR(pg_catalog.>) pg_catalog.date_part('epoch', pg_catalog.now()) THEN
        PERFORM pg_catalog.pg_notify('pgchanges:outbox', '');
    END IF;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION pgchanges.outbox_truncate_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $fn$
BEGIN
    INSERT INTO pgchanges.events (table_oid, op) VALUES (TG_RELID, 'truncate');
    IF pg_catalog.pg_sequence_last_value('pgchanges.sleep_until'::pg_catalog.regclass)
       OPERATOR(pg_catalog.>) pg_catalog.date_part('epoch', pg_catalog.now()) THEN
        PERFORM pg_catalog.pg_notify('pgchanges:outbox', '');
    END IF;
    RETURN NULL;
END
$fn$;


-- ---------------------------------------------------------------------------------------------------------
-- The logical source: what it created, so that uninstall can remove it
-- ---------------------------------------------------------------------------------------------------------

CREATE TABLE pgchanges.logical_objects (
    kind        text NOT NULL CHECK (kind IN ('publication', 'slot')),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);

-- Initial snapshot progress per slot and table: rows up to last_key (primary key, as JSON) are acknowledged.
CREATE TABLE pgchanges.snapshot_progress (
    slot        text NOT NULL,
    table_oid   oid NOT NULL,
    last_key    jsonb,
    done        boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, table_oid)
);


-- ---------------------------------------------------------------------------------------------------------
-- Periodic tasks
-- ---------------------------------------------------------------------------------------------------------

-- One row per task; whoever locks the row while it is due runs the task and moves next_run_at forward in the
-- same transaction, so a period runs once across all workers.
CREATE TABLE pgchanges.periodic (
    name              text PRIMARY KEY,
    spec              text NOT NULL,
    next_run_at       timestamptz NOT NULL,
    last_started_at   timestamptz,
    last_finished_at  timestamptz,
    last_error        text,
    runs              bigint NOT NULL DEFAULT 0
);


-- ---------------------------------------------------------------------------------------------------------
-- Polling consumers
-- ---------------------------------------------------------------------------------------------------------

-- Where polling consumers keep their watermark, when they may write here. A read-only role keeps it in a
-- local file instead (sources/poll_state.py).
CREATE TABLE pgchanges.poll_state (
    consumer    text NOT NULL,
    table_name  text NOT NULL,   -- schema.table as pgchanges prints it
    state       jsonb NOT NULL,  -- watermark, the snapshot of the last poll, transactions seen running
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, table_name)
);


-- ---------------------------------------------------------------------------------------------------------
-- Capture that follows the schema
-- ---------------------------------------------------------------------------------------------------------
--
-- What is captured is decided by rules: a source and a LIKE pattern on the schema and on the table name
-- (an exact name is a pattern without wildcards). pgchanges.follow_table_v1(oid) brings one table in line
-- with the rules: triggers present (notify: with the channel of every matching rule) or absent, membership
-- of each matching rule's publication added or removed, pgchanges.captures kept in step. `install` runs it
-- for the tables its rules match. The DDL event trigger runs it for every table that CREATE TABLE, ALTER
-- TABLE (RENAME, SET SCHEMA) or ALTER SCHEMA RENAME touches, inside that DDL transaction, so a table created
-- or renamed into a pattern is captured before its first row can be written. Without the event trigger
-- (creating one needs a superuser), consumers call follow_all_v1() on a timer instead.
-- Partitions are never captured themselves: triggers and publications on the partitioned table cover them.

CREATE TABLE pgchanges.capture_rules (
    source                 text NOT NULL,
    schema_like            text NOT NULL,
    table_like             text NOT NULL,
    channel                text NOT NULL DEFAULT '',   -- notify: the channel this rule's listeners LISTEN on
    publication            text NOT NULL DEFAULT '',   -- logical: the publication matching tables join
    replica_identity_full  boolean NOT NULL DEFAULT false,
    created_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, schema_like, table_like, publication)
);

-- Outbox consumers subscribe by rule as well, so a table created later joins their table_oids.
CREATE TABLE pgchanges.consumer_rules (
    consumer     text NOT NULL REFERENCES pgchanges.consumers (name) ON DELETE CASCADE,
    schema_like  text NOT NULL,
    table_like   text NOT NULL,
    PRIMARY KEY (consumer, schema_like, table_like)
);

CREATE FUNCTION pgchanges.like_escape_v1(name text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT replace(replace(replace(name, '\', '\\'), '%', '\%'), '_', '\_') $fn$;

-- Puts the outbox triggers on a table (p_wanted) or takes them off; returns whether anything changed.
-- Triggers of earlier versions (pgchanges_outbox, pgchanges_outbox_wake) are replaced.
CREATE FUNCTION pgchanges.set_outbox_triggers_v1(p_table oid, p_wanted boolean) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t_ident  text := p_table::regclass::text;
    had      boolean;
    legacy   boolean;
BEGIN
    had := EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = p_table AND tgname = 'pgchanges_outbox_insert');
    legacy := EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = p_table
                      AND tgname IN ('pgchanges_outbox', 'pgchanges_outbox_wake'));
    IF legacy THEN
        EXECUTE format('DROP TRIGGER IF EXISTS pgchanges_outbox ON %s', t_ident);
        EXECUTE format('DROP TRIGGER IF EXISTS pgchanges_outbox_wake ON %s', t_ident);
    END IF;
    IF p_wanted AND (legacy OR NOT had) THEN
        EXECUTE format('CREATE OR REPLACE TRIGGER pgchanges_outbox_insert AFTER INSERT ON %s '
                       'FOR EACH ROW EXECUTE FUNCTION pgchanges.outbox_insert_v1()', t_ident);
        EXECUTE format('CREATE OR REPLACE TRIGGER pgchanges_outbox_update AFTER UPDATE ON %s '
                       'FOR EACH ROW EXECUTE FUNCTION pgchanges.outbox_update_v1()', t_ident);
        EXECUTE format('CREATE OR REPLACE TRIGGER pgchanges_outbox_delete AFTER DELETE ON %s '
                       'FOR EACH ROW EXECUTE FUNCTION pgchanges.outbox_delete_v1()', t_ident);
        EXECUTE format('CREATE OR REPLACE TRIGGER pgchanges_outbox_truncate AFTER TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION pgchanges.outbox_truncate_v1()', t_ident);
        RETURN true;
    ELSIF NOT p_wanted AND (legacy OR had) THEN
        EXECUTE format('DROP TRIGGER IF EXISTS pgchanges_outbox_insert ON %s', t_ident);
        EXECUTE format('DROP TRIGGER IF EXISTS pgchanges_outbox_update ON %s', t_ident);
        EXECUTE format('DROP TRIGGER IF EXISTS pgchanges_outbox_delete ON %s', t_ident);
        EXECUTE format('DROP TRIGGER IF EXISTS pgchanges_outbox_truncate ON %s', t_ident);
        RETURN true;
    END IF;
    RETURN false;
END
$fn$;

-- Brings one table's capture in line with the rules; returns whether anything changed.
-- p_in_ddl: called by the event trigger, in the transaction of the DDL that renamed the table (so the name
-- history is exact); the periodic follow cannot know when a rename happened and records none.
-- The notify triggers of a table (not partitioned) since version 12, with the channels ``p_args`` (a list of
-- quoted literals): statement triggers for INSERT and DELETE, the row trigger for UPDATE; the row trigger of
-- every event of earlier versions goes.
CREATE FUNCTION pgchanges.set_notify_statement_triggers_v1(p_table oid, p_args text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    EXECUTE format('CREATE OR REPLACE TRIGGER pgchanges_notify_insert AFTER INSERT ON %s '
                   'REFERENCING NEW TABLE AS pgchanges_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION pgchanges.notify_rows_v3(%s)', p_table::regclass, p_args);
    EXECUTE format('CREATE OR REPLACE TRIGGER pgchanges_notify_update AFTER UPDATE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION pgchanges.notify_row_v2(%s)', p_table::regclass, p_args);
    EXECUTE format('CREATE OR REPLACE TRIGGER pgchanges_notify_delete AFTER DELETE ON %s '
                   'REFERENCING OLD TABLE AS pgchanges_old '
                   'FOR EACH STATEMENT EXECUTE FUNCTION pgchanges.notify_rows_v3(%s)', p_table::regclass, p_args);
    EXECUTE format('DROP TRIGGER IF EXISTS pgchanges_notify ON %s', p_table::regclass);
END
$fn$;

CREATE FUNCTION pgchanges.follow_table_v1(p_table oid, p_in_ddl boolean DEFAULT false) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t_schema   name;
    t_name     name;
    t_ident    text;
    t_key      text[];
    t_full     boolean;
    t_kind     "char";
    channels   text[];
    args       text;
    wanted     boolean;
    had        boolean;
    pub        record;
    trg        record;
    changed    boolean := false;
BEGIN
    SELECT n.nspname, c.relname, c.relreplident = 'f', c.relkind INTO t_schema, t_name, t_full, t_kind
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = p_table AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence <> 't'
      AND n.nspname NOT IN ('pgchanges', 'pg_catalog', 'information_schema');
    IF NOT FOUND THEN
        -- A table attached as a partition is captured through its parent's row trigger (cloned onto it): its own
        -- notify triggers would signal its rows a second time.
        FOR trg IN SELECT g.tgname FROM pg_catalog.pg_trigger g
                   WHERE g.tgrelid = p_table AND g.tgparentid = 0
                     AND g.tgfoid IN ('pgchanges.notify_rows_v3()'::pg_catalog.regprocedure,
                                      'pgchanges.notify_row_v2()'::pg_catalog.regprocedure) LOOP
            EXECUTE format('DROP TRIGGER %I ON %s', trg.tgname, p_table::regclass);
        END LOOP;
        DELETE FROM pgchanges.captures WHERE table_oid = p_table;
        RETURN false;
    END IF;
    PERFORM pg_catalog.set_config('pgchanges.following', 'on', true);
    t_ident := format('%I.%I', t_schema, t_name);
    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO t_key
    FROM pg_catalog.pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = p_table AND i.indisprimary;

    -- notify: statement triggers for INSERT and DELETE and the row trigger for UPDATE (the row trigger for every
    -- event on a partitioned table: see set_notify_statement_triggers_v1), and a TRUNCATE trigger, given the
    -- channels of every matching rule
    SELECT array_agg(DISTINCT r.channel ORDER BY r.channel) INTO channels FROM pgchanges.capture_rules r
    WHERE r.source = 'notify' AND t_schema LIKE r.schema_like AND t_name LIKE r.table_like;
    had := EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = p_table
                   AND tgname = CASE WHEN t_kind = 'p' THEN 'pgchanges_notify' ELSE 'pgchanges_notify_insert' END);
    IF channels IS NOT NULL THEN
        IF NOT had OR channels IS DISTINCT FROM (SELECT k.channels FROM pgchanges.captures k
                                                 WHERE k.table_oid = p_table AND k.source = 'notify') THEN
            SELECT string_agg(quote_literal(ch), ', ') INTO args FROM unnest(channels) AS ch;
            IF t_kind = 'p' THEN
                EXECUTE format('CREATE OR REPLACE TRIGGER pgchanges_notify AFTER INSERT OR UPDATE OR DELETE ON %s '
                               'FOR EACH ROW EXECUTE FUNCTION pgchanges.notify_row_v2(%s)', t_ident, args);
            ELSE
                PERFORM pgchanges.set_notify_statement_triggers_v1(p_table, args);
            END IF;
            EXECUTE format('CREATE OR REPLACE TRIGGER pgchanges_notify_truncate AFTER TRUNCATE ON %s '
                           'FOR EACH STATEMENT EXECUTE FUNCTION pgchanges.notify_truncate_v2(%s)', t_ident, args);
            changed := true;
        END IF;
        INSERT INTO pgchanges.captures (table_oid, schema_name, table_name, source, key_columns, channels)
        VALUES (p_table, t_schema, t_name, 'notify', t_key, channels)
        ON CONFLICT (table_oid, source) DO UPDATE SET schema_name = excluded.schema_name,
            table_name = excluded.table_name, key_columns = excluded.key_columns, channels = excluded.channels;
    ELSE
        IF had THEN
            EXECUTE format('DROP TRIGGER IF EXISTS pgchanges_notify ON %s', t_ident);
            EXECUTE format('DROP TRIGGER IF EXISTS pgchanges_notify_insert ON %s', t_ident);
            EXECUTE format('DROP TRIGGER IF EXISTS pgchanges_notify_update ON %s', t_ident);
            EXECUTE format('DROP TRIGGER IF EXISTS pgchanges_notify_delete ON %s', t_ident);
            EXECUTE format('DROP TRIGGER IF EXISTS pgchanges_notify_truncate ON %s', t_ident);
            changed := true;
        END IF;
        DELETE FROM pgchanges.captures WHERE table_oid = p_table AND source = 'notify';
    END IF;

    -- outbox: triggers; consumers whose rules match get the table
    IF p_in_ddl THEN
        INSERT INTO pgchanges.table_names (table_oid, until_event_id, schema_name, table_name)
        SELECT k.table_oid, nextval('pgchanges.event_seq'), k.schema_name, k.table_name FROM pgchanges.captures k
        WHERE k.table_oid = p_table AND k.source = 'outbox' AND (k.schema_name, k.table_name) <> (t_schema, t_name);
    END IF;
    wanted := EXISTS (SELECT 1 FROM pgchanges.capture_rules r
                      WHERE r.source = 'outbox' AND t_schema LIKE r.schema_like AND t_name LIKE r.table_like);
    changed := pgchanges.set_outbox_triggers_v1(p_table, wanted) OR changed;
    IF wanted THEN
        INSERT INTO pgchanges.captures (table_oid, schema_name, table_name, source, key_columns)
        VALUES (p_table, t_schema, t_name, 'outbox', t_key)
        ON CONFLICT (table_oid, source) DO UPDATE SET schema_name = excluded.schema_name,
            table_name = excluded.table_name, key_columns = excluded.key_columns;
        UPDATE pgchanges.consumers s SET table_oids = s.table_oids || p_table
        WHERE NOT p_table = ANY (s.table_oids)
          AND EXISTS (SELECT 1 FROM pgchanges.consumer_rules cr WHERE cr.consumer = s.name
                      AND t_schema LIKE cr.schema_like AND t_name LIKE cr.table_like);
    ELSE
        DELETE FROM pgchanges.captures WHERE table_oid = p_table AND source = 'outbox';
    END IF;

    -- logical: membership of the publications of matching rules, and of no other pgchanges publication
    FOR pub IN
        SELECT r.publication AS name, bool_or(r.replica_identity_full) AS full FROM pgchanges.capture_rules r
        WHERE r.source = 'logical' AND t_schema LIKE r.schema_like AND t_name LIKE r.table_like
        GROUP BY r.publication
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = pub.name) THEN
            EXECUTE format('CREATE PUBLICATION %I FOR TABLE %s', pub.name, t_ident);
            INSERT INTO pgchanges.logical_objects (kind, name) VALUES ('publication', pub.name)
            ON CONFLICT DO NOTHING;
            changed := true;
        ELSIF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel pr
                          JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
                          WHERE p.pubname = pub.name AND pr.prrelid = p_table) THEN
            EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', pub.name, t_ident);
            changed := true;
        END IF;
        IF pub.full AND NOT t_full THEN
            EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', t_ident);
            t_full := true;
        END IF;
    END LOOP;
    FOR pub IN
        SELECT p.pubname AS name FROM pg_catalog.pg_publication_rel pr
        JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
        JOIN pgchanges.logical_objects o ON o.kind = 'publication' AND o.name = p.pubname
        WHERE pr.prrelid = p_table
          AND NOT EXISTS (SELECT 1 FROM pgchanges.capture_rules r
                          WHERE r.source = 'logical' AND r.publication = p.pubname
                            AND t_schema LIKE r.schema_like AND t_name LIKE r.table_like)
    LOOP
        EXECUTE format('ALTER PUBLICATION %I DROP TABLE %s', pub.name, t_ident);
        changed := true;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pgchanges.capture_rules r
               WHERE r.source = 'logical' AND t_schema LIKE r.schema_like AND t_name LIKE r.table_like) THEN
        INSERT INTO pgchanges.captures (table_oid, schema_name, table_name, source, key_columns)
        VALUES (p_table, t_schema, t_name, 'logical', t_key)
        ON CONFLICT (table_oid, source) DO UPDATE SET schema_name = excluded.schema_name,
            table_name = excluded.table_name, key_columns = excluded.key_columns;
    ELSE
        DELETE FROM pgchanges.captures WHERE table_oid = p_table AND source = 'logical';
    END IF;

    PERFORM pg_catalog.set_config('pgchanges.following', 'off', true);
    RETURN changed;
END
$fn$;

-- Follows every table that a rule matches or that is captured now; returns the tables whose capture changed.
CREATE FUNCTION pgchanges.follow_all_v1() RETURNS TABLE (table_oid oid)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    candidate oid;
BEGIN
    FOR candidate IN
        SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND EXISTS (
            SELECT 1 FROM pgchanges.capture_rules r WHERE n.nspname LIKE r.schema_like AND c.relname LIKE r.table_like)
        UNION
        SELECT k.table_oid FROM pgchanges.captures k
        ORDER BY 1
    LOOP
        IF pgchanges.follow_table_v1(candidate) THEN
            table_oid := candidate;
            RETURN NEXT;
        END IF;
    END LOOP;
END
$fn$;


-- ---------------------------------------------------------------------------------------------------------
-- DDL events
-- ---------------------------------------------------------------------------------------------------------
--
-- The functions are created here; the event triggers that call them need a superuser and are created by
-- `pgchanges install --ddl` (capture/ddl.py). Each command is NOTIFYed on channel 'pgchanges:ddl' as JSON;
-- statements too long for NOTIFY are cut (and say so), the description of the command itself always fits.
CREATE FUNCTION pgchanges.ddl_payload_v1(fields jsonb) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    statement text := current_query();
    payload   text := (fields || jsonb_build_object('statement', statement))::text;
BEGIN
    IF octet_length(payload) >= 7900 THEN
        payload := (fields || jsonb_build_object(
            'statement', left(statement, 7900 - octet_length(fields::text) - 200), 'statement_truncated', true))::text;
    END IF;
    RETURN payload;
END
$fn$;

-- Reports each command, after following the tables it touched. Following must never make the user's DDL
-- fail: a table it cannot capture (no privilege) gets a WARNING, and the consumers' periodic follow_all_v1()
-- retries with their role. Both event trigger functions run as the owner of schema pgchanges (SECURITY
-- DEFINER), so roles that run DDL need no privilege on it.
CREATE FUNCTION pgchanges.ddl_end_v1() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    command record;
    touched oid;
BEGIN
    IF current_setting('pgchanges.following', true) = 'on' THEN
        RETURN;  -- commands that follow_table_v1 itself ran
    END IF;
    FOR command IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        CONTINUE WHEN command.schema_name = 'pgchanges';
        IF command.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE', 'ALTER SCHEMA')
           AND command.object_type IN ('table', 'schema')
           AND EXISTS (SELECT 1 FROM pgchanges.capture_rules) THEN
            FOR touched IN
                SELECT command.objid WHERE command.object_type = 'table'
                UNION ALL
                SELECT c.oid FROM pg_catalog.pg_class c
                WHERE command.object_type = 'schema' AND c.relnamespace = command.objid AND c.relkind IN ('r', 'p')
            LOOP
                BEGIN
                    PERFORM pgchanges.follow_table_v1(touched, true);
                EXCEPTION WHEN OTHERS THEN
                    PERFORM pg_catalog.set_config('pgchanges.following', 'off', true);
                    RAISE WARNING 'pgchanges could not update capture of %: %', touched::regclass, SQLERRM;
                END;
            END LOOP;
        END IF;
        PERFORM pg_notify('pgchanges:ddl', pgchanges.ddl_payload_v1(jsonb_build_object(
            'event', 'ddl_command_end', 'command_tag', command.command_tag, 'object_type', command.object_type,
            'object_identity', command.object_identity, 'schema', command.schema_name,
            'object_oid', command.objid, 'in_extension', command.in_extension,
            'xid', pg_current_xact_id()::text::bigint)));
    END LOOP;
END
$fn$;

-- Reports each dropped object; keeps the name of a dropped outbox-captured table for its remaining events.
CREATE FUNCTION pgchanges.ddl_drop_v1() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    dropped record;
BEGIN
    FOR dropped IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
        CONTINUE WHEN dropped.schema_name = 'pgchanges' OR NOT dropped.original;
        PERFORM pg_notify('pgchanges:ddl', pgchanges.ddl_payload_v1(jsonb_build_object(
            'event', 'sql_drop', 'command_tag', tg_tag, 'object_type', dropped.object_type,
            'object_identity', dropped.object_identity, 'schema', dropped.schema_name,
            'object_name', dropped.object_name, 'object_oid', dropped.objid,
            'xid', pg_current_xact_id()::text::bigint)));
        IF dropped.object_type = 'table' THEN
            INSERT INTO pgchanges.table_names (table_oid, until_event_id, schema_name, table_name)
            SELECT k.table_oid, nextval('pgchanges.event_seq'), k.schema_name, k.table_name
            FROM pgchanges.captures k WHERE k.table_oid = dropped.objid AND k.source = 'outbox';
            -- a captured table that is dropped is no longer captured
            DELETE FROM pgchanges.captures WHERE table_oid = dropped.objid;
        END IF;
    END LOOP;
END
$fn$;


-- The migrations this baseline stands for, as if applied one by one.
INSERT INTO pgchanges.migrations (version, name) VALUES
    (1, 'base'),
    (2, 'outbox'),
    (3, 'logical'),
    (4, 'periodic'),
    (5, 'ddl'),
    (6, 'follow'),
    (7, 'polling'),
    (8, 'outbox_lanes'),
    (9, 'outbox_write_path'),
    (10, 'outbox_cut_pieces'),
    (11, 'notify_payload_v2'),
    (12, 'notify_statement_triggers');
