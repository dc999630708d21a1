-- Cuts in pieces. A cut used to take every event that became visible since the consumer's last cut in one
-- statement: after downtime that is one huge statement (all of the backlog sorted at once, every worker
-- waiting for it). Now a cut takes at most a set number of events, in id order, of the snapshot it started
-- with; the next cuts take the rest of that same snapshot (ids above pending_after) before a new snapshot
-- is started. cut_snapshot moves to the snapshot only when all of it is cut, so cut_floor_v1 and every
-- argument of 0008 stay as they were: pieces only split the events of one cut by id.
--
-- Order holds as before: the pieces of one snapshot are taken in id order and numbered as cuts in that
-- order, and a row's events (which commit in id order) therefore reach its lane in commit order.
ALTER TABLE pgchanges.consumers
    ADD COLUMN pending_snapshot pg_snapshot,  -- the snapshot being cut in pieces, NULL when none is
    ADD COLUMN pending_after bigint;          -- the largest event id cut of it so far
