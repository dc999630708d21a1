-- pgchanges schema, version 12: the notify source's INSERT and DELETE triggers are statement triggers with
-- transition tables.
--
-- A row trigger runs its PL/pgSQL function once per row; a multi-row statement (INSERT … SELECT, a bulk
-- DELETE) paid that call for each row, and the writer's cost bounds what a live consumer can receive. A
-- statement trigger with a transition table makes every payload of the statement in one query: the same
-- JSON (payload format 2, so listeners and spilled payloads are unchanged), in the same order, one
-- notification per row. It costs each statement more (a query on the transition table where the row trigger
-- evaluates simple expressions), so a single-row statement pays a few microseconds more; and for UPDATE, whose
-- old and new rows the statement trigger must pair (by unnesting two arrays side by side: a join on row
-- numbers is planned once per session, and a plan made for one row went quadratic on a large statement),
-- that was twice the row trigger's cost per single-row statement, the commonest write there is, so UPDATE
-- keeps the row trigger. Figures: bench/results/notify-trigger-variants.md.
--
-- * notify_rows_v3: the function of the INSERT and DELETE statement triggers (PostgreSQL allows transition
--   tables only on triggers of one event); notify_spill_v3 stores a payload of 8000 bytes or more.
-- * set_notify_statement_triggers_v1: a table's notify triggers since this version; follow_table_v1 uses it,
--   and a table attached as a partition loses its own statement triggers (its parent's row trigger, cloned
--   onto it, signals its rows).
-- * Partitioned tables keep the row trigger of every event (notify_row_v2): PostgreSQL clones a row trigger
--   onto every partition, so a statement naming a partition is signalled too; a statement trigger on the
--   parent is not fired for it.
-- * Tables captured by an earlier version move to the new triggers, with the channels they have.

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

-- follow_table_v1 as in version 11, with the notify triggers of version 12.
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

-- Tables captured by an earlier version (not partitioned ones) get the statement triggers, with the channels
-- their row trigger has: its arguments as pg_get_triggerdef quotes them (the last call in the definition is the
-- trigger's: a table's name could contain the text too).
DO $do$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT g.tgrelid, pg_catalog.pg_get_triggerdef(g.oid) AS def FROM pg_catalog.pg_trigger g
             JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid
             WHERE g.tgfoid = 'pgchanges.notify_row_v2()'::pg_catalog.regprocedure AND g.tgparentid = 0
               AND c.relkind = 'r'
             ORDER BY g.oid LOOP
        PERFORM pgchanges.set_notify_statement_triggers_v1(
            t.tgrelid,
            pg_catalog.substring(t.def, '^.*EXECUTE FUNCTION (?:pgchanges\.)?notify_row_v2\((.*)\)$'));
    END LOOP;
END
$do$;
