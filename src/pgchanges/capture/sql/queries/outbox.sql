-- Queries of the outbox source, loaded by name (pgchanges.capture.queries). Parameters are %(name)s.

-- name: register_consumer
INSERT INTO pgchanges.consumers (name, table_oids, lanes) VALUES (%(consumer)s, %(table_oids)s, %(lanes)s)
ON CONFLICT (name) DO UPDATE
SET table_oids = ARRAY(SELECT DISTINCT unnest(pgchanges.consumers.table_oids || excluded.table_oids)),
    seen_at = now()
RETURNING lanes

-- name: create_lanes
INSERT INTO pgchanges.lanes (consumer, lane)
SELECT %(consumer)s, l FROM generate_series(0, %(lanes)s - 1) AS l
ON CONFLICT DO NOTHING

-- name: cut
-- Events that became visible since the consumer's last cut, split into lanes and batches (see 0008), at
-- most %(limit)s of them, in id order; the rest of the same snapshot is taken by the next cuts (see 0010).
-- %(seq)s is the event sequence as read before this transaction got its id (cut_mark_start).
WITH c AS (
    SELECT name, table_oids, lanes, cut_snapshot AS prev, cuts + 1 AS cut,
           coalesce(pending_snapshot, pg_current_snapshot()) AS cur, coalesce(pending_after, -1) AS after
    FROM pgchanges.consumers WHERE name = %(consumer)s
    FOR UPDATE SKIP LOCKED
),
low AS (  -- the mark below which every event was visible in prev
    SELECT f.cut_xid, f.seq FROM c CROSS JOIN LATERAL pgchanges.cut_floor_v1(c.name, c.prev) f
),
taken AS MATERIALIZED (
    SELECT e.id, e.table_oid, coalesce(e.new_row, e.old_row) AS row_data
    FROM c CROSS JOIN low
    JOIN pgchanges.events e ON e.id >= low.seq AND e.id > c.after AND e.table_oid = ANY (c.table_oids)
    WHERE pg_visible_in_snapshot(e.xid, c.cur) AND NOT pg_visible_in_snapshot(e.xid, c.prev)
    ORDER BY e.id
    LIMIT %(limit)s
),
fresh AS (
    SELECT t.id, pgchanges.lane_v1(pgchanges.row_key_v2(t.table_oid, k.key_columns, t.row_data), c.lanes) AS lane
    FROM taken t CROSS JOIN c
    LEFT JOIN pgchanges.captures k ON k.table_oid = t.table_oid AND k.source = 'outbox'
),
chunked AS (
    SELECT lane, id, (row_number() OVER (PARTITION BY lane ORDER BY id) - 1) / %(batch)s AS chunk FROM fresh
),
made AS (  -- grouped by hashing, without sorting again: readers order a batch's events by id
    INSERT INTO pgchanges.batches (consumer, lane, cut, chunk, event_ids, first_id)
    SELECT c.name, g.lane, c.cut, g.chunk, g.ids, g.first_id
    FROM (SELECT k.lane, k.chunk, array_agg(k.id) AS ids, min(k.id) AS first_id FROM chunked k
          GROUP BY k.lane, k.chunk) g
    CROSS JOIN c
    RETURNING cardinality(event_ids) AS size
),
marked AS (
    INSERT INTO pgchanges.cut_marks (consumer, cut_xid, seq)
    SELECT c.name, pg_current_xact_id(), %(seq)s FROM c
    ON CONFLICT (consumer, cut_xid) DO NOTHING
),
pruned AS (  -- marks older than the one used now are never needed again: xmin only grows
    DELETE FROM pgchanges.cut_marks m USING c, low WHERE m.consumer = c.name AND m.cut_xid < low.cut_xid
),
piece AS (  -- a full piece: more of the snapshot may be left for the next cut; otherwise the cut is complete
    SELECT count(*) < %(limit)s AS complete, max(id) AS last_id FROM taken
),
moved AS (
    UPDATE pgchanges.consumers s
    SET cut_snapshot = CASE WHEN n.complete THEN c.cur ELSE s.cut_snapshot END,
        pending_snapshot = CASE WHEN n.complete THEN NULL ELSE c.cur END,
        pending_after = CASE WHEN n.complete THEN NULL ELSE n.last_id END,
        cuts = c.cut, seen_at = now()
    FROM c CROSS JOIN piece n
    WHERE s.name = c.name
    RETURNING 1
)
SELECT (SELECT count(*) FROM moved) AS moved, coalesce((SELECT sum(size) FROM made), 0) AS made,
       (SELECT c.after >= 0 FROM c) AS continued

