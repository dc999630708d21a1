"""The change feed of one App: its capture (a batch route), its retained log, its clients, its ASGI app.

``feed = app.feed("public.orders", tokens={...})`` makes a :class:`Feed`. The App routes the changes of its
tables to :meth:`Feed.capture` as a *batch route* of its runtime, like a forwarder: the batch's changes are
keyed, written to the window on disk when there is one, and made visible in the retained log; only then
does the handler return, and only then does the source settle the batch (confirm the slot, commit the
outbox claim). One capture, one slot or consumer, however many clients.

Clients are served by :meth:`Feed.asgi` (Starlette, :mod:`pgchanges.feed.asgi`), which the App's ``--http``
server mounts, and which an application may mount in its own Starlette or FastAPI app. The App opens the
feed (:meth:`Feed.open`, reading the window back) before it serves and closes it after
(:meth:`Feed.keep_open`, in its task group).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio

from pgchanges.change import Change
from pgchanges.errors import ConfigError
from pgchanges.feed.auth import Allow, Authorize, BearerTokens, Hide, anyone
from pgchanges.feed.fanout import Fanout, views_summary
from pgchanges.feed.log import RetainedLog, Retention
from pgchanges.feed.offsets import BadOffset, parse_token
from pgchanges.feed.window import DiskWindow
from pgchanges.names import TableName, parse_table
from pgchanges.plain_run import Outcome

log = logging.getLogger("pgchanges.feed")


class Expired(Exception):
    """An offset older than what the feed retains, or of another log (answered 409)."""

    def __init__(self, message: str, oldest: str, current: str) -> None:
        super().__init__(message)
        self.oldest = oldest
        self.current = current


class Feed:
    """An HTTP/SSE change feed of ``tables``; see the module docstring and docs/feed.md.

    Who may read: ``tokens`` (bearer token → principal), or ``authorize(request) -> principal | None``, or
    ``open=True`` (anyone; for a trusted network). ``allow(principal, change)`` and ``hide(principal, table)``
    decide what each principal gets (:mod:`pgchanges.feed.auth`). ``retention`` bounds the log; ``window`` is
    a directory that keeps it across restarts.
    """

    def __init__(
        self,
        tables: str | TableName | Iterable[str | TableName],
        *,
        tokens: Mapping[str, Any] | None = None,
        authorize: Authorize | None = None,
        open: bool = False,
        allow: Allow | None = None,
        hide: Hide | None = None,
        retention: Retention | None = None,
        window: str | os.PathLike[str] | None = None,
        fsync: bool = True,
        keep_alive: float = 15.0,
        max_clients: int = 20_000,
    ) -> None:
        chosen = [tables] if isinstance(tables, str | TableName) else list(tables)
        if not chosen:
            raise ConfigError("a feed needs at least one table")
        self.tables = [t if isinstance(t, TableName) else parse_table(t) for t in chosen]
        given = [name for name, value in (("tokens", tokens), ("authorize", authorize), ("open", open)) if value]
        if len(given) != 1:
            raise ConfigError(
                "say who may read the feed with one of tokens= (bearer tokens), authorize= or open=True"
                + (f", not {' and '.join(given)}" if given else "")
            )
        self.authorize: Authorize = anyone if open else authorize or BearerTokens(tokens or {})
        self.allow = allow
        self.hide = hide
        self.retention = retention or Retention()
        self.window = None if window is None else DiskWindow(window, fsync=fsync)
        self.keep_alive = keep_alive
        self.max_clients = max_clients
        self.log = RetainedLog("sequence", self.retention)
        self.fanout = Fanout(self.log, allow=allow, hide=hide, keep_alive=keep_alive)
        self._lock: anyio.Lock | None = None
        self._asgi: Any = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def open(self, source_kind: str) -> None:
        """Before serving: offsets follow the source (``logical``: its LSNs), and the window is read back."""
        scheme = "logical" if source_kind == "logical" else "sequence"
        if self.window is None:
            self.log = RetainedLog(scheme, self.retention)
        else:
            window = self.window
            entries = await anyio.to_thread.run_sync(window.load, scheme)
            self.log = RetainedLog(scheme, self.retention, epoch=window.epoch, floor=window.floor, entries=entries)
            log.info("feed: %d change(s) read back from %s", self.log.size, window.path)
        self.fanout.log = self.log
        self.fanout.views.clear()  # their caches are by position in the log they were made for
        self.fanout.closing = False

    async def keep_open(self) -> None:
        """Run beside the App: the clients' keep-alive timer; when the App stops, end the clients' streams and
        close the window."""
        try:
            await self.fanout.tick()
        finally:
            self.close()

    def close(self) -> None:
        self.fanout.close()
        if self.window is not None:
            self.window.close()

    # -- capture ---------------------------------------------------------------------------------------------

    def handler(self) -> Callable[[list[Change]], Awaitable[list[Outcome]]]:
        """The batch handler the App routes the feed's tables to."""

        async def capture(changes: list[Change]) -> list[Outcome]:
            await self.capture(changes)
            return [None] * len(changes)

        capture.__qualname__ = capture.__name__ = f"feed of {', '.join(map(str, self.tables))}"
        return capture

    async def capture(self, changes: Sequence[Change]) -> None:
        """Take ``changes`` into the retained log (and the window); return once they are there."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:  # the outbox's workers capture side by side: the log takes one batch at a time
            book = self.log
            entries = book.prepare(changes)
            if self.window is not None and entries:
                try:
                    await anyio.to_thread.run_sync(self.window.write, entries)
                except BaseException:
                    book.abandon(entries)
                    raise
            book.commit(entries)
            if self.window is not None and book.floor > self.window.floor:
                await anyio.to_thread.run_sync(self.window.forget, book.floor)

    # -- clients ---------------------------------------------------------------------------------------------

    def resolve(self, offset: str | None) -> int:
        """The log position a client starts after: None or "now" the head, "-1" before the oldest retained,
        else the position of a token (:class:`BadOffset` if malformed, :class:`Expired` if not retained)."""
        book = self.log
        if offset is None or offset in ("", "now"):
            return book.head
        if offset == "-1":
            return book.oldest - 1
        epoch, key = parse_token(offset)
        if not book.covers(epoch, key):
            reason = (
                "is older than what the feed retains"
                if epoch == book.epoch
                else "is from another run of the feed (restarted without a window on disk, or another feed)"
            )
            raise Expired(
                f"offset {offset} {reason}: fetch the current state again and resume from next_offset",
                book.token_at(book.oldest - 1).decode(),
                book.token_at(book.head).decode(),
            )
        return book.seq_after(key)

    def asgi(self) -> Any:
        """The feed as an ASGI application (Starlette): ``GET /v1/changes``, to mount where you like."""
        if self._asgi is None:
            from pgchanges.feed.asgi import feed_app  # noqa: PLC0415 - starlette only when used

            self._asgi = feed_app(self)
        return self._asgi

    def status(self) -> dict[str, Any]:
        """The feed's figures, for the dashboard."""
        book, figures = self.log, self.fanout.figures
        return {
            "tables": [str(t) for t in self.tables],
            "clients": figures.clients,
            "delivered_total": figures.delivered_total,
            "writes_total": figures.writes_total,
            "dropped": dict(figures.dropped),
            "retained_changes": book.size,
            "retained_bytes": book.size_bytes,
            "captured_total": book.appended_total,
            "forgotten_total": book.forgotten_total,
            "oldest_offset": book.token_at(book.oldest - 1).decode(),
            "current_offset": book.token_at(book.head).decode(),
            "window": None if self.window is None else str(self.window.path),
            "views": views_summary(list(self.fanout.views.values())),
        }


__all__ = ["BadOffset", "Expired", "Feed", "Retention"]
