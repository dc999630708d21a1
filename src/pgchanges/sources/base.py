"""The source contract: what every source offers the App and ``stream()``, and the mechanisms they share.

A source captures changes one way (notify, outbox, logical, polling). The App owns the loop that serves them:
for each of the source's :meth:`Source.feeds` it takes a :class:`Batch`, runs the handlers through the
runtime (:mod:`pgchanges.runtime`), and hands the outcomes back with :meth:`Feed.settle`, which is where the
source acknowledges, retries or gives up. ``stream()`` uses the simpler pair :meth:`Source.batches` and
:meth:`Source.ack`, the caller being the handler.

Shared here, written once: reconnecting with backoff (:func:`reconnect_with_backoff`), the wait that
:meth:`Source.stop` interrupts (:class:`Stopper`), and the gap marker.
"""

from __future__ import annotations

import contextlib
import logging
import random
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
import psycopg

from pgchanges.change import EMPTY, Change, freeze
from pgchanges.db.listener import Notification
from pgchanges.errors import ConfigError, ConnectError
from pgchanges.plain_run import Outcome

Event = Change | Notification

#: What a source can do beyond delivering row changes; the App checks its handlers against these.
TRANSACTION = "transaction"  # handlers declared transaction=True get the transaction that acknowledges
WHOLE_TRANSACTIONS = "whole_transactions"  # @app.on_transaction: commits are seen
CHANNELS = "channels"  # @app.on_notify: plain NOTIFY channels
DDL = "ddl"  # @app.on_ddl
RETRIES = "retries"  # a failed change is retried by the source (the error policy still says what is logged)


@dataclass(eq=False)
class Batch:
    """Events a feed hands the App, in order, with what it needs to handle them.

    ``changes`` are the row changes among ``events`` (gaps, notifications and DDL changes are the App's
    callbacks); ``keys`` gives each change's row, when the source keeps each row's changes in order behind a
    failure; ``transaction`` is what handlers declared with ``transaction=True`` get; ``transactions`` are
    whole transactions whose ``on_transaction`` handlers are due once ``changes`` are handled; ``token`` is the
    feed's own bookkeeping.
    """

    events: Sequence[Event]
    changes: Sequence[Change]
    keys: Sequence[str | None] | None = None
    transaction: Any = None
    transactions: Sequence[Sequence[Change]] = ()
    token: Any = None


class Feed(Protocol):
    """One stream of batches the App serves; a source may have several (the outbox's workers)."""

    def batches(self) -> AsyncGenerator[Batch, None]: ...

    async def settle(self, batch: Batch, outcomes: Sequence[Outcome]) -> None:
        """``outcomes[i]`` is what became of ``batch.changes[i]`` (see :meth:`pgchanges.runtime.Runtime.run_changes`);
        the transactions' handlers have returned."""


class Source(Protocol):
    """A way of capturing changes."""

    name: str
    #: Whether the source keeps its place by acknowledgements (notify does not: it is at-most-once, and its
    #: changes are handled in per-table lanes while it reads on).
    acknowledges: bool
    features: frozenset[str]

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def stop(self) -> None:
        """Finish the batch in hand, then end :meth:`batches` and the feeds' batches."""

    async def feeds(self) -> Sequence[Feed]:
        """The feeds the App serves, opened (called after :meth:`open`)."""

    def batches(self) -> AsyncGenerator[list[Event], None]: ...

    async def ack(self, changes: Sequence[Change]) -> None: ...


class EventFeed:
    """The feed of a source whose App path is its stream path: each batch of events, then ``ack`` of its
    changes (the error policy having decided about failures)."""

    def __init__(self, source: Source) -> None:
        self._source = source

    async def batches(self) -> AsyncGenerator[Batch, None]:
        async with contextlib.aclosing(self._source.batches()) as reads:
            async for events in reads:
                yield Batch(events, row_changes(events))

    async def settle(self, batch: Batch, outcomes: Sequence[Outcome]) -> None:
        await self._source.ack([e for e in batch.events if isinstance(e, Change)])


def row_changes(events: Sequence[Event]) -> list[Change]:
    """The changes among ``events`` that go to row handlers (not gaps, DDL changes or plain notifications)."""
    return [e for e in events if isinstance(e, Change) and e.op not in CALLBACK_OPS]


#: Changes that go to the App's callbacks (on_gap, on_ddl), not to row handlers.
CALLBACK_OPS = frozenset(("gap", "ddl"))


def require_tables(source: str, tables: Sequence[object], channels: Sequence[str]) -> None:
    """The check every source but notify makes: at least one table, and no plain NOTIFY channels."""
    if channels:
        raise ConfigError("plain NOTIFY channels (on_notify) need source='notify'")
    if not tables:
        raise ConfigError(f"the {source} source needs at least one table")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, for reconnecting."""

    initial: float = 0.05
    maximum: float = 5.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.maximum, self.initial * self.factor**attempt)
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


#: The failures that mean "the connection is gone, open it again" (ConnectionLost and ReplicationLost are
#: ConnectErrors).
CONNECTION_ERRORS: tuple[type[Exception], ...] = (ConnectError, psycopg.OperationalError)


async def reconnect_with_backoff(
    connect: Callable[[], Awaitable[None]],
    *,
    backoff: Backoff,
    what: str,
    logger: logging.Logger,
    stopper: Stopper | None = None,
    errors: tuple[type[Exception], ...] = CONNECTION_ERRORS,
) -> bool:
    """Call ``connect`` until it succeeds, waiting with backoff and jitter between attempts; False when
    ``stopper`` was stopped first. Each failed attempt is logged (password-free: errors are redacted)."""
    attempt = 0
    while stopper is None or not stopper.stopping:
        try:
            await connect()
        except errors as exc:
            delay = backoff.delay(attempt)
            attempt += 1
            logger.warning("reconnecting %s failed (%s); retrying in %.2fs", what, one_line(exc), delay)
            if stopper is None:
                await anyio.sleep(delay)
            else:
                await stopper.sleep(delay)
            continue
        if attempt:
            logger.warning("%s reconnected after %d failed attempt(s)", what, attempt)
        return True
    return False


@dataclass(eq=False)
class Stopper:
    """A source's "stop now" flag, and the waits it interrupts (sleeps between polls, waiting for data)."""

    stopping: bool = False
    _scopes: set[anyio.CancelScope] = field(default_factory=set)

    def stop(self) -> None:
        self.stopping = True
        for scope in self._scopes:
            scope.cancel()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when stopped meanwhile."""
        await self.wait(anyio.sleep(seconds))

    async def wait(self, awaitable: Awaitable[Any]) -> Any:
        """Await ``awaitable`` unless stopped first (then None)."""
        if self.stopping:
            close = getattr(awaitable, "close", None)
            if close is not None:
                close()  # a coroutine that will never be awaited
            return None
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                return await awaitable
            finally:
                self._scopes.discard(scope)
        return None


def gap_marker(source: str, reason: str, schema: str | None = None, table: str | None = None) -> Change:
    """A change that says: changes may have been missed here (the listener was away)."""
    return Change(
        id=f"gap:{uuid.uuid4()}",
        op="gap",
        schema=schema,
        table=table,
        new=None,
        old=None,
        changed=EMPTY,
        xid=None,
        commit_time=None,
        position=None,
        source=source,
        extra=freeze({"reason": reason, "detected_at": datetime.now(UTC)}),
    )


def one_line(exc: BaseException) -> str:
    """An error as one line (the text of some psycopg errors spans several), for log lines."""
    return " ".join(str(exc).split()) or type(exc).__name__