-- name: sequence_position
-- The first step of a cut (see 0008): the event sequence, read before this transaction gets its id.
SELECT last_value FROM pgchanges.event_seq

-- name: take_xid
SELECT pg_current_xact_id()

-- name: wake_others
SELECT pg_notify('pgchanges:outbox', '')
WHERE EXISTS (SELECT 1 FROM pgchanges.sleepers WHERE consumer = %(consumer)s AND until > now())

-- name: claim_lane
-- A lane with work, locked for this transaction: one worker per lane keeps each row's events in order. Each
-- worker starts looking at its own lane number, so that workers rarely meet on the same lane. The lane's
-- batch is read by the next statement: its snapshot is taken after the lock, so it sees what the lane's
-- previous holder committed (read in this statement's snapshot, a batch just finished could be read again).
-- The lane is also left in the transaction's setting pgchanges.lane, so that the next statement can be sent
-- with this one (one round trip); it is set above the locking, for the locked lane only (a lane skipped as
-- locked by another worker never reaches the outer SELECT).
SELECT c.lane, pg_catalog.set_config('pgchanges.lane', c.lane::text, true) AS lane_setting
FROM (
SELECT l.lane
FROM pgchanges.lanes l
WHERE l.consumer = %(consumer)s
  AND (EXISTS (SELECT 1 FROM pgchanges.batches b WHERE b.consumer = l.consumer AND b.lane = l.lane)
       OR EXISTS (SELECT 1 FROM pgchanges.parked p  -- a parked event that may run: due, the oldest of its row
                  WHERE p.consumer = l.consumer AND p.lane = l.lane AND p.run_at <= now()
                    AND NOT EXISTS (SELECT 1 FROM pgchanges.parked q
                                    WHERE q.consumer = p.consumer AND q.row_key = p.row_key
                                      AND q.event_id < p.event_id)))
ORDER BY l.lane < %(start)s, l.lane
LIMIT 1
FOR UPDATE OF l SKIP LOCKED
) c

-- name: cut_ahead
-- Whether the worker should cut the next piece of a snapshot being cut in pieces once its batch is done: about
-- one batch per lane is left, so the others would soon find no work (see 0010).
SELECT c.pending_snapshot IS NOT NULL
       AND (SELECT count(*) FROM pgchanges.batches b WHERE b.consumer = c.name) <= c.lanes AS cut_ahead
FROM pgchanges.consumers c WHERE c.name = %(consumer)s

-- name: lane_parked
SELECT event_id, row_key, attempts, last_error, run_at <= now() AS due
FROM pgchanges.parked WHERE consumer = %(consumer)s AND lane = %(lane)s
ORDER BY event_id

-- name: lane_batch
-- The lane's oldest batch, and whether the lane has parked events. Names are looked up once per table of the
-- batch, not per event; the row key only when the lane has parked events to compare it with (its JSON lookup
-- is most of the statement's cost per event: bench/results/design-measurements.md). The lane is the one
-- claim_lane locked in this transaction (none: no rows).
WITH l AS (SELECT nullif(pg_catalog.current_setting('pgchanges.lane', true), '')::integer AS lane),
p AS (
    SELECT EXISTS (SELECT 1 FROM pgchanges.parked WHERE consumer = %(consumer)s AND lane = (SELECT lane FROM l))
           AS has_parked
),
b AS (
    SELECT cut, chunk, event_ids FROM pgchanges.batches
    WHERE consumer = %(consumer)s AND lane = (SELECT lane FROM l)
    ORDER BY cut, chunk LIMIT 1
),
ev AS MATERIALIZED (
    SELECT e.id, e.xid, e.table_oid, e.op, e.new_row, e.old_row
    FROM b CROSS JOIN LATERAL unnest(b.event_ids) AS u(id)
    JOIN pgchanges.events e ON e.id = u.id
),
nm AS (
    SELECT o.table_oid, k.key_columns,
           coalesce(n.nspname, k.schema_name, '?')::text AS schema_name,
           coalesce(r.relname, k.table_name, o.table_oid::text)::text AS table_name,
           EXISTS (SELECT 1 FROM pgchanges.table_names t WHERE t.table_oid = o.table_oid) AS renamed
    FROM (SELECT DISTINCT table_oid FROM ev) o
    LEFT JOIN pg_catalog.pg_class r ON r.oid = o.table_oid
    LEFT JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
    LEFT JOIN pgchanges.captures k ON k.table_oid = o.table_oid AND k.source = 'outbox'
)
SELECT p.has_parked, x.*
FROM p LEFT JOIN LATERAL (
    SELECT b.cut, b.chunk, ev.id AS event_id,
           CASE WHEN p.has_parked
                THEN pgchanges.row_key_v2(ev.table_oid, nm.key_columns, coalesce(ev.new_row, ev.old_row)) END
               AS row_key,
           ev.xid::text::bigint AS xid, ev.table_oid, coalesce(h.schema_name, nm.schema_name) AS schema_name,
           coalesce(h.table_name, nm.table_name) AS table_name, ev.op, ev.new_row::text AS new_row,
           ev.old_row::text AS old_row
    FROM b CROSS JOIN ev JOIN nm USING (table_oid)
    LEFT JOIN LATERAL (  -- the name the table had when the event was written, if renamed or dropped since
        SELECT t.schema_name::text, t.table_name::text FROM pgchanges.table_names t
        WHERE nm.renamed AND t.table_oid = ev.table_oid AND t.until_event_id > ev.id
        ORDER BY t.until_event_id LIMIT 1) h ON true
) x ON true
ORDER BY x.event_id

-- name: events_by_id
SELECT v.id AS event_id, v.row_key, v.xid::text::bigint AS xid, v.table_oid, v.schema_name, v.table_name,
       v.op, v.new_row::text AS new_row, v.old_row::text AS old_row
FROM unnest(%(ids)s::bigint[]) AS u(id)
JOIN pgchanges.events_named v ON v.id = u.id
ORDER BY v.id

-- name: delete_batch
DELETE FROM pgchanges.batches
WHERE consumer = %(consumer)s AND lane = %(lane)s AND cut = %(cut)s AND chunk = %(chunk)s

-- name: unpark
DELETE FROM pgchanges.parked WHERE consumer = %(consumer)s AND event_id = ANY (%(ids)s::bigint[])

-- name: park
INSERT INTO pgchanges.parked (consumer, event_id, lane, row_key, attempts, run_at, last_error)
SELECT %(consumer)s, f.id, %(lane)s, pgchanges.row_key_v2(e.table_oid, k.key_columns, coalesce(e.new_row, e.old_row)),
       f.attempts, now() + make_interval(secs => f.delay), f.error
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(delays)s::float8[], %(errors)s::text[])
     AS f(id, attempts, delay, error)
JOIN pgchanges.events e ON e.id = f.id
LEFT JOIN pgchanges.captures k ON k.table_oid = e.table_oid AND k.source = 'outbox'
ON CONFLICT (consumer, event_id) DO UPDATE
SET attempts = excluded.attempts, run_at = excluded.run_at, last_error = excluded.last_error

-- name: bury
WITH gone AS (
    DELETE FROM pgchanges.parked WHERE consumer = %(consumer)s AND event_id = ANY (%(ids)s::bigint[])
)
INSERT INTO pgchanges.dead_letters (consumer, event_id, attempts, error)
SELECT %(consumer)s, f.id, f.attempts, f.error
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(errors)s::text[]) AS f(id, attempts, error)
ON CONFLICT (consumer, event_id) DO UPDATE
SET attempts = excluded.attempts, error = excluded.error, failed_at = now()

