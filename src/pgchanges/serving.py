"""Serving an App: the one loop that takes batches from a source, runs the handlers, and settles them.

The App (:mod:`pgchanges.app`) is a registry of handlers; a :class:`Server` serves one App from one source:

* a source that keeps its place by acknowledgements (outbox, logical, polling) has one or more feeds; each is
  served by ``batches → runtime → settle``: the feed acknowledges only after the handlers returned, so a
  crash repeats at most the batch in hand (and the one read ahead, below);
* a feed that may be read ahead (``reads_ahead``: the logical stream) has its next batch read, and prepared
  by the batch routes that can (a forwarder makes its messages), while the batch in hand is handled: a sink's
  round trip to its broker overlaps the reading, decoding and formatting of what comes next. One batch
  ahead at most, handled and settled in order; nothing of it is acknowledged before it was handled. While
  the reader holds a batch it reads nothing, so the feed's ``keep_alive`` is called beside it (a replication
  connection the server hears nothing from is ended after wal_sender_timeout);
* the notify source acknowledges nothing: its changes go to per-table lanes (:mod:`pgchanges.lanes`) and the
  reader goes on while they are handled;
* gaps, plain notifications and DDL changes go to the App's callbacks in their place among the changes;
  whole transactions that a batch completes go to the transaction handlers before the batch is settled.

Stopping: :meth:`Server.stop` asks the source to finish the batch in hand; the notify lanes finish what they
hold. Every piece of user code runs through the :class:`~pgchanges.runtime.Runtime`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from anyio.abc import TaskStatus

from pgchanges.change import Change
from pgchanges.db.listener import Notification
from pgchanges.lanes import TableLanes
from pgchanges.names import TableName
from pgchanges.plain_run import Outcome
from pgchanges.runtime import Runtime
from pgchanges.sources.base import CALLBACK_OPS, Batch, Event, Feed, Source

log = logging.getLogger("pgchanges.app")

Callback = Callable[[Any], Awaitable[None] | None]
Keys = Sequence[str | None] | None
RunChanges = Callable[[Batch, Sequence[Change], Keys], Awaitable[list[Outcome]]]


class ServerObserver(Protocol):
    """What a server reports when observed (metrics and readiness, :mod:`pgchanges.ops`): per batch at most."""

    def serving(self, up: bool) -> None:
        """The source opened (True) or is closing (False)."""

    def settled(self) -> None:
        """A feed acknowledged a batch: its position advanced."""


@dataclass
class Callbacks:
    """The App's handlers of everything that is not a row change."""

    channels: dict[str, list[Callback]] = field(default_factory=dict)
    gaps: list[Callback] = field(default_factory=list)
    ddl: list[Callback] = field(default_factory=list)
    transactions: list[tuple[frozenset[TableName] | None, Callback]] = field(default_factory=list)


