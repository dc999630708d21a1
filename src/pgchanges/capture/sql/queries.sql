-- Queries of the outbox source, loaded by name (pgchanges.capture.queries). Parameters are %(name)s.

-- name: register_consumer
INSERT INTO pgchanges.consumers (name, table_oids) VALUES (%(consumer)s, %(table_oids)s)
ON CONFLICT (name) DO UPDATE
SET table_oids = ARRAY(SELECT DISTINCT unnest(pgchanges.consumers.table_oids || excluded.table_oids)),
    seen_at = now()

-- name: materialize
WITH snap AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon),
consumer AS (
    SELECT name, table_oids, horizon AS old_horizon FROM pgchanges.consumers WHERE name = %(consumer)s FOR UPDATE
),
fresh AS (
    INSERT INTO pgchanges.queue (consumer, event_id, xid, row_key)
    SELECT c.name, e.id, e.xid,
           CASE WHEN cardinality(k.key_columns) = 1
                THEN e.table_oid::text || ':' || coalesce(coalesce(e.new_row, e.old_row) ->> k.key_columns[1], '')
                ELSE pgchanges.row_key_v1(e.table_oid, coalesce(e.new_row, e.old_row)) END
    FROM consumer c
    JOIN pgchanges.events e ON e.xid >= c.old_horizon AND e.table_oid = ANY (c.table_oids)
    LEFT JOIN pgchanges.captures k ON k.table_oid = e.table_oid AND k.source = 'outbox'
    ORDER BY e.id
    ON CONFLICT DO NOTHING
    RETURNING 1
),
moved AS (
    UPDATE pgchanges.consumers SET horizon = (SELECT horizon FROM snap), seen_at = now()
    WHERE name = %(consumer)s AND horizon < (SELECT horizon FROM snap)
    RETURNING horizon
)
SELECT (SELECT count(*) FROM fresh),
       coalesce((SELECT horizon FROM moved), (SELECT old_horizon FROM consumer))::text::bigint

-- name: forget_done
DELETE FROM pgchanges.queue q USING pgchanges.consumers c
WHERE q.consumer = %(consumer)s AND c.name = q.consumer AND q.done AND q.xid < c.horizon

-- name: claim
-- Claiming deletes: the transaction stays open while handlers run, so to other workers the rows are still
-- pending (an uncommitted delete) and locked (SKIP LOCKED passes them); a crash rolls the delete back.
-- Events that fail, or that wait behind an earlier event of their row, are put back before commit.
WITH picked AS (
    SELECT q.ctid FROM pgchanges.queue q
    WHERE q.consumer = %(consumer)s AND q.run_at <= now()
      -- a scalar subquery, not NOT EXISTS: it stays a per-row index probe on (consumer, row_key, event_id)
      -- whatever the statistics say; as an anti-join on a freshly filled queue the planner chose a scan of
      -- the whole queue per candidate (quadratic: 180 events/s at a backlog of 20,000)
      AND (SELECT 1 FROM pgchanges.queue w
           WHERE w.consumer = q.consumer AND w.row_key = q.row_key AND w.event_id < q.event_id
             AND w.run_at > now() AND NOT w.done
           LIMIT 1) IS NULL
    ORDER BY q.event_id
    LIMIT %(limit)s
    FOR UPDATE OF q SKIP LOCKED
),
claimed AS (
    -- by ctid (a TID scan; the rows are locked, so they cannot move): joined on the key instead, the planner
    -- hashed a sequential scan of the whole queue (19 ms of a 22 ms claim at a backlog of 10,000, measured)
    DELETE FROM pgchanges.queue q WHERE q.ctid = ANY (ARRAY(SELECT ctid FROM picked))
    RETURNING q.event_id, q.xid, q.row_key, q.attempts, q.last_error
)
SELECT c.event_id, c.row_key, c.attempts,
       EXISTS (SELECT 1 FROM pgchanges.queue p
               WHERE p.consumer = %(consumer)s AND p.row_key = c.row_key AND p.event_id < c.event_id
                 AND NOT p.done AND p.event_id NOT IN (SELECT event_id FROM claimed)) AS blocked,
       c.xid::text::bigint, e.table_oid, coalesce(h.schema_name, n.nspname, k.schema_name, '?')::text,
       coalesce(h.table_name, r.relname, k.table_name, e.table_oid::text)::text, e.op, e.new_row::text,
       e.old_row::text, c.last_error