-- name: sleep
-- Writers NOTIFY from now until this worker wakes, or at the latest %(seconds)s from now.
SELECT pgchanges.sleep_v1(%(consumer)s, %(worker)s, %(seconds)s)

-- name: wake
SELECT pgchanges.wake_v1(%(consumer)s, %(worker)s)

-- name: writers_in_flight
-- Other transactions that have written events and not yet ended: they hold ROW EXCLUSIVE on pgchanges.events
-- until they end (readers hold ACCESS SHARE). Asked right after a worker announced its sleep: one of these may
-- have checked for sleepers before the announcement, and so will not wake the worker when it commits.
SELECT coalesce(array_agg(DISTINCT l.virtualtransaction), '{}') AS writers
FROM pg_catalog.pg_locks l
WHERE l.locktype = 'relation' AND l.relation = 'pgchanges.events'::regclass AND l.mode = 'RowExclusiveLock'
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
  AND l.pid <> pg_backend_pid()

-- name: next_run_at
-- Seconds until the next runnable parked event (the oldest of its row) is due: negative when due now, NULL
-- when nothing is parked.
SELECT extract(epoch FROM min(p.run_at) - now()) AS seconds FROM pgchanges.parked p
WHERE p.consumer = %(consumer)s
  AND NOT EXISTS (SELECT 1 FROM pgchanges.parked q
                  WHERE q.consumer = p.consumer AND q.row_key = p.row_key AND q.event_id < p.event_id)


