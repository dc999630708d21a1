"""What every source offers the App and ``stream()``: open, batches of events, acknowledge, close."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from pgchanges.change import EMPTY, Change, freeze
from pgchanges.db.listener import Notification
from pgchanges.errors import ConfigError
from pgchanges.handling import Handling

Event = Change | Notification


class Source(Protocol):
    """A way of capturing changes. ``batches()`` yields lists of events; durable sources need ``ack``."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def batches(self) -> AsyncIterator[list[Event]]: ...

    async def ack(self, changes: Sequence[Change]) -> None: ...


@runtime_checkable
class DurableSource(Source, Protocol):
    """A source that runs handlers itself, inside the transaction that acknowledges their changes."""

    async def serve(self, handling: Handling) -> None: ...

    def stop(self) -> None: ...


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
