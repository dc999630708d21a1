-- Queries of capture install, uninstall and schema following (pgchanges.capture.install, .follow), loaded by
-- name (pgchanges.capture.queries). Parameters are %(name)s; {name} marks an identifier composed in Python
-- with psycopg.sql.

-- name: schema_installed
SELECT to_regnamespace('pgchanges') IS NOT NULL AS installed

-- name: pgchanges_relation_exists
-- Whether a relation of the pgchanges schema exists: a database migrated only part of the way lacks some.
SELECT to_regclass(%(relation)s) IS NOT NULL AS present

-- name: capture_table_oid
SELECT c.oid AS table_oid
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND c.relkind IN ('r', 'p')

-- name: primary_key_columns
-- The table's primary key columns in key order; NULL when it has none.
SELECT array_agg(a.attname::text ORDER BY k.ord) AS key_columns
FROM pg_catalog.pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %(table_oid)s AND i.indisprimary

-- name: capture_install_lock
-- The installers' lock (pgchanges.capture.migrations.ADVISORY_LOCK_KEY), held to the end of the transaction.
SELECT pg_advisory_xact_lock(%(key)s)

-- name: add_capture_rule
-- Installing a rule again keeps it; REPLICA IDENTITY FULL, once asked for, stays asked for.
INSERT INTO pgchanges.capture_rules (source, schema_like, table_like, channel, publication, replica_identity_full)
VALUES (%(source)s, %(schema_like)s, %(table_like)s, %(channel)s, %(publication)s, %(replica_identity_full)s)
ON CONFLICT (source, schema_like, table_like, publication) DO UPDATE
SET replica_identity_full = pgchanges.capture_rules.replica_identity_full OR excluded.replica_identity_full

-- name: follow_all_tables
-- Brings every table's capture in line with the rules (0006); one row per table whose capture changed.
SELECT table_oid FROM pgchanges.follow_all_v1()

-- name: capture_rule_list
SELECT source, schema_like, table_like, publication
FROM pgchanges.capture_rules
ORDER BY source, schema_like, table_like, publication

-- name: capture_rule_patterns
SELECT schema_like, table_like FROM pgchanges.capture_rules
WHERE source = %(source)s AND publication = %(publication)s

-- name: tables_matching
-- The tables a pattern stands for: ordinary and partitioned tables, not partitions (their parent is captured),
-- nor temporary tables, nor pgchanges' or the system's own.
SELECT c.oid AS table_oid, n.nspname AS schema_name, c.relname AS table_name
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pgchanges', 'pg_catalog', 'information_schema')
  AND n.nspname LIKE %(schema_like)s AND c.relname LIKE %(table_like)s
ORDER BY n.nspname, c.relname

-- name: captured_tables
-- The captured tables under their current names (the catalog's, not the registry's).
SELECT n.nspname AS schema_name, c.relname AS table_name, k.source, k.table_oid
FROM pgchanges.captures k
JOIN pg_catalog.pg_class c ON c.oid = k.table_oid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
ORDER BY n.nspname, c.relname, k.source

-- name: captured_table_names
SELECT DISTINCT schema_name || '.' || table_name AS qualified_name
FROM pgchanges.captures WHERE table_oid = ANY (%(table_oids)s)

-- name: delete_all_capture_rules
DELETE FROM pgchanges.capture_rules

-- name: delete_capture_rule
-- Every source's rule for the name or pattern.
DELETE FROM pgchanges.capture_rules WHERE schema_like = %(schema_like)s AND table_like = %(table_like)s

-- name: capture_remaining
SELECT (SELECT count(*) FROM pgchanges.captures) + (SELECT count(*) FROM pgchanges.capture_rules) AS remaining

-- name: uninstall_logical_objects
-- Publications and slots the logical source created.
SELECT kind, name FROM pgchanges.logical_objects ORDER BY kind

-- name: uninstall_drop_publication
DROP PUBLICATION IF EXISTS {publication}

-- name: uninstall_slot_present
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %(slot)s) AS present

-- name: uninstall_drop_slot
SELECT pg_catalog.pg_drop_replication_slot(%(slot)s)

-- name: uninstall_orphan_triggers
-- Triggers that call a pgchanges function, on any table: those of tables missing from the registry (a
-- restored dump) included.
SELECT t.tgname AS trigger_name, n.nspname AS schema_name, c.relname AS table_name
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE p.pronamespace = 'pgchanges'::regnamespace AND NOT t.tgisinternal

-- name: uninstall_drop_trigger
DROP TRIGGER IF EXISTS {trigger} ON {table}

-- name: uninstall_drop_schema
DROP SCHEMA pgchanges CASCADE

-- name: follow_candidates
-- The tables follow_all_v1() looks at (0006): those a rule matches, and those captured now.
SELECT c.oid AS table_oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND EXISTS (
    SELECT 1 FROM pgchanges.capture_rules r WHERE n.nspname LIKE r.schema_like AND c.relname LIKE r.table_like)
UNION
SELECT k.table_oid FROM pgchanges.captures k
ORDER BY 1

-- name: follow_table
SELECT pgchanges.follow_table_v1(%(table_oid)s) AS changed
