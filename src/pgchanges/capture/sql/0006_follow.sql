-- pgchanges schema, version 6: capture that follows the schema.
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

ALTER TABLE pgchanges.captures ADD COLUMN channels text[];

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

CREATE FUNCTION pgchanges.like_escape_v1(name text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT replace(replace(replace(name, '\', '\\'), '%', '\%'), '_', '\_') $fn$;

-- Existing captures become exact-name rules.
INSERT INTO pgchanges.capture_rules (source, schema_like, table_like, channel)
SELECT k.source, pgchanges.like_escape_v1(n.nspname), pgchanges.like_escape_v1(c.relname),
       coalesce((SELECT split_part(encode(t.tgargs, 'escape'), '\000', 1) FROM pg_catalog.pg_trigger t
                 WHERE t.tgrelid = k.table_oid AND t.tgname = 'pgchanges_notify'), '')
FROM pgchanges.captures k
JOIN pg_catalog.pg_class c ON c.oid = k.table_oid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE k.source IN ('notify', 'outbox')
ON CONFLICT DO NOTHING;

INSERT INTO pgchanges.capture_rules (source, schema_like, table_like, publication, replica_identity_full)
SELECT 'logical', pgchanges.like_escape_v1(n.nspname), pgchanges.like_escape_v1(c.relname), p.pubname,
       c.relreplident = 'f'
FROM pg_catalog.pg_publication_rel r
JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid
JOIN pgchanges.logical_objects o ON o.kind = 'publication' AND o.name = p.pubname
JOIN pg_catalog.pg_class c ON c.oid = r.prrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
ON CONFLICT DO NOTHING;

UPDATE pgchanges.captures k SET channels = ARRAY[r.channel]
FROM pgchanges.capture_rules r, pg_catalog.pg_class c, pg_catalog.pg_namespace n
WHERE k.source = 'notify' AND r.source = 'notify' AND c.oid = k.table_oid AND n.oid = c.relnamespace
  AND n.nspname LIKE r.schema_like AND c.relname LIKE r.table_like;

INSERT INTO pgchanges.consumer_rules (consumer, schema_like, table_like)
SELECT DISTINCT s.name, pgchanges.like_escape_v1(n.nspname), pgchanges.like_escape_v1(c.relname)
FROM pgchanges.consumers s, unnest(s.table_oids) AS u(oid)
JOIN pg_catalog.pg_class c ON c.oid = u.oid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
ON CONFLICT DO NOTHING;

-- The notify trigger signals every channel it was given (one per matching rule).
CREATE OR REPLACE FUNCTION pgchanges.notify_row_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    event_id bigint := nextval('pgchanges.event_seq');
    payload  text;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        payload := json_build_object(
            'v', 1, 'id', event_id, 'op', 'truncate', 's', TG_TABLE_SCHEMA, 't', TG_TABLE_NAME,
            'r', TG_RELID::bigint, 'x', pg_current_xact_id()::text::bigint)::text;
    ELSE
        payload := json_build_object(
            'v', 1, 'id', event_id, 'op', lower(TG_OP), 's', TG_TABLE_SCHEMA, 't', TG_TABLE_NAME,
            'r', TG_RELID::bigint, 'x', pg_current_xact_id()::text::bigint,
            'n', CASE WHEN TG_OP <> 'DELETE' THEN to_json(NEW) END,
            'o', CASE WHEN TG_OP <> 'INSERT' THEN to_json(OLD) END)::text;
    END IF;
    IF octet_length(payload) >= 8000 THEN
        INSERT INTO pgchanges.spill (id, payload) VALUES (event_id, payload);
        payload := json_build_object(
            'v', 1, 'id', event_id, 'spill', true, 's', TG_TABLE_SCHEMA, 't', TG_TABLE_NAME)::text;
    END IF;
    PERFORM pg_notify(TG_ARGV[0], payload);
    FOR i IN 1 .. TG_NARGS - 1 LOOP
        PERFORM pg_notify(TG_ARGV[i], payload);
    END LOOP;
    RETURN NULL;
END
$fn$;

-- Brings one table's capture in line with the rules; returns whether anything changed.
-- p_in_ddl: called by the event trigger, in the transaction of the DDL that renamed the table (so the name
-- history is exact); the periodic follow cannot know when a rename happened and records none.
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

    -- outbox: row, TRUNCATE and wake triggers; consumers whose rules match get the table
    IF p_in_ddl THEN
        INSERT INTO pgchanges.table_names (table_oid, until_event_id, schema_name, table_name)
        SELECT k.table_oid, nextval('pgchanges.event_seq'), k.schema_name, k.table_name FROM pgchanges.captures k
        WHERE k.table_oid = p_table AND k.source = 'outbox' AND (k.schema_name, k.table_name) <> (t_schema, t_name);
    END IF;
    wanted := EXISTS (SELECT 1 FROM pgchanges.capture_rules r
                      WHERE r.source = 'outbox' AND t_schema LIKE r.schema_like AND t_name LIKE r.table_like);
    had := EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = p_table AND tgname = 'pgchanges_outbox');
    IF wanted THEN
        IF NOT had THEN
            EXECUTE format('CREATE OR REPLACE TRIGGER pgchanges_outbox AFTER INSERT OR UPDATE OR DELETE ON %s '
                           'FOR EACH ROW EXECUTE FUNCTION pgchanges.outbox_row_v1()', t_ident);
            EXECUTE format('CREATE OR REPLACE TRIGGER pgchanges_outbox_truncate AFTER TRUNCATE ON %s '
                           'FOR EACH STATEMENT EXECUTE FUNCTION pgchanges.outbox_row_v1()', t_ident);
            EXECUTE format('CREATE OR REPLACE TRIGGER pgchanges_outbox_wake '
                           'AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
                           'FOR EACH STATEMENT EXECUTE FUNCTION pgchanges.outbox_wake_v1()', t_ident);
            changed := true;
        END IF;
        INSERT INTO pgchanges.captures (table_oid, schema_name, table_name, source, key_columns)
        VALUES (p_table, t_schema, t_name, 'outbox', t_key)
        ON CONFLICT (table_oid, source) DO UPDATE SET schema_name = excluded.schema_name,
            table_name = excluded.table_name, key_columns = excluded.key_columns;
        UPDATE pgchanges.consumers s SET table_oids = s.table_oids || p_table
        WHERE NOT p_table = ANY (s.table_oids)
          AND EXISTS (SELECT 1 FROM pgchanges.consumer_rules cr WHERE cr.consumer = s.name
                      AND t_schema LIKE cr.schema_like AND t_name LIKE cr.table_like);
    ELSE
        IF had THEN
            EXECUTE format('DROP TRIGGER IF EXISTS pgchanges_outbox ON %s', t_ident);
            EXECUTE format('DROP TRIGGER IF EXISTS pgchanges_outbox_truncate ON %s', t_ident);
            EXECUTE format('DROP TRIGGER IF EXISTS pgchanges_outbox_wake ON %s', t_ident);
            changed := true;
        END IF;
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

-- The DDL event trigger now also follows the tables each command touched, before reporting it. Following
-- must never make the user's DDL fail: a table it cannot capture (no privilege) gets a WARNING, and the
-- consumers' periodic follow_all_v1() retries with their role. Both event trigger functions run as the owner
-- of schema pgchanges (SECURITY DEFINER), so roles that run DDL need no privilege on it.
CREATE OR REPLACE FUNCTION pgchanges.ddl_end_v1() RETURNS event_trigger
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

-- The drop trigger also keeps the name of a dropped outbox-captured table for its remaining events.
CREATE OR REPLACE FUNCTION pgchanges.ddl_drop_v1() RETURNS event_trigger
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
