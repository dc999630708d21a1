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
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import psycopg
from psycopg import sql

from pgchanges.capture import install as capture
from pgchanges.change import EMPTY, Change, freeze
from pgchanges.db.connect import close_async, connect_async
from pgchanges.errors import ConfigError, ConnectError, PermissionDenied
from pgchanges.names import TableName
from pgchanges.sources.base import Backoff, Event, EventFeed, Feed, require_tables
from pgchanges.sources.poll_state import FileStore, TableStore, open_store

log = logging.getLogger("pgchanges.polling")

_XID8_OF_XMIN = sql.SQL(
    # the row's 32-bit xmin widened with the epoch of the current snapshot (no xid -> xid8 cast before PG 17)
    "greatest(3, (s.xmax8 >> 32 << 32) + t.xmin::text::bigint"
    " - CASE WHEN t.xmin::text::bigint > (s.xmax8 & 4294967295) THEN 4294967296 ELSE 0 END)::text::xid8"
)


@dataclass
class TableState:
    """What a consumer knows about one table: where it is, and what could still commit behind it."""

    position: list[str] | None = None  # text of col and key values of the last row delivered
    snapshot: str | None = None  # pg_current_snapshot() of the last poll
    running: dict[str, str] = field(default_factory=dict)  # xid -> watermark col when first seen running

    def to_json(self) -> dict[str, Any]:
        return {"position": self.position, "snapshot": self.snapshot, "running": self.running}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> TableState:
        if not data:
            return cls()
        return cls(data.get("position"), data.get("snapshot"), dict(data.get("running") or {}))


@dataclass(frozen=True)
class _Plan:
    """The queries of one table, built from its catalog entry."""

    table: TableName
    order: tuple[str, ...]  # the watermark column, then the primary key
    types: tuple[str, ...]
    new_rows: sql.Composed
    late_rows: sql.Composed
    last_row: sql.Composed  # the watermark of the newest row (start="now")


