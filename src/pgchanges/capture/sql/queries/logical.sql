-- Queries of the logical source (pgchanges.sources.logical, logical_setup, snapshot) and of
-- pgchanges.capture.logical_admin, loaded by name (pgchanges.capture.queries). Parameters are %(name)s; the
-- names in braces are identifiers or literals composed with psycopg.sql where the query is used.

-- name: wal_level
SHOW wal_level

-- name: replication_slot
SELECT plugin, active FROM pg_catalog.pg_replication_slots WHERE slot_name = %(slot)s

-- name: replication_slot_retained
-- The WAL the slot keeps the server from recycling, in bytes (NULL before the slot reserved any).
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) AS retained_bytes
FROM pg_catalog.pg_replication_slots
WHERE slot_name = %(slot)s

-- name: create_replication_slot
SELECT pg_catalog.pg_create_logical_replication_slot(%(slot)s, 'pgoutput')

-- name: drop_replication_slot
SELECT pg_catalog.pg_drop_replication_slot(%(slot)s)

-- name: logical_slots
SELECT slot_name AS name, plugin, active,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag_bytes,
       temporary
FROM pg_catalog.pg_replication_slots
WHERE slot_type = 'logical' AND database = current_database()
ORDER BY slot_name

-- name: remember_logical_object
-- What pgchanges created (kind 'publication' or 'slot'), so that uninstall drops it and nothing else.
INSERT INTO pgchanges.logical_objects (kind, name) VALUES (%(kind)s, %(name)s) ON CONFLICT DO NOTHING

-- name: publication_exists
SELECT true AS found FROM pg_catalog.pg_publication WHERE pubname = %(publication)s

-- name: create_publication
CREATE PUBLICATION {publication}

-- name: current_wal_lsn
SELECT pg_current_wal_lsn()::text AS lsn

-- name: snapshot_begin
BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY

-- name: snapshot_import
-- The snapshot is the name CREATE_REPLICATION_SLOT exported, as a literal: the command takes no parameters.
SET TRANSACTION SNAPSHOT {snapshot}

-- name: snapshot_forget
DELETE FROM pgchanges.snapshot_progress WHERE slot = %(slot)s

-- name: snapshot_start
INSERT INTO pgchanges.snapshot_progress (slot, table_oid) VALUES (%(slot)s, %(table_oid)s)
ON CONFLICT (slot, table_oid) DO NOTHING

-- name: snapshot_progress
SELECT last_key, done FROM pgchanges.snapshot_progress WHERE slot = %(slot)s AND table_oid = %(table_oid)s

-- name: snapshot_unfinished
SELECT count(*) FILTER (WHERE NOT done) AS unfinished FROM pgchanges.snapshot_progress WHERE slot = %(slot)s

-- name: snapshot_record
UPDATE pgchanges.snapshot_progress
SET last_key = coalesce(%(last_key)s::jsonb, last_key), done = %(done)s, updated_at = now()
WHERE slot = %(slot)s AND table_oid = %(table_oid)s

-- name: snapshot_all_rows
-- A table without a primary key: read in one pass, not resumable.
SELECT * FROM {table}

-- name: snapshot_first_page
SELECT * FROM {table} ORDER BY {keys} LIMIT {limit}

-- name: snapshot_next_page
-- After the last key of the page before: one placeholder per key column.
SELECT * FROM {table} WHERE ({keys}) > ({after}) ORDER BY {keys} LIMIT {limit}

-- name: end_silent_walsender
-- The walsender that holds the slot, if its consumer has not replied for %(silent_seconds)s seconds.
SELECT coalesce(bool_or(pg_catalog.pg_terminate_backend(s.active_pid)), false) AS ended
FROM pg_catalog.pg_replication_slots s
JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid
WHERE s.slot_name = %(slot)s
  AND coalesce(r.reply_time, r.backend_start) < now() - make_interval(secs => %(silent_seconds)s)
