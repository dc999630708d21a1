-- Named queries of periodic tasks (pgchanges.periodic). "Now" is coalesce(%(now)s, now()): the database's
-- clock, which every worker shares, unless the scheduler was given a clock of its own (tests).

-- name: periodic_now
SELECT coalesce(%(now)s::timestamptz, now()) AS now

-- name: periodic_register
-- A task keeps its next run when its schedule is unchanged; a changed schedule starts from the new one.
INSERT INTO pgchanges.periodic (name, spec, next_run_at) VALUES (%(name)s, %(spec)s, %(first)s)
ON CONFLICT (name) DO UPDATE SET spec = excluded.spec,
    next_run_at = CASE WHEN pgchanges.periodic.spec = excluded.spec
                       THEN pgchanges.periodic.next_run_at ELSE excluded.next_run_at END

-- name: periodic_claim
-- The task, if it is due and no other worker holds it.
SELECT next_run_at, coalesce(%(now)s::timestamptz, now()) AS now FROM pgchanges.periodic
WHERE name = %(name)s AND next_run_at <= coalesce(%(now)s::timestamptz, now())
FOR UPDATE SKIP LOCKED

-- name: periodic_skip
UPDATE pgchanges.periodic SET next_run_at = %(following)s WHERE name = %(name)s

-- name: periodic_started
UPDATE pgchanges.periodic SET next_run_at = %(following)s, last_started_at = %(now)s, runs = runs + 1
WHERE name = %(name)s

-- name: periodic_finished
UPDATE pgchanges.periodic
SET last_finished_at = coalesce(%(now)s::timestamptz, now()), last_error = %(error)s
WHERE name = %(name)s

-- name: periodic_wait
SELECT extract(epoch FROM min(next_run_at) - coalesce(%(now)s::timestamptz, now())) AS seconds
FROM pgchanges.periodic WHERE name = ANY(%(names)s)
