-- Queries of operating the outbox from outside a worker (pgchanges.capture.outbox_admin), loaded by name
-- (pgchanges.capture.queries); the statements it shares with the workers are in outbox.sql. Parameters are
-- %(name)s.

-- name: outbox_consumer_exists
SELECT EXISTS (SELECT 1 FROM pgchanges.consumers WHERE name = %(consumer)s) AS present

-- name: dead_letter_list
-- The dead letters of one consumer (of all when NULL), with the table and operation of their event ('?' where
-- the event is gone).
SELECT d.consumer, d.event_id, d.attempts, d.error, d.failed_at,
       coalesce(v.schema_name, '?') AS schema_name, coalesce(v.table_name, '?') AS table_name, v.op
FROM pgchanges.dead_letters d
LEFT JOIN pgchanges.events_named v ON v.id = d.event_id
WHERE %(consumer)s::text IS NULL OR d.consumer = %(consumer)s
ORDER BY d.consumer, d.event_id
