"""Forwarding: a sink served as one more consumer of the handler runtime (``app.forward``, ``pgchanges forward``).

A :class:`Forwarder` is a *batch route* of the App (:meth:`pgchanges.routing.Router.add` with ``batch=True``):
the runtime hands it every change of a source batch it subscribed to (after ``where``), in commit order, and
the source settles the batch (confirms the slot, saves the watermark, commits the outbox claim) only after it
returned. It returns once the broker confirmed every change it accepted (:mod:`pgchanges.sinks.delivery`), so
a source's position never passes an unconfirmed change, on every source, and the source reads nothing more
while a batch is in hand: memory stays bounded however long a broker is away.

Per change it finds the row (the table's primary key, looked up once per table in the catalog), renders the
subject, formats the payload (or calls ``transform``), and hands the batch to the delivery. A change the
broker can never take fails (the outbox parks it and retries it, then makes it a dead letter with the
broker's error; logical and polling stop without acknowledging, unless a dead-letter table takes it).
"""

from __future__ import annotations

import json
import logging
import operator
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pgchanges.capture.queries import fetch_all, query
from pgchanges.change import Change
from pgchanges.db.connect import close_async, connect_async
from pgchanges.errors import ConfigError, SinkRejected
from pgchanges.names import TableName, parse_table
from pgchanges.plain_run import Outcome
from pgchanges.sinks import make_sink
from pgchanges.sinks.base import Message, Sink
from pgchanges.sinks.bridge import Bridge
from pgchanges.sinks.delivery import Delivery, Row
from pgchanges.sinks.formats import CONTENT_TYPES, make_formatter
from pgchanges.sinks.options import DEFAULT_WINDOW, sink_options
from pgchanges.sinks.templates import key_text
from pgchanges.sources.base import CONNECTION_ERRORS, Backoff, reconnect_with_backoff

log = logging.getLogger("pgchanges.forward")

Transform = Callable[[Change], Any]
FORWARD_BACKOFF = Backoff(initial=0.1, maximum=5.0)
KeyGetter = Callable[[Mapping[str, Any]], tuple[Any, ...]]


