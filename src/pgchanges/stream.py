"""``pgchanges.stream()``: changes as an async iterator, for scripts and the terminal.

    async with pgchanges.stream(dsn, tables=["public.orders"]) as changes:
        async for change in changes:
            ...
            await changes.ack(change)   # durable sources advance only after ack; a no-op for notify

Gap markers (``op == "gap"``) are yielded in place, so a loop that resynchronises on them cannot miss what
follows. Plain notifications on ``channels`` are not yielded here; use an App with ``on_notify`` for those.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio

from pgchanges import conninfo as ci
from pgchanges.change import OPS, Change
from pgchanges.names import TableName, parse_table
from pgchanges.routing import normalise_ops
from pgchanges.sources.base import Event, Source
from pgchanges.sources.factory import make_source
from pgchanges.sources.options import options_for


class ChangeStream:
    """An open stream of changes; iterate it (as often as you like: each loop goes on where the last one
    stopped), and ack what you have handled."""

    def __init__(self, source: Source, ops: frozenset[str]) -> None:
        self.source = source
        self._ops = ops | {"gap"}
        self._batches: AsyncIterator[list[Event]] | None = None  # one reader of the source, closed at the end
        self._pending: deque[Change] = deque()

    def __aiter__(self) -> ChangeStream:
        return self

    async def __anext__(self) -> Change:
        while not self._pending:
            if self._batches is None:
                self._batches = self.source.batches()
            batch = await anext(self._batches)
            self._pending.extend(e for e in batch if isinstance(e, Change) and e.op in self._ops)
        return self._pending.popleft()

    async def aclose(self) -> None:
        """End the reader of the source (the stream's context manager does this)."""
        batches, self._batches = self._batches, None
        close = getattr(batches, "aclose", None)
        if close is not None:
            await close()

    async def ack(self, *changes: Change) -> None:
        """Mark ``changes`` handled (durable sources resume after the last acknowledged change)."""
        await self.source.ack(changes)


@asynccontextmanager
async def stream(
    dsn: ci.ConnectionSource = None,
    *,
    tables: Iterable[str | TableName] = (),
    source: str = "notify",
    engine: Any = None,
    ops: Iterable[str] | None = None,
    auto_install: bool = True,
    **options: Any,
) -> AsyncIterator[ChangeStream]:
    """Open a stream of changes of ``tables`` from ``source`` (``ddl=True``, notify source: DDL changes too)."""
    conninfo = ci.resolve(dsn, engine=engine)
    names: Sequence[TableName] = [t if isinstance(t, TableName) else parse_table(t) for t in tables]
    ddl = bool(options.pop("ddl", False))
    opened = make_source(conninfo, names, options_for(source, options), auto_install=auto_install, ddl=ddl)
    try:
        await opened.open()
        changes = ChangeStream(opened, OPS if ops is None else normalise_ops(ops))
        try:
            yield changes
        finally:
            with anyio.CancelScope(shield=True):
                await changes.aclose()
    finally:
        with anyio.CancelScope(shield=True):
            await opened.close()  # also after a failed open(): what it opened is closed
