"""The polling source: changes found by a watermark query, for databases where nothing may be installed.

A read-only role is enough: SELECT on the tables. Each poll of a table runs in one REPEATABLE READ READ ONLY
transaction, so all of its queries see one snapshot S:

1. **New rows**: ``(col, pk…) > watermark ORDER BY col, pk… LIMIT n``. Rows that share a ``col`` value are
   ordered by their primary key, so a batch boundary between them skips none.
2. **Late rows**: a transaction that commits after a poll may have written ``col`` values at or below the
   watermark (``col = now()`` is its *start* time). Its rows became visible between the previous poll's
   snapshot P and S, so the poll also reads ``(col, pk…) <= watermark`` rows whose ``xmin`` is not visible in
   P (``pg_visible_in_snapshot``; ``pg_current_snapshot()`` works for any role, unlike ``xact_start`` in
   ``pg_stat_activity``). The scan is bounded to ``col >= floor`` so that it stays an index range:
   ``floor`` is the watermark at the poll where the oldest transaction still running was first seen running,
   minus ``late_window``. A transaction that began, stayed idle without writing for longer than
   ``late_window``, then wrote its start time, is not seen: make ``late_window`` longer than your longest
   transaction (seconds for date/time columns, units for numeric ones), or ``None`` to scan every row at or
   below the watermark on each poll (exact for any value, costly on big tables). Columns of other types
   (text, uuid) have no such bound.
3. **Deletes** are only seen as soft deletes: with ``soft_delete="deleted_at"`` a row whose column is set (not
   null, not false) is ``op="delete"``. Other rows are ``op="upsert"``: polling cannot tell an insert from an
   update. Rows whose ``col`` is NULL are never seen; updates must move ``col`` (e.g. ``updated_at``).

The watermark, P and the transactions seen running are saved per consumer and table (``poll_state``) after
the handlers of a poll finished: at-least-once, and a restart goes on where the last acknowledged poll ended.
The change id is ``poll:<table>:<key>:<xmin>``, the same for every delivery of one row version.

Two connections, owned by one :class:`_Connections` and lent to each call, never kept: the *reader* (the polls)
and the *writer* (the saved watermarks; the store asks for the current writer on each save). Either one failing
(a poll, a save, a reader found inside a transaction) marks both lost: the next round opens both again, with
backoff, and saves the watermarks acknowledged meanwhile before it polls. A peer that vanished is noticed within
:data:`pgchanges.db.connect.DEAD_PEER_SECONDS` (TCP keepalives and ``tcp_user_timeout``), even by a poll
blocked on a query sent into a partition.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import anyio
import psycopg

from pgchanges.capture import install as capture
from pgchanges.capture.queries import fetch_one
from pgchanges.change import Change
from pgchanges.errors import ConfigError, ConnectError, PermissionDenied
from pgchanges.names import TableName
from pgchanges.ops.figures import SourceFigures, watermark_lag
from pgchanges.sources.base import (
    CONNECTION_ERRORS,
    Event,
    EventFeed,
    Feed,
    Stopper,
    one_line,
    reconnect_with_backoff,
    require_tables,
)
from pgchanges.sources.options import PollingOptions
from pgchanges.sources.poll_state import FileStore, Poll, TableState, TableStore, open_store
from pgchanges.sources.polling_connections import PollingConnections
from pgchanges.sources.polling_plan import Plan, Planner

log = logging.getLogger("pgchanges.polling")


class PollingSource:
    """Changes of ``tables`` by polling a watermark column (``column``; per table with a mapping)."""

    name = "polling"
    acknowledges = True
    features: frozenset[str] = frozenset()

    def __init__(
        self,
        conninfo: str,
        tables: Sequence[TableName],
        channels: Sequence[str] = (),
        options: PollingOptions = PollingOptions(),  # noqa: B008 - immutable
        *,
        auto_install: bool = True,
    ) -> None:
        require_tables(self.name, tables, channels)
        if not options.column:
            raise ConfigError("the polling source needs the watermark column (column='updated_at')")
        self._tables = list(dict.fromkeys(tables))
        self._options = options
        self.consumer = options.consumer
        self.interval = options.interval
        self._planner = Planner(options.column, options.soft_delete, options.batch_size, options.late_window)
        self._auto_install = auto_install
        self._conns = PollingConnections(conninfo)
        self._store: TableStore | FileStore | None = None
        self._plans: dict[int, Plan] = {}
        self._states: dict[str, TableState] = {}
        self._pending: dict[str, deque[Poll]] = {}
        self._unsaved: dict[str, TableState] = {}  # acknowledged, not saved yet (the newest state per table)
        self._file_failing = False
        self._stopper = Stopper()
        self.figures = SourceFigures()  # progress, for metrics and readiness (pgchanges.ops)

    @property
    def state_location(self) -> str:
        """Where the watermarks are kept (a table or a file)."""
        return self._store.where if self._store is not None else "not open"

    def watermark_lag(self) -> float | None:
        """Now minus the oldest watermark of a date/time column, in seconds (``pgchanges_lag_seconds``)."""
        lags = [watermark_lag(s.position[0]) for s in list(self._states.values()) if s.position]
        return max((lag for lag in lags if lag is not None), default=None)

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._conns.open()
        try:
            await anyio.to_thread.run_sync(self._prepare)
        except BaseException:  # e.g. a bad configuration: the caller gets the error, not open connections
            with anyio.CancelScope(shield=True):
                await self._conns.close()
            raise

    async def _reconnect(self) -> bool:
        """Open both connections again (with backoff) and save what was acknowledged meanwhile; False when
        stopped first. What is in memory (watermarks, pending acknowledgements) stays."""
        log.warning("polling lost its connection (%s); reconnecting", self._conns.why_unusable)
        reopened = await reconnect_with_backoff(
            self._reopen,
            backoff=self._options.backoff,
            what="the polling connections",
            logger=log,
            stopper=self._stopper,
        )
        if reopened:
            log.warning("polling reconnected")
        return reopened

    async def _reopen(self) -> None:
        await self._conns.open()
        await anyio.to_thread.run_sync(self._save_unsaved)  # a failure here is one more failed attempt

    def _prepare(self) -> None:
        reader = self._conns.reader()
        with reader.transaction():
            for table in self._tables:
                if not table.is_pattern:
                    capture.table_oid(reader, table)
            self._refresh_plans(reader)
        self._store = open_store(self._conns.writer, self.consumer, self._options.state_file, self._auto_install)
        log.info("polling %s as consumer %r; watermarks in %s", self._describe(), self.consumer, self._store.where)

    def _describe(self) -> str:
        return ", ".join(str(t) for t in self._tables)

    async def close(self) -> None:
        await self._conns.close()

    async def feeds(self) -> Sequence[Feed]:
        return [EventFeed(self)]

    def stop(self) -> None:
        """Finish the poll in hand, then end :meth:`batches`."""
        self._stopper.stop()

    # -- planning ------------------------------------------------------------------------------------------

    def _refresh_plans(self, conn: psycopg.Connection[Any]) -> None:
        found = capture.resolve(conn, self._tables)
        self._plans = {oid: self._plans.get(oid) or self._planner.plan(conn, table, oid) for table, oid in found}

    # -- polling -------------------------------------------------------------------------------------------

    def _state_of(self, plan: Plan) -> TableState:
        key = str(plan.table)
        state = self._states.get(key)
        if state is None:
            assert self._store is not None
            state = TableState.from_json(self._store.load(key))
            self._states[key] = state
        return state

    def _poll_table(self, conn: psycopg.Connection[Any], plan: Plan) -> tuple[list[Change], TableState, bool]:
        """One poll of one table: its changes, the state after them, and whether the batch was full."""
        state = self._state_of(plan)
        with conn.transaction():
            now = fetch_one(conn, "polling_snapshot")
            snapshot, running = now.snapshot, now.running
            if state.position is None and self._options.start == "now":
                last = conn.execute(plan.last_row).fetchone()
                state = TableState(list(last) if last else None, snapshot, {})
            params = self._planner.params(plan, state)
            late: list[Change] = []
            if state.position is not None and state.snapshot is not None:
                cur = conn.execute(plan.late_rows, params)
                late = self._planner.changes(plan, cur, late=True)
            cur = conn.execute(plan.new_rows, params)
            fresh = self._planner.changes(plan, cur, late=False)
        position = json.loads(str(fresh[-1].position)) if fresh else state.position
        still_running = {x: base for x, base in state.running.items() if x in running}
        base = state.position[0] if state.position else None
        if base is not None:
            for xid in running:
                still_running.setdefault(xid, base)
        return [*late, *fresh], TableState(position, snapshot, still_running), len(fresh) >= self._options.batch_size

    async def batches(self) -> AsyncGenerator[list[Event], None]:
        """One list per poll of each table that had changes; sleeps ``interval`` between idle rounds."""
        stopper = self._stopper
        while not stopper.stopping:
            busy = False
            if not self._conns.usable and not await self._reconnect():  # e.g. a save failed meanwhile
                return
            try:
                for oid in list(await self._call(self._discover)):
                    changes, full = await self._call(self._poll_and_remember, oid)
                    busy = busy or full
                    if changes:
                        yield list(changes)
            except CONNECTION_ERRORS as exc:
                self._conns.lost(one_line(exc))  # the next round reconnects
                continue
            if not busy:
                await stopper.sleep(self.interval)

    def _discover(self, conn: psycopg.Connection[Any]) -> list[int]:
        with conn.transaction():
            self._refresh_plans(conn)
        return list(self._plans)

    def _poll_and_remember(self, conn: psycopg.Connection[Any], oid: int) -> tuple[list[Change], bool]:
        plan = self._plans[oid]
        try:
            changes, state, full = self._poll_table(conn, plan)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise PermissionDenied(f"permission denied polling {plan.table}: {' '.join(str(exc).split())}") from None
        key = str(plan.table)
        self._states[key] = state
        late = {c.id for c in changes if c.extra}
        fresh = [(c.id, json.loads(str(c.position))) for c in changes if not c.extra]
        self._pending.setdefault(key, deque()).append(Poll(state, late, fresh))
        if not changes:
            self.figures.advanced()  # this table is caught up
            self._save_acknowledged(key)
        return changes, full

    async def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(func, self._conns.reader(), *args)

    async def ack(self, changes: Sequence[Change]) -> None:
        """Acknowledge ``changes``; the watermark saved is the furthest point before which all are acknowledged."""
        touched: set[str] = set()
        for change in changes:
            key = str(TableName(change.schema or "", change.table or ""))
            if any(poll.acknowledge(change.id) for poll in self._pending.get(key, ())):
                touched.add(key)
        for key in touched:
            await anyio.to_thread.run_sync(self._save_acknowledged, key)

    def _save_acknowledged(self, key: str) -> None:
        queue = self._pending.get(key)
        to_save: TableState | None = None
        while queue:
            state, complete = queue[0].progress()
            to_save = state or to_save
            if not complete:
                break
            queue.popleft()
        if to_save is not None:
            self._unsaved[key] = to_save  # states only move forward: the newest covers the ones before
            self._save(key, strict=False)

    def _save_unsaved(self) -> None:
        """Save every acknowledged state not saved yet (after reconnecting); raises if the connection fails."""
        for key in list(self._unsaved):
            self._save(key, strict=True)

    def _save(self, key: str, *, strict: bool) -> None:
        """Save the newest acknowledged state of ``key``. A failed save to the table marks the connections lost
        (the next round reconnects, then saves); while they are, nothing is sent, and nothing logged again."""
        state = self._unsaved.get(key)
        if state is None or self._store is None:
            return
        if isinstance(self._store, TableStore) and not self._conns.usable:
            if strict:
                raise ConnectError(f"the polling connections are not usable ({self._conns.why_unusable})")
            return
        try:
            self._store.save(key, state.to_json())
        except CONNECTION_ERRORS as exc:
            if strict:
                raise
            log.warning("could not save the watermark of %s (%s); reconnecting, then saving it", key, one_line(exc))
            self._conns.lost(f"saving a watermark failed: {one_line(exc)}")
            return
        except OSError as exc:  # the state file: tried again at the next save
            if not self._file_failing:
                log.warning("could not save the watermark of %s (%s); it is saved after the next poll", key, exc)
            self._file_failing = True
            return
        self._file_failing = False
        if self._unsaved.get(key) is state:
            del self._unsaved[key]
