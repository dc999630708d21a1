"""The outbox source: durable, at-least-once delivery from an event table, with competing workers.

Row triggers write each change into ``pgchanges.events`` inside the writer's transaction. A named consumer
reads them in batches, without copying them (``capture/sql/0008_outbox_lanes.sql``):

* a **cut** takes the events that became visible since the consumer's last cut snapshot (an event that commits
  late lands in a later cut, it is never skipped) and splits them by row key into the consumer's ``lanes``;
  a backlog is cut in pieces of 16 batches per lane (``capture/sql/0010_outbox_cut_pieces.sql``);
* a worker locks one lane (``FOR UPDATE SKIP LOCKED``) and handles its oldest batch in a transaction that stays
  open while the handlers run. The batch is acknowledged (its row deleted) in that transaction, after its
  handlers returned; a handler that takes a second argument gets the transaction, so its own writes and the
  acknowledgement commit together (exactly once for database work);
* all events of a row (same table and primary key) fall into one lane, and one worker at a time holds a lane,
  so a row's events are handled in commit order however many workers run; different lanes run in parallel;
* a worker that dies, or loses its connection, leaves its transaction to be rolled back by the server: the
  batch becomes claimable again at once (duplicates are limited to what was in flight);
* a failing handler's event is **parked** and retried with exponential backoff and jitter, later events of its
  row wait parked behind it; after ``max_attempts`` it moves to ``pgchanges.dead_letters`` with the error.

Idle workers register in ``pgchanges.sleepers`` with a deadline and LISTEN; the row triggers NOTIFY only
while some worker's deadline lies ahead (one shared sequence, ``pgchanges.sleep_until``, tells them; see
``capture/sql/0009_outbox_write_path.sql``), so writers pay the NOTIFY commit lock only on the idle→busy
transition, and a worker killed in its sleep stops costing them at its deadline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import psycopg

from pgchanges.capture import install as capture
from pgchanges.capture.queries import query
from pgchanges.change import EMPTY, Change, freeze
from pgchanges.db.connect import close_async, connect_async
from pgchanges.db.listener import Listener
from pgchanges.errors import ConfigError, ConnectError, ConnectionLost
from pgchanges.handling import NOT_RUN, SKIPPED, Handling, PlainRun, held_back
from pgchanges.names import TableName
from pgchanges.rowtypes import RowType, fetch_row_types
from pgchanges.sources.base import Backoff, Event, require_tables
from pgchanges.sources.rows import LazyJsonRow, parse_json, row_change

log = logging.getLogger(__name__)

WAKE_CHANNEL = "pgchanges:outbox"
MAINTENANCE_EVERY_SECONDS = 60.0
PURGE_BATCH = 10_000
MAINTENANCE_LOCK = 0x70676368_6D  # "pgchm"
IDLE_POLL_SECONDS = (0.005, 0.01, 0.02, 0.04)
# A sleeping worker's deadline (after which writers stop notifying it) lies this far past its longest wait.
SLEEP_DEADLINE_SLACK_SECONDS = 1.0
# A cut takes at most this many batches per lane of events (25,600 with the defaults, a statement of about
# 60 ms); the rest of its snapshot goes to the next cuts.
CUT_PIECE_BATCHES = 16
# A sleeping worker first looks again this soon when writers were in flight as it announced its sleep.
WRITER_RECHECK_SECONDS = 0.005


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a failed event is tried again before it becomes a dead letter."""

    max_attempts: int = 5
    initial: float = 1.0
    maximum: float = 300.0

    def delay(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1`` (exponential, with jitter of ±25 %)."""
        base = min(self.maximum, self.initial * 2 ** max(0, attempts - 1))
        return float(base * random.uniform(0.75, 1.25))  # noqa: S311 - jitter, not cryptography


class Transaction:
    """The transaction a handler runs in: its writes commit together with the event's acknowledgement.

    Sync handlers (which run in a worker thread) may use ``tx.connection`` directly; async handlers use
    ``await tx.execute(...)``. Each such handler runs inside its own savepoint: if it raises, its writes are
    rolled back and the event is retried.
    """

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection

    async def execute(self, statement: Any, params: Any = None) -> list[tuple[Any, ...]]:
        """Run ``statement`` in the transaction; returns its rows (empty for statements without any)."""

        def run() -> list[tuple[Any, ...]]:
            cursor = self.connection.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

        return await anyio.to_thread.run_sync(run)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(self.connection.execute, "SAVEPOINT pgchanges_handler")
        try:
            yield
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.connection.execute, "ROLLBACK TO SAVEPOINT pgchanges_handler")
            raise
        await anyio.to_thread.run_sync(self.connection.execute, "RELEASE SAVEPOINT pgchanges_handler")


@dataclass
class _Claimed:
    event_id: int
    row_key: str | None  # read only when the lane has parked events
    attempts: int
    parked: bool  # it came from the parked events (a retry), not from the batch
    blocked: bool  # an earlier event of its row is parked: it is parked behind it, not handled now
    change: Change


@dataclass
class _Claim:
    """A locked lane: its runnable parked events, then its oldest batch (``batch`` is its cut and chunk)."""

    lane: int
    batch: tuple[int, int] | None
    items: list[_Claimed]
    cut_ahead: bool = False  # a snapshot is being cut in pieces and about one batch per lane is left


@dataclass
class _Outcome:
    """What to write back when a lane's transaction ends."""

    finished: list[_Claimed] = field(default_factory=list)  # handled
    released: list[_Claimed] = field(default_factory=list)  # not attempted: parked (behind their row) as they are
    retry: list[tuple[_Claimed, float, str]] = field(default_factory=list)
    bury: list[tuple[_Claimed, str]] = field(default_factory=list)
    deferred: list[_Claimed] = field(default_factory=list)  # stream: delivered, not acknowledged yet
    defer_seconds: float = 0.0


class OutboxSource:
    """Durable changes of ``tables`` for the consumer ``consumer``."""

    name = "outbox"

    def __init__(
        self,
        conninfo: str,
        tables: Sequence[TableName],
        channels: Sequence[str] = (),
        *,
        consumer: str = "default",
        auto_install: bool = True,
        batch_size: int = 200,
        lanes: int = 8,
        retry: RetryPolicy = RetryPolicy(),
        handler_timeout: float = 60.0,
        ack_wait: float = 30.0,
        concurrency: int = 2,
        retention: float = 86_400.0,
        poll_interval: float = 1.0,
        backoff: Backoff = Backoff(),  # noqa: B008 - immutable
    ) -> None:
        require_tables(self.name, tables, channels)
        self._conninfo = conninfo
        self._tables = list(dict.fromkeys(tables))
        self.consumer = consumer
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._auto_install = auto_install
        self.batch_size = batch_size
        if not 1 <= lanes <= 1024:
            raise ConfigError(f"lanes must be between 1 and 1024, not {lanes}")
        self.lanes = lanes
        self._start_lane = random.randrange(lanes)  # noqa: S311 - spreading workers, not cryptography
        self._retry = retry
        self._handler_timeout = handler_timeout
        self._ack_wait = ack_wait
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {concurrency}")
        self._concurrency = concurrency
        self._sibling_options: dict[str, Any] = {
            "consumer": consumer,
            "auto_install": False,
            "batch_size": batch_size,
            "lanes": lanes,
            "retry": retry,
            "handler_timeout": handler_timeout,
            "retention": retention,
            "poll_interval": poll_interval,
            "backoff": backoff,
            "ack_wait": ack_wait,
            "concurrency": 1,
        }
        self._siblings: list[OutboxSource] = []
        self._awaiting_ack: set[int] = set()
        self._retention = retention
        self._poll_interval = poll_interval
        self._backoff = backoff
        self._conn: psycopg.Connection[Any] | None = None
        self._listener = Listener(conninfo, [WAKE_CHANNEL])
        self._row_types: dict[int, RowType] = {}
        self._forgetters: dict[int, Callable[[], None]] = {}
        self._first_attempt = freeze({"attempt": 1, "consumer": consumer})
        self._stopping = False
        self._wait_scope: anyio.CancelScope | None = None
        self._open_batch: _Claim | None = None
        self._stream_acked: set[int] = set()
        self._last_maintenance = -MAINTENANCE_EVERY_SECONDS  # due at the first cycle
        self._next_claim: _Claim | None = None  # claimed with the previous batch's acknowledgement (App path)
        self._looked_after_finish = False  # that claim found nothing (and cut nothing)

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def open(self) -> None:
        self._conn = await self._connect()
        await self._call(self._prepare)
        await self._listener.open()

    async def _connect(self) -> psycopg.Connection[Any]:
        conn = await connect_async(self._conninfo, autocommit=True)
        # The claim's cost estimate crosses jit_above_cost, and compiling it took 17 of its 19 ms (measured
        # with EXPLAIN ANALYZE at a backlog of 10,000): JIT never pays off for these short statements.
        await anyio.to_thread.run_sync(conn.execute, "SET jit = off")
        conn.autocommit = False
        return conn

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        conn.autocommit = True
        try:
            capture.ensure_capture(conn, self._tables, "outbox", auto_install=self._auto_install)
        finally:
            conn.autocommit = False
        with conn.transaction():
            oids = [oid for _, oid in capture.resolve(conn, self._tables)]
            row = conn.execute(
                query("register_consumer"), {"consumer": self.consumer, "table_oids": oids, "lanes": self.lanes}
            ).fetchone()
            if row and row[0] != self.lanes:
                log.warning("consumer %s has %d lanes (set when it was created); using those", self.consumer, row[0])
                self.lanes = int(row[0])
                self._start_lane %= self.lanes
            conn.execute(query("create_lanes"), {"consumer": self.consumer, "lanes": self.lanes})
            for table in self._tables:
                schema_like, table_like = table.like_patterns
                conn.execute(
                    """INSERT INTO pgchanges.consumer_rules (consumer, schema_like, table_like) VALUES (%s, %s, %s)
                       ON CONFLICT DO NOTHING""",
                    (self.consumer, schema_like, table_like),
                )

    async def prepare_serving(self) -> None:
        """Open the connections :meth:`serve` will use, so that serving starts at full speed."""
        if self._concurrency > 1 and not self._siblings:
            await self._open_siblings()

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            for sibling in self._siblings:
                await sibling.close()
        self._siblings = []
        if self._open_batch is not None and self._conn is not None and not self._conn.broken:
            with anyio.CancelScope(shield=True):
                await self._finish_stream_batch(closing=True)
        await self._listener.close()
        conn, self._conn = self._conn, None
        await close_async(conn)

    def stop(self) -> None:
        """Finish the batch in hand, then return from :meth:`serve`."""
        self._stopping = True
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        for sibling in self._siblings:
            sibling.stop()

    async def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(conn, *args)`` in a worker thread; if cancelled, cancel the query on the server too."""
        conn = self._conn
        if conn is None or conn.closed:
            raise ConnectError("the outbox connection is closed")
        try:
            return await anyio.to_thread.run_sync(func, conn, *args, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe(timeout=2.0)
            raise

    # -- App path: handlers run inside the claim transaction --------------------------------------------

    async def serve(self, handling: Handling) -> None:
        """Claim, handle and acknowledge until :meth:`stop`; reconnects after connection failures.

        With ``concurrency`` > 1, as many lanes are handled at once, each on its own connection: while one
        lane's handlers run, the next lane's batch is read (the database and Python overlap on two cores).
        """
        await self.prepare_serving()
        async with anyio.create_task_group() as tg:
            for sibling in self._siblings:
                tg.start_soon(sibling.serve, handling)
            await self._serve_lanes(handling)

    async def _open_siblings(self) -> None:
        """Workers for the other lanes handled at once (App path; a stream reads one batch at a time)."""
        for _ in range(self._concurrency - 1):
            sibling = OutboxSource(self._conninfo, self._tables, **self._sibling_options)
            await sibling.open()
            self._siblings.append(sibling)

    async def _serve_lanes(self, handling: Handling) -> None:
        failures = 0
        idle = 0
        while not self._stopping:
            try:
                if failures:
                    await self._reconnect()
                worked = await self._cycle(handling)
                failures = 0
                idle = 0 if worked else idle + 1
                if not worked and not self._stopping:
                    await self._wait_for_work(idle)
            except (psycopg.OperationalError, ConnectError, ConnectionLost) as exc:
                self._next_claim, self._looked_after_finish = None, False  # its transaction went with the connection
                delay = self._backoff.delay(failures)
                failures += 1
                log.warning("outbox worker lost its connection (%s); reconnecting in %.2fs", exc, delay)
                await anyio.sleep(delay)
        if self._next_claim is not None:  # claimed before the stop: give its lane back, unhandled
            self._next_claim = None
            with anyio.CancelScope(shield=True), contextlib.suppress(ConnectError, psycopg.Error):
                await self._call(_roll_back)

    async def _reconnect_with_backoff(self) -> None:
        attempt = 0
        while True:
            try:
                await self._reconnect()
                return
            except (psycopg.OperationalError, ConnectError) as exc:
                delay = self._backoff.delay(attempt)
                attempt += 1
                log.warning("reconnect failed (%s); retrying in %.2fs", exc, delay)
                await anyio.sleep(delay)

    async def _reconnect(self) -> None:
        await close_async(self._conn)
        self._conn = None
        await self._listener.close()
        self._conn = await self._connect()
        await self._listener.open()

    async def _cycle(self, handling: Handling) -> bool:
        claim, self._next_claim = self._next_claim, None
        if claim is None:
            if self._looked_after_finish:  # the last acknowledgement looked for the next batch: none
                self._looked_after_finish = False
                return False
            await self._call(self._maybe_maintain)
            claim = await self._claim()
            if claim is None:
                return False
        claimed = claim.items
        outcome = _Outcome()
        tx = Transaction(self._conn)  # type: ignore[arg-type]
        failed_rows: set[str] = set()
        position = 0
        while position < len(claimed):
            plain = _plain_calls(handling, claimed, position)
            if plain:
                position = await self._handle_plain(claimed, position, plain, failed_rows=failed_rows, outcome=outcome)
            else:
                position = await self._handle_one_by_one(
                    handling, tx, claimed, position, failed_rows=failed_rows, outcome=outcome
                )
        if self._stopping:
            await self._call(self._finish, claim, outcome)
        else:
            self._next_claim = await self._call(self._finish_and_claim, claim, outcome)
            self._looked_after_finish = self._next_claim is None
        return True

    def _finish_and_claim(self, conn: psycopg.Connection[Any], claim: _Claim, outcome: _Outcome) -> _Claim | None:
        """Acknowledge the batch in hand and claim the next one in the same hand-off to the worker thread (one
        thread round trip per batch instead of two; between the two, the connection has no transaction open,
        which is when maintenance and a cut ahead may run)."""
        self._finish(conn, claim, outcome)
        if claim.cut_ahead:  # cut the next piece while the other lanes still have work (see 0010)
            self._cut(conn)
        self._maybe_maintain(conn)
        return self._claim_sync(conn)

    async def _handle_plain(
        self,
        claimed: list[_Claimed],
        position: int,
        calls: list[Callable[[], None]],
        *,
        failed_rows: set[str],
        outcome: _Outcome,
    ) -> int:
        """Changes whose handlers are all plain functions, in one worker thread; the next position to handle
        (after a timeout, the changes behind the timed-out one are handled by the next run)."""
        items = claimed[position : position + len(calls)]
        run = PlainRun(calls, keys=[i.row_key for i in items], failed=failed_rows)
        await run.run(self._handler_timeout)
        for item, result in zip(items, run.outcomes, strict=True):
            if result is NOT_RUN:
                break
            position += 1
            if result is None:
                outcome.finished.append(item)
            elif result is SKIPPED:
                outcome.released.append(item)
            else:
                assert isinstance(result, BaseException)
                self._record_failure(item, result, outcome)
        return position

    async def _handle_one_by_one(
        self,
        handling: Handling,
        tx: Transaction,
        claimed: list[_Claimed],
        position: int,
        *,
        failed_rows: set[str],
        outcome: _Outcome,
    ) -> int:
        """Changes from ``position`` on, each awaited in the event loop, until the next one that a plain run
        can take; the next position to handle."""
        # One cancel scope serves the changes. Its deadline is moved forward only when a tenth of the timeout
        # has passed, so each handler gets between 0.9 and 1 times handler_timeout: a scope, or even a timer
        # reschedule, per change cost more than a no-op handler (measured with cProfile). A timed-out scope
        # is spent, so the caller comes back with a fresh one after a timeout.
        # The event loop's clock, read through time.monotonic() plus an offset taken once per batch:
        # anyio.current_time() per change cost 6 % of a no-op drain (py-spy).
        slack = self._handler_timeout / 10
        offset = anyio.current_time() - time.monotonic()
        with anyio.CancelScope() as scope:
            while position < len(claimed):
                item = claimed[position]
                if _behind_failure(item, failed_rows):
                    position += 1
                    outcome.released.append(item)  # behind a parked or failed event (of its row, if known)
                    continue
                if handling.plain_call(item.change) is not None:
                    return position
                position += 1
                now = time.monotonic() + offset
                remaining = scope.deadline - now
                if remaining > self._handler_timeout or remaining < self._handler_timeout - slack:
                    scope.deadline = now + self._handler_timeout
                try:
                    await handling(item.change, tx)
                except Exception as exc:
                    failed_rows.add(item.row_key or "")
                    self._record_failure(item, exc, outcome)
                else:
                    outcome.finished.append(item)
        if scope.cancelled_caught:
            item = claimed[position - 1]
            failed_rows.add(item.row_key or "")
            self._record_failure(item, TimeoutError(), outcome)
        return position

    def _record_failure(self, item: _Claimed, exc: BaseException, outcome: _Outcome) -> None:
        if isinstance(exc, TimeoutError):
            error = f"TimeoutError: handler did not finish within {self._handler_timeout}s"
        else:
            error = f"{type(exc).__name__}: {exc}"
        attempt = item.attempts + 1
        if attempt >= self._retry.max_attempts:
            log.error("change %s failed %d times; moved to dead letters: %s", item.change.id, attempt, error)
            outcome.bury.append((item, error))
        else:
            delay = self._retry.delay(attempt)
            log.warning("change %s failed (attempt %d, retry in %.1fs): %s", item.change.id, attempt, delay, error)
            outcome.retry.append((item, delay, error))

    def _finish(self, conn: psycopg.Connection[Any], claim: _Claim, outcome: _Outcome) -> None:
        """Write back what happened to the lane's events and acknowledge its batch, in the claim's transaction."""
        try:
            with conn.pipeline():  # every statement and the commit in one round trip
                self._write_outcome(conn, claim, outcome)
                conn.commit()
        except BaseException:
            if not conn.broken:
                conn.rollback()
            raise

    def _write_outcome(self, conn: psycopg.Connection[Any], claim: _Claim, outcome: _Outcome) -> None:
        """Handled parked events leave the parking; released, failed and unacknowledged ones are parked (or
        buried); the batch is deleted: its events are all accounted for."""
        consumer, lane = self.consumer, claim.lane
        done = [i.event_id for i in outcome.finished if i.parked]
        if done:
            conn.execute(query("unpark"), {"consumer": consumer, "ids": done})
        # parked as they are: events behind an earlier event of their row; failures: with their next attempt
        park: list[tuple[_Claimed, float, int, str | None]]
        park = [(i, 0.0, i.attempts, None) for i in outcome.released if not i.parked]
        park += [(i, delay, i.attempts + 1, error) for i, delay, error in outcome.retry]
        park += [(i, outcome.defer_seconds, i.attempts, None) for i in outcome.deferred]
        if park:
            conn.execute(
                query("park"),
                {
                    "consumer": consumer,
                    "lane": lane,
                    "ids": [p[0].event_id for p in park],
                    "attempts": [p[2] for p in park],
                    "delays": [p[1] for p in park],
                    "errors": [p[3] for p in park],
                },
            )
        if outcome.bury:
            conn.execute(
                query("bury"),
                {
                    "consumer": consumer,
                    "ids": [i.event_id for i, _ in outcome.bury],
                    "attempts": [i.attempts + 1 for i, _ in outcome.bury],
                    "errors": [e for _, e in outcome.bury],
                },
            )
        if claim.batch is not None:
            cut, chunk = claim.batch
            conn.execute(query("delete_batch"), {"consumer": consumer, "lane": lane, "cut": cut, "chunk": chunk})

    # -- claiming ------------------------------------------------------------------------------------------

    async def _claim(self) -> _Claim | None:
        return await self._call(self._claim_sync)  # type: ignore[no-any-return]

    def _claim_sync(self, conn: psycopg.Connection[Any]) -> _Claim | None:
        """Lock a lane with work and read it, in a transaction that stays open until :meth:`_finish`.

        No lane has work: cut the events that became visible since the last cut, and look again.
        """
        params = {"consumer": self.consumer, "start": self._start_lane}
        for attempt in (1, 2):
            with conn.pipeline():  # the claim and the read of the claimed lane in one round trip
                claimed = conn.execute(query("claim_lane"), params)
                batch = conn.execute(query("lane_batch"), params)
                ahead = conn.execute(query("cut_ahead"), params)
            row = claimed.fetchone()
            if row is not None:
                claim = self._read_lane(conn, int(row[0]), batch.fetchall())
                claim.cut_ahead = bool((ahead.fetchone() or (False,))[0])
                return claim
            conn.commit()
            if attempt == 1 and not self._cut(conn):
                return None
        return None

    def _cut(self, conn: psycopg.Connection[Any]) -> bool:
        """Cut new events into batches (one worker at a time; the others skip); whether any were cut.

        A cut takes at most ``CUT_PIECE_BATCHES`` batches per lane, so that after downtime the workers start
        on the first piece of the backlog while the next is cut (see 0010). A cut that only found the end of
        the snapshot it was cutting in pieces is followed at once by a cut of a new snapshot.
        """
        params: dict[str, Any] = {
            "consumer": self.consumer,
            "batch": self.batch_size,
            "limit": self.batch_size * self.lanes * CUT_PIECE_BATCHES,
        }
        while True:
            seq = conn.execute(query("sequence_position")).fetchone()  # first the sequence, then an xid (see 0008)
            conn.execute(query("take_xid"))
            row = conn.execute(query("cut"), {**params, "seq": int(seq[0]) if seq else 0}).fetchone()
            made, continued = (int(row[1]), bool(row[2])) if row else (0, False)
            if made:
                conn.execute(query("wake_others"), {"consumer": self.consumer})
            conn.commit()
            if made or not continued:
                return made > 0

    def _read_lane(self, conn: psycopg.Connection[Any], lane: int, rows: list[tuple[Any, ...]]) -> _Claim:
        """The locked lane's oldest batch (``rows`` of lane_batch); first, if the lane has parked events, the
        runnable ones (the oldest of each row, when due), and the batch's events of rows with parked events are
        parked behind them."""
        params = {"consumer": self.consumer, "lane": lane}
        has_parked = bool(rows and rows[0][0])
        events = [r[1:] for r in rows if r[3] is not None]
        self._learn_types(conn, events)
        batch = (int(events[0][0]), int(events[0][1])) if events else None
        items: list[_Claimed] = []
        blocked_rows: set[str] = set()
        if has_parked:
            runnable: dict[int, tuple[int, str | None]] = {}
            for event_id, row_key, attempts, last_error, due in conn.execute(query("lane_parked"), params):
                if row_key not in blocked_rows and due:
                    runnable[int(event_id)] = (int(attempts), last_error)
                blocked_rows.add(row_key)
            if runnable:
                parked = conn.execute(query("events_by_id"), {"ids": list(runnable)}).fetchall()
                self._learn_types(conn, parked)
                for row in parked:
                    attempts, last_error = runnable[int(row[2])]
                    items.append(self._to_claimed(row, attempts, last_error, parked=True, blocked=False))
        to_claimed = self._to_claimed
        items += [to_claimed(row, 0, None, parked=False, blocked=row[3] in blocked_rows) for row in events]
        return _Claim(lane, batch, items)

    def _learn_types(self, conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
        stale = {int(r[5]) for r in rows if int(r[5]) not in self._row_types}
        if stale:
            self._row_types.update(fetch_row_types(conn, stale))

    def _to_claimed(
        self, row: tuple[Any, ...], attempts: int, last_error: str | None, *, parked: bool, blocked: bool
    ) -> _Claimed:
        _cut, _chunk, event_id, row_key, xid, table_oid, schema, table, op, new, old = row
        oid = int(table_oid)
        if attempts == 0 and not last_error:
            extra = self._first_attempt  # one shared read-only mapping: most events are on their first attempt
        else:
            details: dict[str, Any] = {"attempt": attempts + 1, "consumer": self.consumer}
            if last_error:
                details["last_error"] = last_error
            extra = freeze(details)
        if op == "insert" or op == "delete":  # noqa: PLR1714 - one row: parsed and typed when first read
            forget = self._forgetters.get(oid)
            if forget is None:
                forget = self._forgetters[oid] = partial(self._forget_row_type, oid)
            lazy = LazyJsonRow(new or old, self._row_types.get(oid), forget)
            change = Change(
                f"outbox:{event_id}",
                op,
                schema,
                table,
                lazy if op == "insert" else None,
                lazy if op == "delete" else None,
                EMPTY,
                xid,
                None,
                int(event_id),
                self.name,
                extra,
            )
            return _Claimed(int(event_id), row_key, attempts, parked, blocked, change)
        row_type = self._row_types.get(oid)
        new_row = parse_json(new) if new is not None else None
        old_row = parse_json(old) if old is not None else None
        if row_type is not None and not all(r is None or row_type.matches(r) for r in (new_row, old_row)):
            row_type = None  # the table changed shape since; values stay as JSON gave them
            self._forget_row_type(oid)
        change = row_change(
            change_id=f"outbox:{event_id}",
            op=op,
            schema=schema,
            table=table,
            new=new_row,
            old=old_row,
            xid=xid,
            position=int(event_id),
            source=self.name,
            row_type=row_type,
            extra=extra,
        )
        return _Claimed(int(event_id), row_key, attempts, parked, blocked, change)

    def _forget_row_type(self, oid: int) -> None:
        """The table's columns changed: read its types again at the next claim."""
        self._row_types.pop(oid, None)

    # -- waiting -------------------------------------------------------------------------------------------

    async def _wait_for_work(self, idle_rounds: int) -> None:
        """Look again a few times within about 75 ms before sleeping.

        A sleeping worker makes every writer NOTIFY (and so take the NOTIFY commit lock) until it wakes.
        Under a steady stream of writes the worker finds work again within the grace period and never
        sleeps, so writers never pay for the wake-up; only a truly idle consumer sleeps, and is then woken
        at once by the first write.
        """
        if idle_rounds <= len(IDLE_POLL_SECONDS):
            await anyio.sleep(IDLE_POLL_SECONDS[idle_rounds - 1])
        else:
            await self._sleep_until_work()

    async def _sleep_until_work(self) -> None:
        """Announce this worker as sleeping, look once more, then wait for a wake-up or the poll interval.

        A writer that checked for sleepers just before the announcement, and commits after the last look, will
        not wake this worker: while such writers are in flight the worker looks again as each of them ends
        (checking at growing intervals), so their events are not left waiting for the poll interval.
        """
        params = {"consumer": self.consumer, "worker": self.worker}

        def announce(conn: psycopg.Connection[Any]) -> tuple[float | None, list[str]]:
            # writers NOTIFY until this worker wakes, or at the latest a little after its longest wait
            conn.execute(query("sleep"), {**params, "seconds": self._poll_interval + SLEEP_DEADLINE_SLACK_SECONDS})
            conn.commit()
            writers = conn.execute(query("writers_in_flight")).fetchone()
            if self._cut(conn):
                return 0.0, []
            row = conn.execute(query("next_run_at"), {"consumer": self.consumer}).fetchone()
            conn.commit()
            next_run = None if row is None or row[0] is None else float(row[0])
            return next_run, list(writers[0]) if writers else []

        next_run, writers = await self._call(announce)
        try:
            if next_run is not None and next_run <= 0:
                return
            timeout = self._poll_interval if next_run is None else min(self._poll_interval, next_run)
            with anyio.CancelScope() as self._wait_scope, anyio.move_on_after(timeout):
                await self._wait_for_wake_up(writers)
        finally:
            self._wait_scope = None
            with anyio.CancelScope(shield=True):
                await self._call(self._unannounce, params)

    async def _wait_for_wake_up(self, writers: list[str]) -> None:
        """Return at the first NOTIFY, or as soon as one of ``writers`` (in flight at the announcement) ended."""
        recheck = WRITER_RECHECK_SECONDS
        while True:
            if not writers:
                await self._listener.receive()
                return
            with anyio.move_on_after(recheck):
                await self._listener.receive()
                return
            if await self._call(self._writers_still_in_flight, writers) < len(writers):
                return
            recheck = min(recheck * 2, self._poll_interval)

    @staticmethod
    def _writers_still_in_flight(conn: psycopg.Connection[Any], writers: list[str]) -> int:
        """How many of ``writers`` (virtual transaction ids of writers_in_flight) have not yet ended."""
        row = conn.execute(query("writers_in_flight")).fetchone()
        conn.commit()
        return len(set(writers).intersection(row[0] if row else ()))

    @staticmethod
    def _unannounce(conn: psycopg.Connection[Any], params: dict[str, str]) -> None:
        if conn.broken:
            return
        conn.execute(query("wake"), params)
        conn.commit()

    def _maybe_maintain(self, conn: psycopg.Connection[Any]) -> None:
        """Maintenance, when due; only between claims (it commits)."""
        now = time.monotonic()
        if now - self._last_maintenance < MAINTENANCE_EVERY_SECONDS:
            return
        self._last_maintenance = now
        self._maintain(conn)

    def _maintain(self, conn: psycopg.Connection[Any]) -> None:
        """Remove events every consumer finished, past the retention (one worker of the database at a time)."""
        locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (MAINTENANCE_LOCK,)).fetchone()
        if locked and locked[0]:
            conn.execute(query("purge_events"), {"retention": self._retention, "limit": PURGE_BATCH})
        conn.commit()

    # -- stream path: the caller acknowledges ----------------------------------------------------------

    async def batches(self) -> AsyncIterator[list[Event]]:
        """Claimed batches; acknowledgements commit when every change of the batch is acked, or at close.

        Changes of the batch that were not acknowledged are released and delivered again.
        """
        idle = 0
        while True:
            if self._open_batch is not None:
                await self._finish_stream_batch()
            try:
                claim = await self._claim()
            except (psycopg.OperationalError, ConnectError, ConnectionLost) as exc:
                log.warning("outbox stream lost its connection (%s); reconnecting", exc)
                await self._reconnect_with_backoff()
                continue
            idle = 0 if claim else idle + 1
            if claim is None:
                await self._wait_for_work(idle)
                continue
            self._open_batch = claim  # blocked ones too: finishing parks them behind their row
            self._stream_acked = set()
            usable = [c.change for c in claim.items if not c.blocked]
            if not usable:
                await self._finish_stream_batch()
                continue
            yield list[Event](usable)

    async def ack(self, changes: Sequence[Change]) -> None:
        """Acknowledge ``changes`` of the current batch, or of earlier ones still awaiting their ack."""
        in_batch = set() if self._open_batch is None else {c.event_id for c in self._open_batch.items if not c.blocked}
        late: list[int] = []
        for change in changes:
            position = int(change.position) if isinstance(change.position, int) else None
            if position in in_batch:
                self._stream_acked.add(position)
            elif position in self._awaiting_ack:
                late.append(position)
            else:
                raise ConfigError(f"ack() of change {change.id}, which is not awaiting an acknowledgement")
        if late:
            self._awaiting_ack.difference_update(late)
            await self._call(self._unpark_now, late)
        if in_batch and len(self._stream_acked) == len(in_batch):
            await self._finish_stream_batch()

    def _unpark_now(self, conn: psycopg.Connection[Any], ids: list[int]) -> None:
        conn.execute(query("unpark"), {"consumer": self.consumer, "ids": ids})
        if self._open_batch is None:
            conn.commit()  # otherwise it commits with the open batch

    async def _finish_stream_batch(self, *, closing: bool = False) -> None:
        """End the open batch. Changes not acknowledged yet are parked for ``ack_wait`` seconds (at close: none),
        holding back later changes of their rows; an ack within that time still counts, after it they are
        delivered again."""
        claim, acked = self._open_batch, self._stream_acked
        self._open_batch = None
        self._stream_acked = set()
        if claim is None:
            return
        pending = [c for c in claim.items if c.event_id not in acked and not c.blocked]
        outcome = _Outcome(
            finished=[c for c in claim.items if c.event_id in acked],
            released=[c for c in claim.items if c.blocked],
            deferred=pending,
            defer_seconds=0.0 if closing else self._ack_wait,
        )
        await self._call(self._finish, claim, outcome)
        if not closing:
            self._awaiting_ack.update(c.event_id for c in pending)


def _behind_failure(item: _Claimed, failed_rows: set[str]) -> bool:
    """Whether the event waits behind a parked or failed event (of its row, or of any row if its row is unknown)."""
    return item.blocked or held_back(item.row_key, failed_rows)


def _plain_calls(handling: Handling, claimed: list[_Claimed], position: int) -> list[Callable[[], None]]:
    """The calls of the consecutive events from ``position`` on that a plain run can take: not blocked behind
    a parked event, every handler a plain function."""
    calls: list[Callable[[], None]] = []
    for item in claimed[position:]:
        call = None if item.blocked else handling.plain_call(item.change)
        if call is None:
            break
        calls.append(call)
    return calls


def _roll_back(conn: psycopg.Connection[Any]) -> None:
    if not conn.broken:
        conn.rollback()
