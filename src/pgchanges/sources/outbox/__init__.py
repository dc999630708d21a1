"""The outbox source: durable, at-least-once delivery from an event table, with competing workers.

Row triggers write each change into ``pgchanges.events`` inside the writer's transaction. A named consumer
reads them in batches, without copying them (``capture/sql/0008_outbox_lanes.sql``):

* a **cut** takes the events that became visible since the consumer's last cut snapshot (an event that commits
  late lands in a later cut, it is never skipped) and splits them by row key into the consumer's ``lanes``;
  a backlog is cut in pieces (``capture/sql/0010_outbox_cut_pieces.sql``);
* a worker locks one lane (``FOR UPDATE SKIP LOCKED``) and handles its oldest batch in a transaction that stays
  open while the handlers run. The batch is acknowledged (its row deleted) in that transaction, after its
  handlers returned; a handler declared with ``transaction=True`` gets the transaction, so its own writes and
  the acknowledgement commit together (exactly once for database work);
* all events of a row (same table and primary key) fall into one lane, and one worker at a time holds a lane,
  so a row's events are handled in commit order however many workers run; different lanes run in parallel;
* a worker that dies, or loses its connection, leaves its transaction to be rolled back by the server: the
  batch becomes claimable again at once (duplicates are limited to what was in flight);
* a failing handler's event is **parked** and retried with exponential backoff and jitter, later events of its
  row wait parked behind it; after ``max_attempts`` it moves to ``pgchanges.dead_letters`` with the error.

The parts, each with one job: :mod:`.source` (the source: set-up, workers, the stream), :mod:`.worker` (one
worker: claim, hand over, settle, reconnect), :mod:`.store` (the named queries), :mod:`.claims` (what a claim
holds and the retry decision), :mod:`.decoding` (event rows to Changes), :mod:`.wakeup` (how idle workers
sleep without costing writers), :mod:`.stream` (acknowledgements of a stream), :mod:`.transaction`.
"""

from pgchanges.retry import RetryPolicy
from pgchanges.sources.outbox.source import OutboxSource
from pgchanges.sources.outbox.transaction import Transaction

__all__ = ["OutboxSource", "RetryPolicy", "Transaction"]