FROM claimed c
JOIN pgchanges.events e ON e.id = c.event_id
LEFT JOIN pg_catalog.pg_class r ON r.oid = e.table_oid
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
LEFT JOIN pgchanges.captures k ON k.table_oid = e.table_oid AND k.source = 'outbox'
LEFT JOIN LATERAL (  -- the name the table had when the event was written, if it was renamed or dropped since
    SELECT t.schema_name, t.table_name FROM pgchanges.table_names t
    WHERE t.table_oid = e.table_oid AND t.until_event_id > e.id ORDER BY t.until_event_id LIMIT 1) h ON true
ORDER BY c.event_id

-- name: tombstone
-- Finished events the horizon has not passed yet stay as done rows, so they are not copied again.
INSERT INTO pgchanges.queue (consumer, event_id, xid, row_key, run_at, done)
SELECT %(consumer)s, f.id, f.xid::text::xid8, f.row_key, 'infinity', true
FROM unnest(%(ids)s::bigint[], %(xids)s::bigint[], %(row_keys)s::text[]) AS f(id, xid, row_key)
WHERE f.xid::text::xid8 >= (SELECT horizon FROM pgchanges.consumers WHERE name = %(consumer)s)
ON CONFLICT (consumer, event_id) DO UPDATE SET done = true, run_at = 'infinity'

-- name: requeue
INSERT INTO pgchanges.queue (consumer, event_id, xid, row_key, attempts, run_at, last_error)
SELECT %(consumer)s, f.id, f.xid::text::xid8, f.row_key, f.attempts, now() + make_interval(secs => f.delay), f.error
FROM unnest(%(ids)s::bigint[], %(xids)s::bigint[], %(row_keys)s::text[], %(attempts)s::int[],
            %(delays)s::float8[], %(errors)s::text[]) AS f(id, xid, row_key, attempts, delay, error)

-- name: bury
INSERT INTO pgchanges.dead_letters (consumer, event_id, attempts, error)
SELECT %(consumer)s, f.id, f.attempts, f.error
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(errors)s::text[]) AS f(id, attempts, error)
ON CONFLICT (consumer, event_id) DO UPDATE
SET attempts = excluded.attempts, error = excluded.error, failed_at = now()

-- name: sleep
INSERT INTO pgchanges.sleepers (consumer, worker) VALUES (%(consumer)s, %(worker)s) ON CONFLICT DO NOTHING

-- name: wake
DELETE FROM pgchanges.sleepers WHERE consumer = %(consumer)s AND worker = %(worker)s

-- name: next_run_at
SELECT extract(epoch FROM greatest(min(run_at), now()) - now()) FROM pgchanges.queue
WHERE consumer = %(consumer)s AND NOT done

-- name: purge_events
DELETE FROM pgchanges.events e
WHERE e.id IN (
    SELECT x.id FROM pgchanges.events x
    WHERE x.created_at < now() - make_interval(secs => %(retention)s)
      AND x.xid < coalesce((SELECT min(horizon) FROM pgchanges.consumers), pg_snapshot_xmin(pg_current_snapshot()))
      AND NOT EXISTS (SELECT 1 FROM pgchanges.queue q WHERE q.event_id = x.id AND NOT q.done)
      AND NOT EXISTS (SELECT 1 FROM pgchanges.dead_letters d WHERE d.event_id = x.id)
    ORDER BY x.id
    LIMIT %(limit)s)

-- name: replay
INSERT INTO pgchanges.queue (consumer, event_id, xid, row_key)
SELECT c.name, e.id, e.xid, pgchanges.row_key_v1(e.table_oid, coalesce(e.new_row, e.old_row))
FROM pgchanges.consumers c JOIN pgchanges.events e ON e.table_oid = ANY (c.table_oids)
WHERE c.name = %(consumer)s
  AND (%(since_id)s::bigint IS NULL OR e.id >= %(since_id)s)
  AND (%(since_time)s::timestamptz IS NULL OR e.created_at >= %(since_time)s)
