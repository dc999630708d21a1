-- Named queries of the notify source (see pgchanges.capture.queries).

-- name: purge_spill
-- Payloads too large for NOTIFY, past their retention (several listeners may need one: not removed on fetch).
DELETE FROM pgchanges.spill WHERE created_at < now() - make_interval(secs => %(retention)s)

-- name: spilled_payloads
SELECT id, payload FROM pgchanges.spill WHERE id = ANY(%(ids)s)