-- name: purge_events
-- Events every consumer has cut, that no batch, parked event or dead letter still needs, past the retention.
-- Only ids below the oldest event still within the retention are looked at (ids follow creation closely; an
-- old event behind a younger id waits for the next round): with nothing to purge this reads one index entry,
-- not every retained event.
DELETE FROM pgchanges.events e
WHERE e.id IN (
    SELECT x.id FROM pgchanges.events x
    WHERE x.created_at < now() - make_interval(secs => %(retention)s)
      AND x.id < coalesce((SELECT min(y.id) FROM pgchanges.events y
                           WHERE y.created_at >= now() - make_interval(secs => %(retention)s)),
                          9223372036854775807)
      AND x.id < coalesce((SELECT min(first_id) FROM pgchanges.batches), 9223372036854775807)
      AND NOT EXISTS (SELECT 1 FROM pgchanges.consumers c
                      WHERE x.table_oid = ANY (c.table_oids) AND NOT pg_visible_in_snapshot(x.xid, c.cut_snapshot))
      AND NOT EXISTS (SELECT 1 FROM pgchanges.parked p WHERE p.event_id = x.id)
      AND NOT EXISTS (SELECT 1 FROM pgchanges.dead_letters d WHERE d.event_id = x.id)
    ORDER BY x.id
    LIMIT %(limit)s)

-- name: replay
INSERT INTO pgchanges.parked (consumer, event_id, lane, row_key)
SELECT c.name, v.id, pgchanges.lane_v1(v.row_key, c.lanes), v.row_key
FROM pgchanges.consumers c JOIN pgchanges.events_named v ON v.table_oid = ANY (c.table_oids)
WHERE c.name = %(consumer)s
  AND (pg_visible_in_snapshot(v.xid, c.cut_snapshot)  -- later events are still to be cut, but for the pieces
       OR (v.id <= c.pending_after AND pg_visible_in_snapshot(v.xid, c.pending_snapshot)))  -- cut so far
  AND (%(since_id)s::bigint IS NULL OR v.id >= %(since_id)s)
  AND (%(below_id)s::bigint IS NULL OR v.id < %(below_id)s)  -- one piece of the ids, for progress
  AND (%(since_time)s::timestamptz IS NULL OR v.created_at >= %(since_time)s)
ON CONFLICT (consumer, event_id) DO UPDATE SET attempts = 0, run_at = '-infinity', last_error = NULL