ON CONFLICT (consumer, event_id) DO UPDATE SET attempts = 0, run_at = '-infinity', last_error = NULL, done = false

-- name: dead_letters
SELECT d.consumer, d.event_id, d.attempts, d.error, d.failed_at,
       coalesce(n.nspname, k.schema_name, '?'), coalesce(r.relname, k.table_name, e.table_oid::text), e.op
FROM pgchanges.dead_letters d
LEFT JOIN pgchanges.events e ON e.id = d.event_id
LEFT JOIN pg_catalog.pg_class r ON r.oid = e.table_oid
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
LEFT JOIN pgchanges.captures k ON k.table_oid = e.table_oid AND k.source = 'outbox'
WHERE %(consumer)s::text IS NULL OR d.consumer = %(consumer)s
ORDER BY d.consumer, d.event_id

-- name: retry_dead_letters
WITH revived AS (
    DELETE FROM pgchanges.dead_letters d
    WHERE d.consumer = %(consumer)s AND (%(ids)s::bigint[] IS NULL OR d.event_id = ANY (%(ids)s))
    RETURNING d.consumer, d.event_id
)
INSERT INTO pgchanges.queue (consumer, event_id, xid, row_key)
SELECT r.consumer, e.id, e.xid, pgchanges.row_key_v1(e.table_oid, coalesce(e.new_row, e.old_row))
FROM revived r JOIN pgchanges.events e ON e.id = r.event_id
ON CONFLICT (consumer, event_id) DO UPDATE SET attempts = 0, run_at = '-infinity', last_error = NULL, done = false
RETURNING event_id

-- name: drop_dead_letters
DELETE FROM pgchanges.dead_letters
WHERE consumer = %(consumer)s AND (%(ids)s::bigint[] IS NULL OR event_id = ANY (%(ids)s))
RETURNING event_id

-- name: consumer_status
SELECT c.name,
       (SELECT count(*) FROM pgchanges.queue q WHERE q.consumer = c.name AND NOT q.done)
         + (SELECT count(*) FROM pgchanges.events e
            WHERE e.xid >= c.horizon AND e.table_oid = ANY (c.table_oids)
              AND NOT EXISTS (SELECT 1 FROM pgchanges.queue q WHERE q.consumer = c.name AND q.event_id = e.id))
         AS backlog,
       extract(epoch FROM now() - least(
           (SELECT min(e.created_at) FROM pgchanges.queue q JOIN pgchanges.events e ON e.id = q.event_id
            WHERE q.consumer = c.name AND NOT q.done),
           (SELECT min(e.created_at) FROM pgchanges.events e
            WHERE e.xid >= c.horizon AND e.table_oid = ANY (c.table_oids)
              AND NOT EXISTS (SELECT 1 FROM pgchanges.queue q WHERE q.consumer = c.name AND q.event_id = e.id))
       )) AS oldest_pending_seconds,
       (SELECT count(*) FROM pgchanges.queue q WHERE q.consumer = c.name AND NOT q.done)
         - (SELECT count(*) FROM (SELECT 1 FROM pgchanges.queue q WHERE q.consumer = c.name AND NOT q.done
                                   FOR KEY SHARE SKIP LOCKED) free) AS in_flight,
       (SELECT count(*) FROM pgchanges.queue q WHERE q.consumer = c.name AND q.attempts > 0 AND NOT q.done)
         AS retrying,
       (SELECT count(*) FROM pgchanges.dead_letters d WHERE d.consumer = c.name) AS dead_letters,
       (SELECT count(*) FROM pgchanges.sleepers s WHERE s.consumer = c.name) AS sleeping_workers,
       c.seen_at
FROM pgchanges.consumers c
WHERE %(consumer)s::text IS NULL OR c.name = %(consumer)s
ORDER BY c.name
