-- pgchanges schema, version 9: a cheaper outbox write path.
--
-- Measured per single-row INSERT transaction (server side, fsync off, interleaved bursts; see
-- bench/outbox_trigger_variants.py), version 8 added about 23 µs to a plain insert of 14 µs:
--
-- * the row trigger branched on TG_LEVEL and TG_OP. PL/pgSQL sets up each simple expression once per
--   transaction, so for single-row transactions every IF costs a fresh expression set-up (about 4 µs in all).
--   Now each operation has its own trigger function with no branch;
-- * the wake-up statement trigger (a second trigger call and a query of pgchanges.sleepers per statement)
--   cost about 6 µs. A WHEN clause does not help: a statement trigger's WHEN is compiled again for every
--   statement. Now the row trigger itself reads one shared value, the sequence pgchanges.sleep_until (the
--   time until which some worker may be sleeping, in epoch seconds), and NOTIFYs only while it lies ahead:
--   about 1.5 µs.
--
-- Sleeping workers keep pgchanges.sleepers (with the time each sleeps until) and the sequence in step under an
-- advisory lock (sleep_v1, wake_v1). A worker killed while asleep stops costing writers at its deadline.

CREATE SEQUENCE pgchanges.sleep_until MINVALUE 0 START 0;
SELECT pg_catalog.setval('pgchanges.sleep_until', 0, true);

DELETE FROM pgchanges.sleepers;
-- rows of workers of an earlier version (which do not set the sequence) end by themselves
ALTER TABLE pgchanges.sleepers ADD COLUMN until timestamptz NOT NULL DEFAULT now() + interval '1 minute';

-- Writers NOTIFY while the latest deadline of the sleeping workers lies ahead; the workers that are still
-- asleep set it (the sequence is not transactional: writers see it at once, without locks).
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

-- The row triggers, one per operation. SECURITY DEFINER so that writers need no privilege on schema
-- pgchanges; no SET clause (a GUC save and restore on every call): every function, operator, type and table
-- is schema-qualified, so a writer's search_path cannot redirect anything (tests/integration/
-- test_outbox_security.py tries). Identical notifications of one transaction are merged by PostgreSQL.
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

-- follow_table_v1 as in version 6, with the outbox triggers set by set_outbox_triggers_v1.
-- Brings one table's capture in line with the rules; returns whether anything changed.
-- p_in_ddl: called by the event trigger, in the transaction of the DDL that renamed the table (so the name
-- history is exact); the periodic follow cannot know when a rename happened and records none.
CREATE OR REPLACE FUNCTION pgchanges.follow_table_v1(p_table oid, p_in_ddl boolean DEFAULT false) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t_schema   name;
    t_name     name;
    t_ident    text;
    t_key      text[];
    t_full     boolean;
    channels   text[];
    args       text;
    wanted     boolean;
    had        boolean;
    pub        record;
    changed    boolean := false;
BEGIN
    SELECT n.nspname, c.relname, c.relreplident = 'f' INTO t_schema, t_name, t_full
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = p_table AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence <> 't'
      AND n.nspname NOT IN ('pgchanges', 'pg_catalog', 'information_schema');
    IF NOT FOUND THEN
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

    -- notify: one row trigger and one TRUNCATE trigger, given the channels of every matching rule
    SELECT array_agg(DISTINCT r.channel ORDER BY r.channel) INTO channels FROM pgchanges.capture_rules r
    WHERE r.source = 'notify' AND t_schema LIKE r.schema_like AND t_name LIKE r.table_like;
    had := EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = p_table AND tgname = 'pgchanges_notify');
    IF channels IS NOT NULL THEN
        IF NOT had OR channels IS DISTINCT FROM (SELECT k.channels FROM pgchanges.captures k
                                                 WHERE k.table_oid = p_table AND k.source = 'notify') THEN
            SELECT string_agg(quote_literal(ch), ', ') INTO args FROM unnest(channels) AS ch;
            EXECUTE format('CREATE OR REPLACE TRIGGER pgchanges_notify AFTER INSERT OR UPDATE OR DELETE ON %s '
                           'FOR EACH ROW EXECUTE FUNCTION pgchanges.notify_row_v1(%s)', t_ident, args);
            EXECUTE format('CREATE OR REPLACE TRIGGER pgchanges_notify_truncate AFTER TRUNCATE ON %s '
                           'FOR EACH STATEMENT EXECUTE FUNCTION pgchanges.notify_row_v1(%s)', t_ident, args);
            changed := true;
        END IF;
        INSERT INTO pgchanges.captures (table_oid, schema_name, table_name, source, key_columns, channels)
        VALUES (p_table, t_schema, t_name, 'notify', t_key, channels)
        ON CONFLICT (table_oid, source) DO UPDATE SET schema_name = excluded.schema_name,
            table_name = excluded.table_name, key_columns = excluded.key_columns, channels = excluded.channels;
    ELSE
        IF had THEN
            EXECUTE format('DROP TRIGGER IF EXISTS pgchanges_notify ON %s', t_ident);
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

-- Tables captured by an earlier version get the new triggers; the old functions go.
DO $do$
DECLARE
    captured oid[] := ARRAY(SELECT t.tgrelid FROM pg_catalog.pg_trigger t
                            WHERE t.tgname = 'pgchanges_outbox' AND NOT t.tgisinternal);
    t oid;
BEGIN
    FOREACH t IN ARRAY captured LOOP
        PERFORM pgchanges.set_outbox_triggers_v1(t, true);
    END LOOP;
END
$do$;
DROP FUNCTION pgchanges.outbox_row_v1();
DROP FUNCTION pgchanges.outbox_wake_v1();
