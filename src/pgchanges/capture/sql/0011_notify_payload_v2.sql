-- pgchanges schema, version 11: a cheaper notify trigger, payload format 2.
--
-- The notify row trigger made writers markedly slower than a bare pg_notify(row_to_json(NEW)) trigger, and the
-- writer's cost bounds what a live consumer can receive. Profiled by trigger (EXPLAIN ANALYZE, see
-- bench/results/notify-payload.md), most of the difference was the function's SET search_path clause, which
-- saves and restores the setting on every call; the rest was json_build_object over values that are already
-- JSON, and a branch on TG_LEVEL in every row. Now:
--
-- * notify_row_v2 has no SET clause: like the outbox triggers (0009), every function, operator, type and
--   table in it is schema-qualified, so a writer's search_path cannot redirect anything;
-- * its payload is one concatenation (one expression); the spill path takes the event id back with currval;
-- * TRUNCATE has its own function, notify_truncate_v2, so the row function does not branch on TG_LEVEL.
--
-- Payload format 2 has the keys of format 1 (v, id, op, s, t, r, x, n, o; v, id, spill, s, t for a spilled
-- one), with v = 2 and without the n or o of value null: a listener of either version reads both, so
-- notifications in flight during an upgrade and payloads already spilled stay readable.
--
-- Existing notify triggers are moved to the new functions (CREATE OR REPLACE TRIGGER keeps their arguments,
-- the channels) and notify_row_v1 goes; follow_table_v1 creates the new ones from now on.

-- Row trigger of the notify source (INSERT, UPDATE, DELETE). Its arguments are the channels to signal (one per
-- matching rule). The payload is JSON, written by concatenation in one expression:
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

-- follow_table_v1 as in version 9, with the notify triggers of version 11.
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
                           'FOR EACH ROW EXECUTE FUNCTION pgchanges.notify_row_v2(%s)', t_ident, args);
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

-- Tables captured by an earlier version get the new functions, with the arguments (channels) they have; the
-- triggers that partitions inherit follow their parent's. The last occurrence of the function name in the
-- definition is the call (a table's name could contain the text too).
DO $do$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT g.oid, g.tgtype FROM pg_catalog.pg_trigger g
             WHERE g.tgfoid = 'pgchanges.notify_row_v1()'::pg_catalog.regprocedure AND g.tgparentid = 0
             ORDER BY g.oid LOOP
        EXECUTE pg_catalog.regexp_replace(
            pg_catalog.regexp_replace(pg_catalog.pg_get_triggerdef(t.oid), '^CREATE TRIGGER ', 'CREATE OR REPLACE TRIGGER '),
            '^(.*)EXECUTE FUNCTION (pgchanges\.)?notify_row_v1\(',
            CASE WHEN t.tgtype & 1 = 1 THEN '\1EXECUTE FUNCTION pgchanges.notify_row_v2('
                 ELSE '\1EXECUTE FUNCTION pgchanges.notify_truncate_v2(' END);
    END LOOP;
END
$do$;
DROP FUNCTION pgchanges.notify_row_v1();