-- name: replay_range
-- The ids replay goes through, in pieces (the events of the consumer's tables from since_id / since_time).
SELECT min(v.id) AS first_id, max(v.id) AS last_id, count(*) AS events
FROM pgchanges.consumers c JOIN pgchanges.events_named v ON v.table_oid = ANY (c.table_oids)
WHERE c.name = %(consumer)s
  AND (%(since_id)s::bigint IS NULL OR v.id >= %(since_id)s)
  AND (%(since_time)s::timestamptz IS NULL OR v.created_at >= %(since_time)s)

-- name: retry_dead_letters
WITH revived AS (
    DELETE FROM pgchanges.dead_letters d
    WHERE d.consumer = %(consumer)s AND (%(ids)s::bigint[] IS NULL OR d.event_id = ANY (%(ids)s))
    RETURNING d.consumer, d.event_id
)
INSERT INTO pgchanges.parked (consumer, event_id, lane, row_key)
SELECT r.consumer, v.id, pgchanges.lane_v1(v.row_key, c.lanes), v.row_key
FROM revived r
JOIN pgchanges.events_named v ON v.id = r.event_id
JOIN pgchanges.consumers c ON c.name = r.consumer
ON CONFLICT (consumer, event_id) DO UPDATE SET attempts = 0, run_at = '-infinity', last_error = NULL
RETURNING event_id

-- name: drop_dead_letters
DELETE FROM pgchanges.dead_letters
WHERE consumer = %(consumer)s AND (%(ids)s::bigint[] IS NULL OR event_id = ANY (%(ids)s))
RETURNING event_id

-- name: consumer_status
WITH locked AS (  -- lanes a worker holds now (its FOR UPDATE conflicts with KEY SHARE)
    SELECT l.consumer, l.lane FROM pgchanges.lanes l
    WHERE (%(consumer)s::text IS NULL OR l.consumer = %(consumer)s)
    EXCEPT
    SELECT l.consumer, l.lane FROM (
        SELECT consumer, lane FROM pgchanges.lanes
        WHERE %(consumer)s::text IS NULL OR consumer = %(consumer)s
        FOR KEY SHARE SKIP LOCKED) l
),
uncut AS (  -- events not cut yet, found above the consumer's mark as the cut finds them (the pieces of a
            -- snapshot being cut in pieces are cut: see 0010)
    SELECT c.name, count(e.id) AS n, min(e.created_at) AS oldest
    FROM pgchanges.consumers c
    CROSS JOIN LATERAL pgchanges.cut_floor_v1(c.name, c.cut_snapshot) low
    LEFT JOIN pgchanges.events e
      ON e.id >= low.seq AND e.table_oid = ANY (c.table_oids) AND NOT pg_visible_in_snapshot(e.xid, c.cut_snapshot)
         AND NOT coalesce(e.id <= c.pending_after AND pg_visible_in_snapshot(e.xid, c.pending_snapshot), false)
    GROUP BY c.name
)
SELECT c.name,
       u.n + (SELECT coalesce(sum(cardinality(b.event_ids)), 0) FROM pgchanges.batches b WHERE b.consumer = c.name)
           + (SELECT count(*) FROM pgchanges.parked p WHERE p.consumer = c.name) AS backlog,
       extract(epoch FROM now() - least(
           u.oldest,
           (SELECT min(e.created_at) FROM pgchanges.batches b JOIN pgchanges.events e ON e.id = b.first_id
            WHERE b.consumer = c.name),
           (SELECT min(e.created_at) FROM pgchanges.parked p JOIN pgchanges.events e ON e.id = p.event_id
            WHERE p.consumer = c.name))) AS oldest_pending_seconds,
       (SELECT coalesce(sum(cardinality(f.event_ids)), 0) FROM (
            SELECT DISTINCT ON (b.lane) b.event_ids FROM pgchanges.batches b
            JOIN locked k ON k.consumer = b.consumer AND k.lane = b.lane
            WHERE b.consumer = c.name ORDER BY b.lane, b.cut, b.chunk) f)
         + (SELECT count(*) FROM pgchanges.parked p  -- delivered to a stream, awaiting its ack
            WHERE p.consumer = c.name AND p.attempts = 0 AND p.run_at > now()) AS in_flight,
       (SELECT count(*) FROM pgchanges.parked p WHERE p.consumer = c.name AND p.attempts > 0) AS retrying,
       (SELECT count(*) FROM pgchanges.dead_letters d WHERE d.consumer = c.name) AS dead_letters,
       (SELECT count(*) FROM pgchanges.sleepers s WHERE s.consumer = c.name AND s.until > now()) AS sleeping_workers,
       c.seen_at
FROM pgchanges.consumers c JOIN uncut u ON u.name = c.name
WHERE %(consumer)s::text IS NULL OR c.name = %(consumer)s
ORDER BY c.name

-- name: add_consumer_rule
INSERT INTO pgchanges.consumer_rules (consumer, schema_like, table_like)
VALUES (%(consumer)s, %(schema_like)s, %(table_like)s)
ON CONFLICT DO NOTHING

-- name: maintenance_lock
SELECT pg_try_advisory_xact_lock(%(lock)s) AS locked
