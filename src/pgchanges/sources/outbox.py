"""The outbox source: durable, at-least-once delivery from an event table, with competing workers.

Row triggers write each change into ``pgchanges.events`` inside the writer's transaction. Each named consumer
copies the events of its tables into its own queue (see ``capture/sql/0002_outbox.sql`` for why no event that
commits late is ever skipped), then workers claim batches with ``FOR UPDATE SKIP LOCKED`` in a transaction
that stays open while the handlers run:

* an event is acknowledged (deleted from the queue) in that transaction, after its handlers returned; a
  handler that takes a second argument gets the transaction, so its own writes and the acknowledgement commit
  together (exactly once for database work);
* a worker that dies, or loses its connection, leaves its transaction to be rolled back by the server: its
  events become claimable again at once (duplicates are limited to what was in flight);
* a failing handler's event is retried with exponential backoff and jitter; after ``max_attempts`` it moves to
  ``pgchanges.dead_letters`` with the error text;
* events of one row (same table and primary key) are handled in commit order, even across workers: an event
  is not handled while an earlier event of its row is pending (in flight elsewhere, or waiting to be retried).

Idle workers register in ``pgchanges.sleepers`` and LISTEN; writers NOTIFY only while someone sleeps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import psycopg

from pgchanges.capture import install as capture
from pgchanges.capture.queries import query
from pgchanges.change import Change, freeze
from pgchanges.db.connect import close_async, connect_async
from pgchanges.db.listener import ConnectionLost, Listener
from pgchanges.errors import ConfigError, ConnectError
from pgchanges.names import TableName
from pgchanges.rowtypes import RowType, fetch_row_types
from pgchanges.sources.base import Backoff, Event
from pgchanges.sources.rows import parse_json, row_change

log = logging.getLogger(__name__)

WAKE_CHANNEL = "pgchanges:outbox"
MAINTENANCE_EVERY_SECONDS = 60.0
PURGE_BATCH = 10_000
MAINTENANCE_LOCK = 0x70676368_6D  # "pgchm"
ANALYZE_AFTER_ROWS = 1000
COPY_INTERVAL_SECONDS = 0.2
IDLE_POLL_SECONDS = (0.005, 0.01, 0.02, 0.04)


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


DurableHandler = Callable[[Change, Transaction], Awaitable[None]]


@dataclass
class _Claimed:
    event_id: int
    xid: int
    row_key: str
    attempts: int
    last_error: str | None
    blocked: bool
    change: Change


@dataclass
class _Outcome:
    """What to write back when a batch ends: claiming deleted every event, so each one lands somewhere."""

    finished: list[_Claimed] = field(default_factory=list)  # handled: tombstoned if the horizon is behind
    released: list[_Claimed] = field(default_factory=list)  # not attempted: back into the queue unchanged
    retry: list[tuple[_Claimed, float, str]] = field(default_factory=list)
    bury: list[tuple[_Claimed, str]] = field(default_factory=list)


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
        retry: RetryPolicy = RetryPolicy(),
        handler_timeout: float = 60.0,
        retention: float = 86_400.0,
        poll_interval: float = 1.0,
        backoff: Backoff = Backoff(),  # noqa: B008 - immutable
    ) -> None:
        if channels:
            raise ConfigError("plain NOTIFY channels (on_notify) need source='notify'")
        if not tables:
            raise ConfigError("the outbox source needs at least one table")
        self._conninfo = conninfo
        self._tables = list(dict.fromkeys(tables))
        self.consumer = consumer
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._auto_install = auto_install
        self.batch_size = batch_size
        self._retry = retry
        self._handler_timeout = handler_timeout
        self._retention = retention
        self._poll_interval = poll_interval
        self._backoff = backoff
        self._conn: psycopg.Connection[Any] | None = None
        self._listener = Listener(conninfo, [WAKE_CHANNEL])
        self._row_types: dict[int, RowType] = {}
        self._stopping = False
        self._wait_scope: anyio.CancelScope | None = None
        self._open_batch: list[_Claimed] | None = None
        self._stream_acked: set[int] = set()
        self._last_maintenance = 0.0
        self._horizon = 0  # the consumer's horizon as last seen; it only grows
        self._last_claim_full = False
        self._last_copy = 0.0

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
            conn.execute(query("register_consumer"), {"consumer": self.consumer, "table_oids": oids})
            for table in self._tables:
                schema_like, table_like = table.like_patterns
                conn.execute(
                    """INSERT INTO pgchanges.consumer_rules (consumer, schema_like, table_like) VALUES (%s, %s, %s)
                       ON CONFLICT DO NOTHING""",
                    (self.consumer, schema_like, table_like),
                )

    async def close(self) -> None:
        if self._open_batch is not None and self._conn is not None and not self._conn.broken:
            with anyio.CancelScope(shield=True):
                await self._finish_stream_batch()
        await self._listener.close()
        conn, self._conn = self._conn, None
        await close_async(conn)

    def stop(self) -> None:
        """Finish the batch in hand, then return from :meth:`serve`."""
        self._stopping = True
        if self._wait_scope is not None:
            self._wait_scope.cancel()

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

    async def serve(self, handle: DurableHandler) -> None:
        """Claim, handle and acknowledge until :meth:`stop`; reconnects after connection failures."""
        failures = 0
        idle = 0
        while not self._stopping:
            try:
                if failures:
                    await self._reconnect()
                worked = await self._cycle(handle)
                failures = 0
                idle = 0 if worked else idle + 1
                if not worked and not self._stopping:
                    await self._wait_for_work(idle)
            except (psycopg.OperationalError, ConnectError, ConnectionLost) as exc:
                delay = self._backoff.delay(failures)
                failures += 1
                log.warning("outbox worker lost its connection (%s); reconnecting in %.2fs", exc, delay)
                await anyio.sleep(delay)

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

    async def _cycle(self, handle: DurableHandler) -> bool:
        await self._maybe_maintain()
        claimed = await self._claim()
        if not claimed:
            return False
        outcome = _Outcome()
        tx = Transaction(self._conn)  # type: ignore[arg-type]
        failed_rows: set[str] = set()
        position = 0
        while position < len(claimed):
            # One cancel scope serves the batch. Its deadline is moved forward only when a tenth of the timeout
            # has passed, so each handler gets between 0.9 and 1 times handler_timeout: a scope, or even a timer
            # reschedule, per change cost more than a no-op handler (measured with cProfile). A timed-out scope
            # is spent, so the loop starts a fresh one after a timeout.
            slack = self._handler_timeout / 10
            with anyio.CancelScope() as scope:
                for item in claimed[position:]:
                    position += 1
                    if item.blocked or item.row_key in failed_rows:
                        outcome.released.append(item)
                        continue
                    now = anyio.current_time()
                    remaining = scope.deadline - now
                    if remaining > self._handler_timeout or remaining < self._handler_timeout - slack:
                        scope.deadline = now + self._handler_timeout
                    try:
                        await handle(item.change, tx)
                    except Exception as exc:
                        failed_rows.add(item.row_key)
                        self._record_failure(item, exc, outcome)
                    else:
                        outcome.finished.append(item)
            if scope.cancelled_caught:
                item = claimed[position - 1]
                failed_rows.add(item.row_key)
                self._record_failure(item, TimeoutError(), outcome)
        await self._call(self._finish, outcome)
        return True

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

    def _finish(self, conn: psycopg.Connection[Any], outcome: _Outcome) -> None:
        consumer = self.consumer
        try:
            done = outcome.finished + [item for item, _ in outcome.bury]
            # Events below the horizon are never copied again; only the others need a tombstone.
            recent = [item for item in done if item.xid >= self._horizon]
            if recent:
                conn.execute(
                    query("tombstone"),
                    {
                        "consumer": consumer,
                        "ids": [i.event_id for i in recent],
                        "xids": [i.xid for i in recent],
                        "row_keys": [i.row_key for i in recent],
                    },
                )
            back = [(i, 0.0, i.attempts, i.last_error) for i in outcome.released]
            back += [(i, delay, i.attempts + 1, error) for i, delay, error in outcome.retry]
            if back:
                conn.execute(
                    query("requeue"),
                    {
                        "consumer": consumer,
                        "ids": [b[0].event_id for b in back],
                        "xids": [b[0].xid for b in back],
                        "row_keys": [b[0].row_key for b in back],
                        "attempts": [b[2] for b in back],
                        "delays": [b[1] for b in back],
                        "errors": [b[3] for b in back],
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
            conn.commit()
        except BaseException:
            if not conn.broken:
                conn.rollback()
            raise

    # -- claiming ------------------------------------------------------------------------------------------

    async def _claim(self) -> list[_Claimed]:
        return await self._call(self._claim_sync)  # type: ignore[no-any-return]

    def _claim_sync(self, conn: psycopg.Connection[Any]) -> list[_Claimed]:
        """Copy new events and claim a batch, in one transaction that stays open until :meth:`_finish`.

        While claims come back full the queue still holds a backlog, so copying waits (at most
        ``COPY_INTERVAL_SECONDS``): it would find nothing the claim needs now.
        """
        now = time.monotonic()
        if not self._last_claim_full or now - self._last_copy >= COPY_INTERVAL_SECONDS:
            self._last_copy = now
            self._materialize(conn)
        rows = conn.execute(query("claim"), {"consumer": self.consumer, "limit": self.batch_size}).fetchall()
        self._last_claim_full = len(rows) >= self.batch_size
        if not rows:
            conn.commit()
            return []
        stale = {int(r[5]) for r in rows if int(r[5]) not in self._row_types}
        if stale:
            self._row_types.update(fetch_row_types(conn, stale))
        return [self._to_claimed(row) for row in rows]

    def _materialize(self, conn: psycopg.Connection[Any]) -> None:
        """Copy new events into this consumer's queue (one worker at a time; others skip it)."""
        locked = conn.execute(
            "SELECT pg_try_advisory_xact_lock(hashtext('pgchanges.materialize'), hashtext(%s))", (self.consumer,)
        ).fetchone()
        if not (locked and locked[0]):
            return
        row = conn.execute(query("materialize"), {"consumer": self.consumer}).fetchone()
        if row is None:
            return
        copied, horizon = int(row[0]), int(row[1])
        self._horizon = max(self._horizon, horizon)
        if copied >= ANALYZE_AFTER_ROWS:
            # A queue that grew by thousands of rows since the planner last looked is planned as if it were
            # empty: the claim then sorts the whole backlog (18 ms for 200 of 10,000 rows, measured) instead
            # of walking the primary key and stopping after a batch.
            conn.execute("ANALYZE pgchanges.queue")
        if copied:
            conn.commit()  # the copied events are now visible to the other workers of this consumer

    def _to_claimed(self, row: tuple[Any, ...]) -> _Claimed:
        event_id, row_key, attempts, blocked, xid, table_oid, schema, table, op, new, old, last_error = row
        row_type = self._row_types.get(int(table_oid))
        new_row = parse_json(new) if new is not None else None
        old_row = parse_json(old) if old is not None else None
        if row_type is not None and not all(r is None or row_type.matches(r) for r in (new_row, old_row)):
            row_type = None  # the table changed shape since; values stay as JSON gave them
            self._row_types.pop(int(table_oid), None)
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
            extra=freeze({"attempt": attempts + 1, "consumer": self.consumer}),
        )
        return _Claimed(int(event_id), int(xid), row_key, int(attempts), last_error, bool(blocked), change)

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
        """Announce this worker as sleeping, look once more, then wait for a wake-up or the poll interval."""
        params = {"consumer": self.consumer, "worker": self.worker}

        def announce(conn: psycopg.Connection[Any]) -> float | None:
            conn.execute(query("sleep"), params)
            conn.commit()
            self._materialize(conn)
            row = conn.execute(query("next_run_at"), {"consumer": self.consumer}).fetchone()
            conn.commit()
            return None if row is None or row[0] is None else float(row[0])

        next_run = await self._call(announce)
        try:
            if next_run is not None and next_run <= 0:
                return
            timeout = self._poll_interval if next_run is None else min(self._poll_interval, next_run)
            with anyio.CancelScope() as self._wait_scope, anyio.move_on_after(timeout):
                await self._listener.receive()
        finally:
            self._wait_scope = None
            with anyio.CancelScope(shield=True):
                await self._call(self._unannounce, params)

    @staticmethod
    def _unannounce(conn: psycopg.Connection[Any], params: dict[str, str]) -> None:
        if conn.broken:
            return
        conn.execute(query("wake"), params)
        conn.commit()

    async def _maybe_maintain(self) -> None:
        now = anyio.current_time()
        if now - self._last_maintenance < MAINTENANCE_EVERY_SECONDS:
            return
        self._last_maintenance = now
        await self._call(self._maintain)

    def _maintain(self, conn: psycopg.Connection[Any]) -> None:
        """Forget acknowledgements the horizon has passed; remove events every consumer finished."""
        conn.execute(query("forget_done"), {"consumer": self.consumer})
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
                claimed = await self._claim()
            except (psycopg.OperationalError, ConnectError, ConnectionLost) as exc:
                log.warning("outbox stream lost its connection (%s); reconnecting", exc)
                await self._reconnect_with_backoff()
                continue
            usable = [c for c in claimed if not c.blocked]
            idle = 0 if claimed else idle + 1
            if not claimed:
                await self._wait_for_work(idle)
                continue
            if not usable:
                await self._call(lambda conn: conn.rollback())
                await anyio.sleep(0.05)  # every claimable event waits behind one in flight elsewhere
                continue
            self._open_batch = claimed  # blocked ones too: claiming deleted them, finishing puts them back
            self._stream_acked = set()
            yield list[Event](c.change for c in usable)

    async def ack(self, changes: Sequence[Change]) -> None:
        if self._open_batch is None:
            raise ConfigError("ack() of a change that is not in the current batch (was it acked already?)")
        in_batch = {c.event_id for c in self._open_batch if not c.blocked}
        for change in changes:
            if change.position not in in_batch:
                raise ConfigError(f"change {change.id} is not in the current batch")
            self._stream_acked.add(int(change.position))
        if len(self._stream_acked) == len(in_batch):
            await self._finish_stream_batch()

    async def _finish_stream_batch(self) -> None:
        batch, acked = self._open_batch or [], self._stream_acked
        self._open_batch = None
        self._stream_acked = set()
        outcome = _Outcome(
            finished=[c for c in batch if c.event_id in acked],
            released=[c for c in batch if c.event_id not in acked],
        )
        await self._call(self._finish, outcome)