class Forwarder:
    """Forwards the changes of its routes to ``sink``."""

    def __init__(
        self,
        conninfo: str,
        sink: Sink,
        *,
        format: str = "json",
        transform: Transform | None = None,
        window: int = DEFAULT_WINDOW,
        backoff: Backoff = FORWARD_BACKOFF,
        dead_letter_table: str | TableName | None = None,
    ) -> None:
        if window < 1:
            raise ConfigError(f"window must be at least 1, not {window}")
        self.sink = sink
        self._conninfo = conninfo
        database = str(conninfo_to_dict(conninfo).get("dbname") or "postgres")
        self._format = make_formatter(format, database=database)
        self._content_type = CONTENT_TYPES[format]
        self._transform = transform
        self._dead_letters = (
            dead_letter_table
            if dead_letter_table is None or isinstance(dead_letter_table, TableName)
            else parse_table(dead_letter_table)
        )
        self._dead_letters_ready = False
        self._bridge = Bridge(sink.name.split(":", 1)[0])
        self.delivery = Delivery(sink, self._bridge, window=window, backoff=backoff, on_rejected=self._rejected)
        self._backoff = backoff
        self._keys: dict[tuple[str | None, str | None], KeyGetter | None] = {}  # None: the table has no key
        #: what prepare() made: id(change) -> (change, row, message); forward() takes what is its
        self._prepared: dict[int, tuple[Change, Row, Message | SinkRejected | None]] = {}
        self._conn: psycopg.Connection[Any] | None = None
        self._lock: anyio.Lock | None = None

    @property
    def dead_letters(self) -> TableName | None:
        return self._dead_letters

    def handler(self) -> Callable[[list[Change]], Awaitable[list[Outcome]]]:
        """The batch handler to route changes to, named after the sink (logs and errors say where to)."""

        async def forward(changes: list[Change]) -> list[Outcome]:
            return await self.forward(changes)

        forward.__qualname__ = forward.__name__ = f"forward to {self.sink.name}"
        return forward

    async def forward(self, changes: Sequence[Change]) -> list[Outcome]:
        """Publish ``changes`` and return when the broker answered for each (one outcome per change)."""
        if self.sink.asyncio_only:
            await self._bridge.start()
        await self._learn_keys(changes)
        rows: list[Row] = []
        messages: list[Message | SinkRejected | None] = []
        prepared = self._prepared
        for change in changes:
            made = prepared.pop(id(change), None)
            if made is None or made[0] is not change:  # not read ahead (or another change of that address)
                row, key = self._row(change)
                made = (change, row, self._message(change, key))
            rows.append(made[1])
            messages.append(made[2])
        outcomes = await self.delivery.deliver(messages, rows, changes)
        linger = getattr(self.sink, "linger", 0.0)
        if linger and len(changes) < getattr(self.sink, "batch_size", 0):
            await anyio.sleep(linger)  # let the source gather more for the next POST (see WebhookOptions)
        return outcomes

    def prepare(self, changes: Sequence[Change]) -> None:
        """Make the messages of a batch read ahead, while the batch before waits for the broker (the runtime
        calls this; see :mod:`pgchanges.serving`): :meth:`forward` then finds them made. Not with a
        ``transform`` (user code runs when the batch is handled, once), nor for a table whose key columns are
        not known yet (looking them up is :meth:`forward`'s)."""
        keys = self._keys
        if self._transform is not None or any(c.table is not None and (c.schema, c.table) not in keys for c in changes):
            return
        prepared = self._prepared
        if len(prepared) > 2 * self.delivery.window:  # left by changes ``where`` kept from forward(): drop them
            prepared.clear()
        for change in changes:  # one call per route (table) of the forwarder: they add up
            row, key = self._row(change)
            prepared[id(change)] = (change, row, self._message(change, key))

    def _message(self, change: Change, key: str) -> Message | SinkRejected | None:
        template = self.sink.template
        try:
            if self._transform is None:
                payload = self._format(change)
            else:
                shaped = self._transform(change)
                if shaped is None:
                    return None  # the transform skips it: nothing to send, handled
                payload = _as_bytes(shaped)
            return Message(change, template.render(change, key), payload, self._content_type)
        except Exception as exc:
            return SinkRejected(f"cannot make the message of change {change.id}: {type(exc).__name__}: {exc}")

    # -- rows ------------------------------------------------------------------------------------------------

    def _row(self, change: Change) -> tuple[Row, str]:
        """The change's row (whole table for a truncate or a table without key) and its ``{key}`` text."""
        key_of = self._keys.get((change.schema, change.table))
        values = change.old if change.op == "delete" else change.new
        if key_of is None or values is None or change.op == "truncate":
            return (change.schema, change.table, None), ""
        try:
            found = key_of(values)
        except KeyError:  # e.g. a delete without the key columns (REPLICA IDENTITY NOTHING)
            return (change.schema, change.table, None), ""
        template = self.sink.template
        text = key_text(found, template.clean) if template.uses_key else ""
        key: object = found
        try:
            hash(found)
        except TypeError:  # a key of arrays or json: compare their text
            key = repr(found)
        return (change.schema, change.table, key), text

    async def _learn_keys(self, changes: Sequence[Change]) -> None:
        missing = {(c.schema, c.table) for c in changes if c.table is not None} - self._keys.keys()
        for schema, table in sorted(missing, key=str):
            rows = await self._catalog(fetch_all, "forward_row_key", {"schema": schema, "table": table})
            self._keys[(schema, table)] = _key_getter(tuple(r.column_name for r in rows))

    async def _catalog(self, call: Callable[..., Any], *args: Any) -> Any:
        """``call(connection, *args)`` in a worker thread, on the forwarder's own connection (reopened when
        it broke, with backoff); one call at a time (the outbox's workers forward side by side)."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            return await self._on_catalog(call, *args)

    async def _on_catalog(self, call: Callable[..., Any], *args: Any) -> Any:
        for _ in range(2):
            if self._conn is None or self._conn.closed:
                await reconnect_with_backoff(
                    self._open, backoff=self._backoff, what="the forwarder's catalog connection", logger=log
                )
            try:
                return await anyio.to_thread.run_sync(call, self._conn, *args)
            except CONNECTION_ERRORS:
                await close_async(self._conn)
                self._conn = None
        return await anyio.to_thread.run_sync(call, self._conn, *args)

    async def _open(self) -> None:
        self._conn = await connect_async(self._conninfo)

    # -- what the broker refused ---------------------------------------------------------------------------

    async def _rejected(self, change: Change, error: SinkRejected) -> Outcome:
        """A change the broker will never take: a failure, or (with a dead-letter table) a row there."""
        table = self._dead_letters
        if table is None:
            return error
        params = {
            "sink": self.sink.name,
            "change_id": change.id,
            "table_name": change.qualified_table,
            "op": change.op,
            "change": change.to_json(),
            "error": str(error),
        }
        await self._catalog(_write_dead_letter, table, params, not self._dead_letters_ready)
        self._dead_letters_ready = True
        log.error("%s; change %s went to dead-letter table %s", error, change.id, table)
        return None

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def keep_open(self) -> None:
        """Run beside the App: when the App stops (this task is cancelled), close the sink and connections."""
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self.close()

    async def close(self) -> None:
        try:
            await self.delivery.close()
        finally:
            await self._bridge.stop()
            conn, self._conn = self._conn, None
            await close_async(conn)


def _write_dead_letter(
    conn: psycopg.Connection[Any], table: TableName, params: Mapping[str, Any], create: bool
) -> None:
    if create:
        conn.execute(sql.SQL(query("forward_dead_letter_table")).format(table=table.identifier))
    conn.execute(sql.SQL(query("forward_dead_letter")).format(table=table.identifier), params)


def _key_getter(columns: tuple[str, ...]) -> KeyGetter | None:
    """A row's primary key values as a tuple (several columns: an itemgetter, no frame of ours per change),
    or None for a table without a key."""
    if not columns:
        return None
    if len(columns) == 1:
        column = columns[0]

        def one(values: Mapping[str, Any]) -> tuple[Any, ...]:
            return (values[column],)

        return one
    getter: KeyGetter = operator.itemgetter(*columns)
    return getter


def _as_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def make_forwarder(
    conninfo: str,
    to: str | Sink,
    *,
    format: str = "json",
    transform: Transform | None = None,
    window: int = DEFAULT_WINDOW,
    dead_letter_table: str | TableName | None = None,
    **options: Any,
) -> Forwarder:
    """A forwarder to ``to`` (a URL, with the sink's ``options``, or a Sink object)."""
    if isinstance(to, str):
        sink = make_sink(to, sink_options(to, options))
    elif options:
        raise ConfigError(f"sink options ({', '.join(sorted(options))}) go with a URL, not a Sink object")
    else:
        sink = to
    return Forwarder(
        conninfo, sink, format=format, transform=transform, window=window, dead_letter_table=dead_letter_table
    )
