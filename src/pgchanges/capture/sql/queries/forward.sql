-- Queries of forwarding to brokers (pgchanges.forwarding, pgchanges.standby) and of `pgchanges status`'s list
-- of forwarders, loaded by name (pgchanges.capture.queries). Parameters are %(name)s; {table} is an identifier
-- composed with psycopg.sql where the query is used.
--
-- A forwarder's standby lock is a session-level advisory lock with two int4 keys: %(namespace)s (pgchanges'
-- own, so pg_locks shows it with objsubid = 2 and this classid) and hashtext of 'slot:<slot>' or
-- 'consumer:<polling consumer>'.

-- name: forward_row_key
-- The columns that identify a row of a table, in index order: its primary key, else its replica identity index.
SELECT a.attname AS column_name
FROM (
    SELECT i.indrelid, i.indkey
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND (i.indisprimary OR i.indisreplident)
    ORDER BY i.indisprimary DESC
    LIMIT 1
) AS chosen
CROSS JOIN LATERAL unnest(chosen.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = chosen.indrelid AND a.attnum = k.attnum
ORDER BY k.ord

-- name: forward_lock
SELECT pg_catalog.pg_advisory_lock(%(namespace)s, pg_catalog.hashtext(%(name)s))

-- name: forward_unlock
SELECT pg_catalog.pg_advisory_unlock(%(namespace)s, pg_catalog.hashtext(%(name)s)) AS released

-- name: forward_lock_holder
-- Who holds the lock on one name now (no row: nobody).
SELECT a.pid, a.application_name, coalesce(host(a.client_addr), 'local') AS client
FROM pg_catalog.pg_locks l
JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.classid = %(namespace)s::int4::oid AND l.objid = pg_catalog.hashtext(%(name)s)::oid
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())

-- name: forward_slot_active
SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = %(slot)s AND active

-- name: forward_holders
-- Every forwarder's lock in this database, held or waited for, with the session (pid, application_name,
-- client address), and the slot it is about when one of this database's slots hashes to it.
SELECT l.objid::bigint AS lock_key, l.granted, a.pid, a.application_name,
       coalesce(host(a.client_addr), 'local') AS client, a.backend_start,
       (SELECT s.slot_name FROM pg_catalog.pg_replication_slots s
        WHERE pg_catalog.hashtext('slot:' || s.slot_name)::oid = l.objid LIMIT 1) AS slot_name
FROM pg_catalog.pg_locks l
JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.classid = %(namespace)s::int4::oid
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
ORDER BY l.objid, l.granted DESC, a.backend_start

-- name: forward_dead_letter_table
CREATE TABLE IF NOT EXISTS {table} (
    id bigserial PRIMARY KEY,
    sink text NOT NULL,
    change_id text NOT NULL,
    table_name text,
    op text NOT NULL,
    change jsonb NOT NULL,
    error text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
)

-- name: forward_dead_letter
INSERT INTO {table} (sink, change_id, table_name, op, change, error)
VALUES (%(sink)s, %(change_id)s, %(table_name)s, %(op)s, %(change)s, %(error)s)

-- name: forward_lock_keepalives
-- The server's side of the lock connection must notice a vanished holder too: an idle connection has nothing
-- in flight to time out, and the server's default keepalives wait two hours. Any role may set these.
SELECT pg_catalog.set_config('tcp_keepalives_idle', '10', false),
       pg_catalog.set_config('tcp_keepalives_interval', '5', false),
       pg_catalog.set_config('tcp_keepalives_count', '3', false),
       pg_catalog.set_config('tcp_user_timeout', '15000', false)