class Server:
    """Serves ``source`` to the handlers of ``runtime`` and ``callbacks`` until :meth:`stop`."""

    def __init__(self, source: Source, runtime: Runtime, callbacks: Callbacks, *, tables: str = "") -> None:
        self.source = source
        self._tables = tables
        self.runtime = runtime
        self._callbacks = callbacks
        self._stop = anyio.Event()
        self.observer: ServerObserver | None = None

    def stop(self) -> None:
        self._stop.set()

    async def serve(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the source, serve it until :meth:`stop`, close it (also when cancelled or failing)."""
        source = self.source
        try:
            await source.open()
            log.info("listening for changes (%s) on %s", source.name, self._tables or "no tables")
            feeds = await source.feeds()
            if self.observer is not None:
                self.observer.serving(True)
            if source.acknowledges:
                await self._serve_feeds(feeds, task_status)
            else:
                await self._serve_lanes(feeds, task_status)
        finally:
            if self.observer is not None:
                self.observer.serving(False)
            with anyio.CancelScope(shield=True):
                await source.close()

    async def _serve_feeds(self, feeds: Sequence[Feed], task_status: TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            for feed in feeds:
                tg.start_soon(self._drive, feed)
            task_status.started()
            await self._stop.wait()
            log.info("stopping: finishing the batch in hand")
            self.source.stop()

    async def _drive(self, feed: Feed) -> None:
        if getattr(feed, "reads_ahead", False):
            await self._drive_reading_ahead(feed)
            return
        async with contextlib.aclosing(feed.batches()) as batches:  # closed at once, also on a failure
            async for batch in batches:
                await self._handle_and_settle(feed, batch)

    async def _handle_and_settle(self, feed: Feed, batch: Batch) -> None:
        outcomes = await self._handle(batch, self._run_now)
        for changes in batch.transactions:
            await self._run_transaction(changes)
        await feed.settle(batch, outcomes)
        if self.observer is not None:
            self.observer.settled()

    async def _drive_reading_ahead(self, feed: Feed) -> None:
        """:meth:`_drive` with the next batch read and prepared meanwhile (see the module docstring): the reader
        hands each batch over an unbuffered stream, so it holds at most one while another is handled."""
        send, receive = anyio.create_memory_object_stream[Batch](0)

        async def read() -> None:
            async with send, contextlib.aclosing(feed.batches()) as batches:
                async for batch in batches:
                    self.runtime.prepare(batch.changes)
                    await send.send(batch)

        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(read)
            keep_alive = getattr(feed, "keep_alive", None)
            if keep_alive is not None:
                tg.start_soon(_keep_alive, keep_alive)
            async for batch in receive:
                await self._handle_and_settle(feed, batch)
            tg.cancel_scope.cancel()  # the reader ended: so does the keeper

    async def _serve_lanes(self, feeds: Sequence[Feed], task_status: TaskStatus[None]) -> None:
        async with TableLanes(self.runtime) as lanes, anyio.create_task_group() as tg:

            async def queue(batch: Batch, changes: Sequence[Change], keys: Keys) -> list[Outcome]:
                await lanes.dispatch(list(changes))
                return [None] * len(changes)

            async def read(feed: Feed) -> None:
                async with contextlib.aclosing(feed.batches()) as batches:
                    async for batch in batches:
                        await feed.settle(batch, await self._handle(batch, queue))

            for feed in feeds:
                tg.start_soon(read, feed)
            task_status.started()
            await self._stop.wait()
            tg.cancel_scope.cancel()
        log.info("stopping: finished queued changes")

    async def _run_now(self, batch: Batch, changes: Sequence[Change], keys: Keys) -> list[Outcome]:
        return await self.runtime.run_changes(changes, tx=batch.transaction, keys=keys)

    async def _handle(self, batch: Batch, run: RunChanges) -> list[Outcome]:
        """The batch's row changes through ``run``, its other events through the callbacks, in order."""
        if len(batch.events) == len(batch.changes):
            return await run(batch, batch.changes, batch.keys)
        outcomes: list[Outcome] = []
        segment: list[Change] = []

        async def flush() -> None:
            if segment:
                start = len(outcomes)
                keys = None if batch.keys is None else batch.keys[start : start + len(segment)]
                outcomes.extend(await run(batch, segment, keys))
                segment.clear()

        for event in batch.events:
            if isinstance(event, Change) and event.op not in CALLBACK_OPS:
                segment.append(event)
                continue
            await flush()
            await self._callback(event)
        await flush()
        return outcomes

    async def _callback(self, event: Event) -> None:
        call = self.runtime.call
        if isinstance(event, Notification):
            for handler in self._callbacks.channels.get(event.channel, ()):
                await call(handler, event, subject=f"notification on {event.channel!r}")
        elif event.op == "gap":
            log.warning("possible gap in changes: %s", (event.extra or {}).get("reason"))
            for handler in self._callbacks.gaps:
                await call(handler, event, subject=event)
        else:
            for handler in self._callbacks.ddl:
                await call(handler, event, subject=event)

    async def _run_transaction(self, changes: Sequence[Change]) -> None:
        for tables, handler in self._callbacks.transactions:
            picked = [c for c in changes if tables is None or any(t.matches(c.schema, c.table) for t in tables)]
            if picked:
                await self.runtime.call(handler, picked, subject=f"transaction {picked[0].xid}")


async def _keep_alive(keep_alive: Callable[[], None], every: float = 0.5) -> None:
    """Call a feed's ``keep_alive`` while it is served (it sends something only when nothing was sent lately:
    a replication connection that stays silent while a batch is in hand is ended by the server)."""
    while True:
        await anyio.sleep(every)
        keep_alive()
