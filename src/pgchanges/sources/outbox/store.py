"""The outbox's data access: each method runs named queries (``capture/sql/queries/outbox.sql``) on a connection.

Methods are synchronous and take the connection: workers call them in a worker thread
(:class:`~pgchanges.db.threaded.ThreadedConnection`), several per hand-off. A claim's transaction stays open
from :meth:`OutboxStore.claim` until :meth:`OutboxStore.finish` commits it; the schema and the argument for
cuts, marks and lanes are in ``capture/sql/0008_outbox_lanes.sql`` and ``0010_outbox_cut_pieces.sql``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row

from pgchanges.capture import install as capture
from pgchanges.capture.queries import Columns, fetch_all, fetch_one, query, run
from pgchanges.names import TableName
from pgchanges.sources.outbox.claims import Claim, Claimed, Settlement
from pgchanges.sources.outbox.decoding import EventDecoder

log = logging.getLogger("pgchanges.sources.outbox")

MAINTENANCE_EVERY_SECONDS = 60.0
PURGE_BATCH = 10_000
MAINTENANCE_LOCK = 0x70676368_6D  # "pgchm"
#: A cut takes at most this many batches per lane of events; the rest of its snapshot goes to the next cuts,
#: so that one statement stays short however large the backlog (see 0010).
CUT_PIECE_BATCHES = 16


class OutboxStore:
    """The queries of consumer ``consumer`` with ``lanes`` lanes and batches of ``batch_size`` events."""

    def __init__(self, consumer: str, lanes: int, batch_size: int, retention: float, start_lane: int) -> None:
        self.consumer = consumer
        self.lanes = lanes
        self.batch_size = batch_size
        self.retention = retention
        self.start_lane = start_lane  # each worker looks at its own lane first, so that workers rarely meet
        self.decoder = EventDecoder(consumer)
        self._last_maintenance = -MAINTENANCE_EVERY_SECONDS  # due at the first claim

    # -- setting up ----------------------------------------------------------------------------------------

    def register(self, conn: psycopg.Connection[Any], tables: Sequence[TableName]) -> int:
        """Register the consumer, its lanes and its table rules; the consumer's number of lanes (set when it
        was created: a different ``lanes`` later is ignored, with a warning)."""
        with conn.transaction():
            oids = [oid for _, oid in capture.resolve(conn, tables)]
            row = fetch_one(
                conn, "register_consumer", {"consumer": self.consumer, "table_oids": oids, "lanes": self.lanes}
            )
            if row is not None and row.lanes != self.lanes:
                log.warning("consumer %s has %d lanes (set when it was created); using those", self.consumer, row.lanes)
                self.lanes = int(row.lanes)
                self.start_lane %= self.lanes
            run(conn, "create_lanes", {"consumer": self.consumer, "lanes": self.lanes})
            for table in tables:
                schema_like, table_like = table.like_patterns
                run(
                    conn,
                    "add_consumer_rule",
                    {"consumer": self.consumer, "schema_like": schema_like, "table_like": table_like},
                )
        return self.lanes

    # -- claiming ------------------------------------------------------------------------------------------

    def claim(self, conn: psycopg.Connection[Any]) -> Claim | None:
        """Lock a lane with work and read it, in a transaction that stays open until :meth:`finish`.

        No lane has work: cut the events that became visible since the last cut, and look again.
        """
        params = {"consumer": self.consumer, "start": self.start_lane}
        for attempt in (1, 2):
            with conn.pipeline():  # the claim and the read of the claimed lane in one round trip
                claimed = conn.cursor(row_factory=namedtuple_row).execute(query("claim_lane"), params)
                batch = conn.execute(query("lane_batch"), params)  # plain rows, read by name through Columns
                ahead = conn.cursor(row_factory=namedtuple_row).execute(query("cut_ahead"), params)
            row: Any = claimed.fetchone()
            if row is not None:
                claim = self._read_lane(conn, int(row.lane), batch.fetchall(), Columns(batch))
                cut_ahead: Any = ahead.fetchone()
                claim.cut_ahead = bool(cut_ahead and cut_ahead.cut_ahead)
                return claim
            conn.commit()
            if attempt == 1 and not self.cut(conn):
                return None
        return None

    def cut(self, conn: psycopg.Connection[Any]) -> bool:
        """Cut new events into batches (one worker at a time; the others skip); whether any were cut.

        A cut that only found the end of the snapshot it was cutting in pieces is followed at once by a cut of
        a new snapshot.
        """
        params: dict[str, Any] = {
            "consumer": self.consumer,
            "batch": self.batch_size,
            "limit": self.batch_size * self.lanes * CUT_PIECE_BATCHES,
        }
        while True:
            seq = fetch_one(conn, "sequence_position")  # first the sequence, then an xid (see 0008)
            run(conn, "take_xid")
            row = fetch_one(conn, "cut", {**params, "seq": int(seq.last_value) if seq else 0})
            made, continued = (int(row.made), bool(row.continued)) if row else (0, False)
            if made:
                run(conn, "wake_others", {"consumer": self.consumer})
            conn.commit()
            if made or not continued:
                return made > 0

    def _read_lane(self, conn: psycopg.Connection[Any], lane: int, rows: list[Any], col: Columns) -> Claim:
        """The locked lane's oldest batch (``rows`` of lane_batch, columns ``col``); first, if the lane has parked
        events, the runnable ones (the oldest of each row, when due), and the batch's events of rows with parked
        events are parked behind them."""
        decoder = self.decoder
        has_parked = bool(rows and rows[0][col.has_parked])
        events = [r for r in rows if r[col.event_id] is not None]
        decoder.learn_types(conn, events, col)
        batch = (int(events[0][col.cut]), int(events[0][col.chunk])) if events else None
        items: list[Claimed] = []
        blocked_rows: set[str] = set()
        if has_parked:
            runnable: dict[int, tuple[int, str | None]] = {}
            for parked in fetch_all(conn, "lane_parked", {"consumer": self.consumer, "lane": lane}):
                if parked.row_key not in blocked_rows and parked.due:
                    runnable[int(parked.event_id)] = (int(parked.attempts), parked.last_error)
                blocked_rows.add(parked.row_key)
            if runnable:
                cursor = conn.execute(query("events_by_id"), {"ids": list(runnable)})
                retried, by_id = cursor.fetchall(), Columns(cursor)
                decoder.learn_types(conn, retried, by_id)
                for row in retried:
                    attempts, last_error = runnable[int(row[by_id.event_id])]
                    items.append(decoder.claimed(row, by_id, attempts, last_error, parked=True, blocked=False))
        claimed, key = decoder.claimed, col.row_key
        items += [claimed(row, col, 0, None, parked=False, blocked=row[key] in blocked_rows) for row in events]
        return Claim(lane, batch, items)

    # -- settling ------------------------------------------------------------------------------------------

    def finish(self, conn: psycopg.Connection[Any], claim: Claim, settlement: Settlement) -> None:
        """Write back what happened to the lane's events and acknowledge its batch, in the claim's transaction."""
        try:
            with conn.pipeline():  # every statement and the commit in one round trip
                self._write_settlement(conn, claim, settlement)
                conn.commit()
        except BaseException:
            if not conn.broken:
                conn.rollback()
            raise

    def finish_and_claim(self, conn: psycopg.Connection[Any], claim: Claim, settlement: Settlement) -> Claim | None:
        """Acknowledge the batch in hand and claim the next one in the same hand-off to the worker thread;
        between the two the connection has no transaction open, which is when maintenance and a cut ahead run."""
        self.finish(conn, claim, settlement)
        if claim.cut_ahead:  # cut the next piece while the other lanes still have work (see 0010)
            self.cut(conn)
        self.maintain_if_due(conn)
        return self.claim(conn)

    def _write_settlement(self, conn: psycopg.Connection[Any], claim: Claim, settlement: Settlement) -> None:
        """Handled parked events leave the parking; released, failed and unacknowledged ones are parked (or
        buried); the batch is deleted: its events are all accounted for."""
        consumer, lane = self.consumer, claim.lane
        done = [i.event_id for i in settlement.finished if i.parked]
        if done:
            run(conn, "unpark", {"consumer": consumer, "ids": done})
        # parked as they are: events behind an earlier event of their row; failures: with their next attempt
        park: list[tuple[Claimed, float, int, str | None]]
        park = [(i, 0.0, i.attempts, None) for i in settlement.released if not i.parked]
        park += [(i, delay, i.attempts + 1, error) for i, delay, error in settlement.retry]
        park += [(i, settlement.defer_seconds, i.attempts, None) for i in settlement.deferred]
        if park:
            ids, attempts = [p[0].event_id for p in park], [p[2] for p in park]
            delays, errors = [p[1] for p in park], [p[3] for p in park]
            run(
                conn,
                "park",
                {
                    "consumer": consumer,
                    "lane": lane,
                    "ids": ids,
                    "attempts": attempts,
                    "delays": delays,
                    "errors": errors,
                },
            )
        if settlement.bury:
            ids, attempts = [i.event_id for i, _ in settlement.bury], [i.attempts + 1 for i, _ in settlement.bury]
            errors = [e for _, e in settlement.bury]
            run(conn, "bury", {"consumer": consumer, "ids": ids, "attempts": attempts, "errors": errors})
        if claim.batch is not None:
            cut, chunk = claim.batch
            run(conn, "delete_batch", {"consumer": consumer, "lane": lane, "cut": cut, "chunk": chunk})

    def unpark_now(self, conn: psycopg.Connection[Any], ids: list[int], *, commit: bool) -> None:
        """Acknowledged late (stream): the events leave the parking."""
        run(conn, "unpark", {"consumer": self.consumer, "ids": ids})
        if commit:
            conn.commit()

    # -- maintenance ---------------------------------------------------------------------------------------

    def maintain_if_due(self, conn: psycopg.Connection[Any]) -> None:
        """Maintenance, when due; only between claims (it commits)."""
        now = time.monotonic()
        if now - self._last_maintenance < MAINTENANCE_EVERY_SECONDS:
            return
        self._last_maintenance = now
        locked = fetch_one(conn, "maintenance_lock", {"lock": MAINTENANCE_LOCK})
        if locked and locked.locked:  # one worker of the database at a time
            run(conn, "purge_events", {"retention": self.retention, "limit": PURGE_BATCH})
        conn.commit()
