"""The options of each source, typed and checked when the App (or ``stream()``) is made, not when serving starts.

``App(dsn, source="outbox", consumer="billing", lanes=4)`` turns the keyword options into an
:class:`OutboxOptions`; a misspelt or unknown option is a :class:`~pgchanges.errors.ConfigError` at once,
listing the valid ones. Each source takes its options object, so a default is written in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pgchanges.errors import ConfigError
from pgchanges.retry import RetryPolicy
from pgchanges.sources.base import Backoff

T = TypeVar("T")
SOURCES = ("notify", "outbox", "logical", "polling")
SPILL_RETENTION_SECONDS = 3600.0
RETAINED_WARNING_BYTES = 1 << 30
HEARTBEAT_SECONDS = 10.0
DEFAULT_BACKOFF = Backoff()  # immutable, shared
DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class NotifyOptions:
    """``spill_retention``: seconds a payload too large for NOTIFY stays in ``pgchanges.spill``."""

    backoff: Backoff = DEFAULT_BACKOFF
    spill_retention: float = SPILL_RETENTION_SECONDS


@dataclass(frozen=True)
class OutboxOptions:
    """See the README's outbox section for what each option does."""

    consumer: str = "default"
    batch_size: int = 200
    lanes: int = 8
    retry: RetryPolicy = DEFAULT_RETRY
    ack_wait: float = 30.0
    concurrency: int = 2
    retention: float = 86_400.0
    poll_interval: float = 1.0
    backoff: Backoff = DEFAULT_BACKOFF

    def __post_init__(self) -> None:
        if not 1 <= self.lanes <= 1024:
            raise ConfigError(f"lanes must be between 1 and 1024, not {self.lanes}")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, not {self.batch_size}")


@dataclass(frozen=True)
class LogicalOptions:
    """``slot``: the replication slot (None: a temporary one); ``snapshot``: deliver existing rows first;
    ``heartbeat``: seconds between the heartbeat messages written to the WAL (None or 0: none)."""

    slot: str | None = None
    publication: str | None = None
    batch_size: int = 1000
    replica_identity_full: bool = False
    backoff: Backoff = DEFAULT_BACKOFF
    retained_warning_bytes: int = RETAINED_WARNING_BYTES
    snapshot: bool = False
    heartbeat: float | None = HEARTBEAT_SECONDS

    def __post_init__(self) -> None:
        if self.heartbeat is not None and self.heartbeat < 0:
            raise ConfigError(f"heartbeat must be seconds (or None for none), not {self.heartbeat}")


@dataclass(frozen=True)
class PollingOptions:
    """``column``: the watermark column (per table with a mapping); see the README's polling section."""

    column: str | Mapping[str, str] | None = None
    consumer: str = "default"
    interval: float = 1.0
    late_window: float | None = 300.0
    soft_delete: str | None = None
    batch_size: int = 1000
    state_file: str | Path | None = None
    start: Literal["beginning", "now"] = "beginning"
    backoff: Backoff = DEFAULT_BACKOFF

    def __post_init__(self) -> None:
        if self.start not in ("beginning", "now"):
            raise ConfigError(f"start must be 'beginning' or 'now', not {self.start!r}")


SourceOptions = NotifyOptions | OutboxOptions | LogicalOptions | PollingOptions
_KINDS: dict[str, type[SourceOptions]] = {
    "notify": NotifyOptions,
    "outbox": OutboxOptions,
    "logical": LogicalOptions,
    "polling": PollingOptions,
}


def options_for(kind: str, given: Mapping[str, Any]) -> SourceOptions:
    """The options of source ``kind`` from keyword options; a ConfigError names what is wrong and what is valid."""
    cls = _KINDS.get(kind)
    if cls is None:
        raise ConfigError(f"unknown source {kind!r}; available: {', '.join(SOURCES)}")
    return checked_options(cls, given, f"source={kind!r}")


def checked_options(cls: type[T], given: Mapping[str, Any], what: str, *, none_is_default: bool = False) -> T:
    """``cls(**given)`` for an options dataclass; an unknown option is a ConfigError listing the valid ones.
    With ``none_is_default``, an option given as None keeps its default."""
    valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) for {what}: {', '.join(unknown)}; valid options: {', '.join(valid)}")
    return cls(**{k: v for k, v in given.items() if v is not None or not none_is_default})