@dataclass
class _Poll:
    """One poll's changes of one table, waiting for acknowledgement before its state (or part of it) is saved.

    Once every late change and the first k new ones are acknowledged, the state up to the k-th new row is
    safe to save: every row at or below it that the poll's snapshot shows has been handled.
    """

    state: TableState
    late: set[str]
    fresh: list[tuple[str, list[str]]]  # (change id, position after it), in watermark order
    acked: set[str] = field(default_factory=set)
    saved: int = 0  # how many of ``fresh`` the saved state covers

    def acknowledge(self, change_id: str) -> bool:
        if change_id in self.late:
            self.late.discard(change_id)
            return True
        if any(change_id == item[0] for item in self.fresh[self.saved :]):
            self.acked.add(change_id)
            return True
        return False

    def progress(self) -> tuple[TableState | None, bool]:
        """The state to save now (None: no progress) and whether this poll is completely acknowledged."""
        if self.late:
            return None, False
        k = self.saved
        while k < len(self.fresh) and self.fresh[k][0] in self.acked:
            k += 1
        if k == len(self.fresh):
            return self.state, True
        if k == self.saved:
            return None, False
        self.saved = k
        return TableState(self.fresh[k - 1][1], self.state.snapshot, self.state.running), False


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
        *,
        column: str | Mapping[str, str] | None = None,
        consumer: str = "default",
        interval: float = 1.0,
        late_window: float | None = 300.0,
        soft_delete: str | None = None,
        batch_size: int = 1000,
        state_file: str | Path | None = None,
        start: Literal["beginning", "now"] = "beginning",
        auto_install: bool = True,
        backoff: Backoff = Backoff(),  # noqa: B008 - immutable
    ) -> None:
        require_tables(self.name, tables, channels)
        if not column:
            raise ConfigError("the polling source needs the watermark column (column='updated_at')")
        if start not in ("beginning", "now"):
            raise ConfigError(f"start must be 'beginning' or 'now', not {start!r}")
        self._conninfo = conninfo
        self._tables = list(dict.fromkeys(tables))
        self._column = column
        self.consumer = consumer
        self.interval = interval
        self._late_window = late_window
        self._soft_delete = soft_delete
        self._batch_size = batch_size
        self._state_file = state_file
        self._start = start
        self._auto_install = auto_install
        self._backoff = backoff
        self._reader: psycopg.Connection[Any] | None = None
        self._writer: psycopg.Connection[Any] | None = None
        self._store: TableStore | FileStore | None = None
        self._plans: dict[int, _Plan] = {}
        self._states: dict[str, TableState] = {}
        self._pending: dict[str, deque[_Poll]] = {}
        self._stopping = False
        self._wait_scope: anyio.CancelScope | None = None

    @property
    def state_location(self) -> str:
        """Where the watermarks are kept (a table or a file)."""
        return self._store.where if self._store is not None else "not open"

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._connect()
        await anyio.to_thread.run_sync(self._prepare)

    async def _connect(self) -> None:
        self._writer = await connect_async(self._conninfo)
        self._reader = await connect_async(self._conninfo, autocommit=False)
        await anyio.to_thread.run_sync(self._configure_reader)

    def _configure_reader(self) -> None:
        assert self._reader is not None
        self._reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self._reader.read_only = True
        with self._reader.transaction():
            self._reader.execute("SET datestyle = 'ISO, YMD'")  # watermark text must read back the same

    async def _reconnect(self) -> None:
        """Open both connections again, with backoff; what is in memory (watermarks, pending acks) stays."""
        attempt = 0
        while not self._stopping:
            for conn in (self._reader, self._writer):
                await close_async(conn)
            try:
                await self._connect()
            except (ConnectError, psycopg.OperationalError) as exc:
                delay = self._backoff.delay(attempt)
                attempt += 1
                log.warning("polling: reconnecting failed (%s); retrying in %.2fs", exc, delay)
                await anyio.sleep(delay)
                continue
            if isinstance(self._store, TableStore):
                assert self._writer is not None
                self._store = TableStore(self._writer, self.consumer)
            return

    def _prepare(self) -> None:
        assert self._reader is not None and self._writer is not None
        with self._reader.transaction():
            for table in self._tables:
                if not table.is_pattern:
                    capture.table_oid(self._reader, table)
            self._refresh_plans(self._reader)
        self._store = open_store(self._writer, self.consumer, self._state_file, self._auto_install)
        log.info("polling %s as consumer %r; watermarks in %s", self._describe(), self.consumer, self._store.where)

    def _describe(self) -> str:
        return ", ".join(str(t) for t in self._tables)

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            await close_async(conn)
        self._reader = self._writer = None

    async def feeds(self) -> Sequence[Feed]:
        return [EventFeed(self)]

    def stop(self) -> None:
        """Finish the poll in hand, then end :meth:`batches`."""
        self._stopping = True
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    # -- planning ------------------------------------------------------------------------------------------

    def _refresh_plans(self, conn: psycopg.Connection[Any]) -> None:
        found = capture.resolve(conn, self._tables)
        self._plans = {oid: self._plans.get(oid) or self._plan(conn, table, oid) for table, oid in found}

    def _column_of(self, table: TableName) -> str:
        if isinstance(self._column, str):
            return self._column
        for key in (str(table), f"{table.schema}.{table.table}", table.table):
            if key in self._column:
                return self._column[key]
        raise ConfigError(f"no watermark column given for {table} (column={dict(self._column)!r})")

    def _plan(self, conn: psycopg.Connection[Any], table: TableName, oid: int) -> _Plan:
        column = self._column_of(table)
        key_row = conn.execute(capture.PRIMARY_KEY_SQL, (oid,)).fetchone()
        key = list(key_row[0]) if key_row and key_row[0] else []
        if not key:
            raise ConfigError(f"polling {table} needs a primary key, to order rows that share a {column} value")
        order = [column, *(k for k in key if k != column)]
        rows = dict(
            conn.execute(
                """SELECT a.attname, format_type(a.atttypid, a.atttypmod) || ' ' || t.typcategory::text
                   FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
                   WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped""",
                (oid,),
            ).fetchall()
        )
        for name in (column, *([self._soft_delete] if self._soft_delete else [])):
            if name not in rows:
                raise ConfigError(f"table {table} has no column {name!r}")
        types = [rows[c].rsplit(" ", 1)[0] for c in order]
        category = rows[column].rsplit(" ", 1)[1]
        return _Plan(table, tuple(order), tuple(types), *self._queries(table, order, types, category))

    def _queries(
        self, table: TableName, order: list[str], types: list[str], category: str
    ) -> tuple[sql.Composed, sql.Composed, sql.Composed]:
        columns = sql.SQL(", ").join(sql.Identifier("t", c) for c in order)
        texts = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier("t", c)) for c in order)
        values = sql.SQL(", ").join(
            sql.SQL("{}::{}").format(sql.Placeholder(f"p{i}"), sql.SQL(typ)) for i, typ in enumerate(types)
        )
        column = sql.Identifier("t", order[0])
        select = sql.SQL("SELECT t.*, t.xmin::text, {texts} FROM {table} t").format(texts=texts, table=table.identifier)
        new_rows = sql.SQL(
            "{select} WHERE {column} IS NOT NULL AND (%(first)s OR ({columns}) > ({values})) "
            "ORDER BY {columns} LIMIT {limit}"
        ).format(select=select, column=column, columns=columns, values=values, limit=sql.Literal(self._batch_size))
        base = sql.SQL("(SELECT min(b) FROM unnest(%(bases)s::{}[]) AS b)").format(sql.SQL(types[0]))
        floor: sql.Composable
        if self._late_window is None:  # no bound: every poll scans all rows at or below the watermark
            floor = sql.SQL("")
        elif category == "D":  # date/time: late_window is seconds
            floor = sql.SQL("AND {} >= {} - make_interval(secs => %(window)s)").format(column, base)
        elif category == "N":
            floor = sql.SQL("AND {} >= {} - %(window)s").format(column, base)
        else:
            floor = sql.SQL("")
        late_rows = sql.SQL(
            "WITH s AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax8) "
            "{select} CROSS JOIN s WHERE {column} IS NOT NULL AND ({columns}) <= ({values}) {floor} "
            "AND NOT pg_visible_in_snapshot({xid8}, %(previous)s::pg_snapshot) ORDER BY {columns}"
        ).format(select=select, column=column, columns=columns, values=values, floor=floor, xid8=_XID8_OF_XMIN)
        last_row = sql.SQL("SELECT {texts} FROM {table} t ORDER BY {descending} LIMIT 1").format(
            texts=texts,
            table=table.identifier,
            descending=sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier("t", c)) for c in order),
        )
        return new_rows, late_rows, last_row

    # -- polling -------------------------------------------------------------------------------------------

    def _state_of(self, plan: _Plan) -> TableState:
        key = str(plan.table)
        state = self._states.get(key)
        if state is None:
            assert self._store is not None
            state = TableState.from_json(self._store.load(key))
            self._states[key] = state
        return state

    def _poll_table(self, conn: psycopg.Connection[Any], plan: _Plan) -> tuple[list[Change], TableState, bool]:
        """One poll of one table: its changes, the state after them, and whether the batch was full."""
        state = self._state_of(plan)
        with conn.transaction():
            snapshot, running = conn.execute(
                "SELECT pg_current_snapshot()::text, ARRAY(SELECT pg_snapshot_xip(pg_current_snapshot())::text)"
            ).fetchone()  # type: ignore[misc]
            if state.position is None and self._start == "now":
                last = conn.execute(plan.last_row).fetchone()
                state = TableState(list(last) if last else None, snapshot, {})
            params = self._params(plan, state)
            late: list[Change] = []
            if state.position is not None and state.snapshot is not None:
                cur = conn.execute(plan.late_rows, params)
                late = self._changes(plan, cur, late=True)
            cur = conn.execute(plan.new_rows, params)
            fresh = self._changes(plan, cur, late=False)
        position = json.loads(str(fresh[-1].position)) if fresh else state.position
        still_running = {x: base for x, base in state.running.items() if x in running}
        base = state.position[0] if state.position else None
        if base is not None:
            for xid in running:
                still_running.setdefault(xid, base)
        return [*late, *fresh], TableState(position, snapshot, still_running), len(fresh) >= self._batch_size

    def _params(self, plan: _Plan, state: TableState) -> dict[str, Any]:
        position: list[str | None] = list(state.position) if state.position else [None] * len(plan.order)
        params: dict[str, Any] = {f"p{i}": value for i, value in enumerate(position)}
        params["first"] = state.position is None
        params["previous"] = state.snapshot
        params["bases"] = [*state.running.values(), *(state.position or [])[:1]]
        params["window"] = self._late_window
        return params

    def _changes(self, plan: _Plan, cursor: psycopg.Cursor[Any], *, late: bool) -> list[Change]:
        description = cursor.description or []
        extras = 1 + len(plan.order)
        names = [d.name for d in description[: len(description) - extras]]
        soft = self._soft_delete
        table = plan.table
        prefix = f"poll:{table.schema}.{table.table}:"
        out: list[Change] = []
        for row in cursor:
            values = dict(zip(names, row, strict=False))
            xmin = row[-extras]
            key = list(row[-extras + 1 :])
            deleted = soft is not None and values.get(soft) not in (None, False)
            out.append(
                Change(
                    f"{prefix}{','.join(key[1:])}:{xmin}",
                    "delete" if deleted else "upsert",
                    table.schema,
                    table.table,
                    None if deleted else freeze(values),
                    freeze(values) if deleted else None,
                    EMPTY,
                    int(xmin),
                    None,
                    json.dumps(key),
                    self.name,
                    freeze({"late": True}) if late else None,
                )
            )
        return out

    async def batches(self) -> AsyncGenerator[list[Event], None]:
        """One list per poll of each table that had changes; sleeps ``interval`` between idle rounds."""
        while not self._stopping:
            busy = False
            if any(conn is None or conn.closed or conn.broken for conn in (self._reader, self._writer)):
                await self._reconnect()  # e.g. the writer broke while saving a watermark
            try:
                for oid in list(await self._call(self._discover)):
                    changes, full = await self._call(self._poll_and_remember, oid)
                    busy = busy or full
                    if changes:
                        yield list(changes)
            except (psycopg.OperationalError, ConnectError) as exc:
                log.warning("polling lost its connection (%s); reconnecting", " ".join(str(exc).split()))
                await self._reconnect()
                continue
            if not busy and not self._stopping:
                with anyio.CancelScope() as self._wait_scope:
                    await anyio.sleep(self.interval)
                self._wait_scope = None

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
        self._pending.setdefault(key, deque()).append(_Poll(state, late, fresh))
        if not changes:
            self._save_acknowledged(key)
        return changes, full

    async def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        if self._reader is None:
            raise ConnectError("the polling source is closed")
        return await anyio.to_thread.run_sync(func, self._reader, *args)

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
            assert self._store is not None
            try:
                self._store.save(key, to_save.to_json())
            except (psycopg.OperationalError, OSError) as exc:
                # states only move forward: the next save (after the next poll, even an empty one) covers it
                log.warning("could not save the watermark of %s (%s); it is saved after the next poll", key, exc)
