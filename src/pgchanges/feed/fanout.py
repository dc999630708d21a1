"""Fan-out: one retained log to every client, each change filtered and encoded once per view.

A **view** is what a set of clients share: the same selection (tables, ``where``) and the same principal
(hence the same ``allow`` verdicts and hidden columns). A view decides once per change whether it is in
(selection, then ``allow``) and what its payload is (the entry's JSON, or a copy without hidden columns),
and keeps the SSE bytes of the run of entries it last wrote, so that of a thousand clients at the same
position one builds the bytes and the others write them.

A **client** is a position in the log and a loop (:meth:`Fanout.stream`): write every entry after the
position that its view takes, as one write, then wait for the log's head to move; one timer for the feed
(:meth:`Fanout.tick`) wakes every client now and then to send a keep-alive.
When several changes are pending they go out together. Nothing queues per client: a client that reads
slowly falls behind in the log, and once the log forgets its position (retention) it is dropped with a
reason rather than kept in memory; it reconnects with its last offset and is told 409 (expired).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel

from pgchanges.feed import sse
from pgchanges.feed.auth import Allow, Hide, allowed, hidden_columns, principal_key, without_columns
from pgchanges.feed.filters import Selection
from pgchanges.feed.log import Entry, RetainedLog

log = logging.getLogger("pgchanges.feed")

MAX_BATCH = 512  # entries scanned per write; more pending are written in further writes
PAGE_SCAN = 10  # a JSON page scans at most this many times its limit of entries for matches
VIEW_CACHE = 8192  # per view: the last entries whose verdict and payload are kept


class View:
    """The clients of one selection and principal; see the module docstring."""

    def __init__(self, selection: Selection, principal: Any, allow: Allow | None, hide: Hide | None) -> None:
        self.selection = selection
        self.principal = principal
        self._allow = allow
        self._hide = hide
        self._hidden: dict[str | None, frozenset[str]] = {}
        self._payloads: dict[int, bytes | None] = {}
        self._chunk: tuple[int, int, bytes, int] = (-1, -1, b"", 0)  # (after, up to, bytes, events)
        self.clients = 0

    def payload(self, seq: int, entry: Entry) -> bytes | None:
        """What the view sends of entry ``seq``; None: not for it (another table, a filter, ``allow``)."""
        cache = self._payloads
        if seq in cache:
            return cache[seq]
        change = entry.change
        found: bytes | None = None
        if self.selection.accepts(change) and allowed(self._allow, self.principal, change):
            table = change.qualified_table
            hidden = self._hidden.get(table)
            if hidden is None:
                hidden = self._hidden[table] = hidden_columns(self._hide, self.principal, table or "")
            found = entry.payload if not hidden else without_columns(change, hidden)
        cache[seq] = found
        if len(cache) > VIEW_CACHE:
            for old in list(cache)[: len(cache) - VIEW_CACHE // 2]:
                del cache[old]
        return found

    def chunk(self, book: RetainedLog, after: int) -> tuple[bytes, int, int]:
        """SSE bytes of the view's entries after ``after`` (at most MAX_BATCH scanned), the position they end
        at, and how many events they hold."""
        head = book.head
        upto = min(head, after + MAX_BATCH)
        cached_after, cached_upto, data, count = self._chunk
        if cached_after == after and cached_upto == upto:
            return data, upto, count
        parts: list[bytes] = []
        seq = after
        for seq, entry in enumerate(book.entries(after, upto - after), start=after + 1):
            payload = self.payload(seq, entry)
            if payload is not None:
                parts.append(b"id: " + entry.token + b"\ndata: " + payload + b"\n\n")
        data = b"".join(parts)
        self._chunk = (after, upto, data, len(parts))
        return data, upto, len(parts)

    def page(self, book: RetainedLog, after: int, limit: int) -> tuple[list[bytes], int]:
        """Up to ``limit`` payloads after ``after`` and the position they end at (a JSON page)."""
        found: list[bytes] = []
        seq = after
        for seq, entry in enumerate(book.entries(after, limit * PAGE_SCAN), start=after + 1):
            payload = self.payload(seq, entry)
            if payload is not None:
                found.append(payload)
                if len(found) == limit:
                    break
        return found, seq


@dataclass
class FanoutFigures:
    """What the dashboard and the benchmark read: clients now, events written, clients dropped and why."""

    clients: int = 0
    delivered_total: int = 0
    writes_total: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


class Fanout:
    """The views of one feed and the loop of each client."""

    def __init__(
        self, book: RetainedLog, *, allow: Allow | None, hide: Hide | None, keep_alive: float = 15.0
    ) -> None:
        self.log = book
        self._allow = allow
        self._hide = hide
        self.keep_alive = keep_alive
        self.views: dict[tuple[Selection, Any], View] = {}
        self.figures = FanoutFigures()
        self.closing = False
        self.ticks = 0

    def view(self, selection: Selection, principal: Any) -> View:
        key = (selection, principal_key(principal))
        found = self.views.get(key)
        if found is None:
            found = self.views[key] = View(selection, principal, self._allow, self._hide)
        return found

    def _release(self, view: View) -> None:
        if view.clients <= 0:
            for key, known in list(self.views.items()):
                if known is view:
                    del self.views[key]

    def close(self) -> None:
        """End every stream (the feed stops): each client's loop returns after its current write."""
        self.closing = True
        self.log.wake()

    def page(self, view: View, after: int, limit: int) -> tuple[bytes, int, bool]:
        """A JSON page: the body's ``changes`` array, the position it ends at, whether that is the head."""
        payloads, upto = view.page(self.log, after, limit)
        return b"[" + b",".join(payloads) + b"]", upto, upto >= self.log.head

    async def wait_page(self, view: View, after: int, limit: int, seconds: float) -> tuple[bytes, int, bool] | None:
        """:meth:`page`, waiting up to ``seconds`` for a change of the view when there is none yet (long
        polling); None when the log forgot the position meanwhile (the offset expired)."""
        found = (b"[]", after, True)
        with anyio.move_on_after(seconds):
            while not self.closing:
                if after < self.log.oldest - 1:
                    return None
                found = self.page(view, after, limit)
                body, after, up_to_date = found
                if body != b"[]":
                    break
                if up_to_date:
                    await self.log.next_wake()
                else:
                    await anyio.lowlevel.checkpoint()  # a long run the view leaves out: scan on, letting others run
        return found

    def release(self, view: View) -> None:
        """A request that used ``view`` without streaming is done."""
        self._release(view)

    async def stream(self, view: View, after: int) -> AsyncGenerator[bytes, None]:
        """The SSE bytes of one client from position ``after`` on, until it is dropped or the feed closes."""
        book, figures = self.log, self.figures
        view.clients += 1
        figures.clients += 1
        try:
            yield sse.hello(book.token_at(after))
            position, announced = after, after
            while not self.closing:
                if position < book.oldest - 1:
                    figures.dropped["behind"] += 1
                    yield sse.dropped("offset_expired", "this client fell behind what the feed retains")
                    return
                if position < book.head:
                    data, position, count = view.chunk(book, position)
                    if count:
                        figures.delivered_total += count
                        figures.writes_total += 1
                        announced = position
                        yield data
                    if position < book.head:
                        await anyio.lowlevel.checkpoint()  # a write may not have waited: let others run
                    continue
                ticks = self.ticks
                await book.next_wake()  # a change, a keep-alive tick (:meth:`tick`), or the feed closing
                if self.ticks != ticks and position == book.head:
                    yield sse.keep_alive(book.token_at(position) if position != announced else None)
                    announced = position
        finally:
            view.clients -= 1
            figures.clients -= 1
            self._release(view)

    async def tick(self) -> None:
        """Every ``keep_alive`` seconds, wake every client: those with nothing new send a keep-alive. One timer
        for all clients rather than a timeout per client and wait."""
        while True:
            await anyio.sleep(self.keep_alive)
            self.ticks += 1
            self.log.wake()


def views_summary(views: Sequence[View]) -> list[dict[str, Any]]:
    """The views for the dashboard: tables, filtered columns, clients. Neither principals nor the values a
    filter compares with are shown (they may be a user's data)."""
    return [
        {
            "tables": [str(t) for t in v.selection.tables],
            "where": [f"{c.column}.{c.op}" for c in v.selection.conditions],
            "clients": v.clients,
        }
        for v in views
    ]
