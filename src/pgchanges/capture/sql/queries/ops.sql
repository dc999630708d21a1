-- Queries of operating pgchanges from outside its hot path (pgchanges.ops: the metrics sampler and
-- `pgchanges status`), loaded by name (pgchanges.capture.queries). Parameters are %(name)s.

-- name: ops_slots
-- The database's logical slots: the WAL each retains and how far its confirmed position is behind, the
-- decoding statistics of pg_stat_replication_slots (spilled and streamed transactions), and who holds it now
-- (the walsender's pg_stat_activity row; client_addr and application_name need pg_read_all_stats or the
-- same role). On a standby the current position is the last replayed one.
WITH here AS (
    SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END AS lsn
)
SELECT s.slot_name AS name, s.active, s.active_pid, s.temporary, s.wal_status,
       pg_wal_lsn_diff(here.lsn, s.restart_lsn)::bigint AS retained_bytes,
       pg_wal_lsn_diff(here.lsn, s.confirmed_flush_lsn)::bigint AS lag_bytes,
       s.confirmed_flush_lsn::text AS confirmed_lsn,
       a.application_name, a.client_addr::text AS client_addr, a.backend_start,
       st.spill_txns, st.spill_count, st.spill_bytes, st.stream_txns, st.stream_count, st.stream_bytes,
       st.total_txns, st.total_bytes
FROM pg_catalog.pg_replication_slots s
CROSS JOIN here
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = s.active_pid
LEFT JOIN pg_catalog.pg_stat_replication_slots st ON st.slot_name = s.slot_name
WHERE s.slot_type = 'logical' AND s.database = current_database()
ORDER BY s.slot_name

-- name: ops_outbox_parked
-- Events parked per consumer: retrying after a failure, or delivered to a stream and awaiting its ack.
SELECT consumer, count(*) AS parked
FROM pgchanges.parked
WHERE %(consumer)s::text IS NULL OR consumer = %(consumer)s
GROUP BY consumer

-- name: ops_emit_heartbeat
-- The logical source's heartbeat: a non-transactional message (written to the WAL at once, no transaction
-- needed), decoded by every slot of this database, so that a quiet slot still sees its position move.
SELECT pg_catalog.pg_logical_emit_message(false, 'pgchanges.heartbeat', %(content)s)::text AS lsn

-- name: ops_table_estimates
-- Rows of each table as the planner estimates them (reltuples; -1 before the first VACUUM or ANALYZE).
SELECT c.oid AS table_oid, c.reltuples::bigint AS estimate
FROM pg_catalog.pg_class c
WHERE c.oid = ANY (%(oids)s::oid[])

-- name: ops_replay_count
-- How many events `replay` would queue again (the progress bar's total).
SELECT count(*) AS events
FROM pgchanges.consumers c JOIN pgchanges.events_named v ON v.table_oid = ANY (c.table_oids)
WHERE c.name = %(consumer)s
  AND (%(since_id)s::bigint IS NULL OR v.id >= %(since_id)s)
  AND (%(since_time)s::timestamptz IS NULL OR v.created_at >= %(since_time)s)
