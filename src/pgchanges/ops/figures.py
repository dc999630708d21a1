"""The figures sources and sinks keep for operators: plain attributes, cheap to update, read when scraped.

Nothing here imports more than the standard library, so a source (or a sink) may keep its figures whether or
not the ``ops`` extra (prometheus-client, h11) is installed; :mod:`pgchanges.ops.metrics` turns them into
Prometheus metrics when ``/metrics`` is scraped, and :mod:`pgchanges.ops.health` into readiness.

* :class:`SourceFigures`: one per source: when its position last advanced (or it found itself caught up),
  the last lag it measured, its heartbeats. Sources update it per batch or per event, never per change.
* :func:`sink_metrics`: the counters of one sink (published, failed, in flight), for the forwarding code:
  ``counters = sink_metrics("kafka:orders")`` once, then ``counters.published(n)`` per confirmed window.
* :func:`progress_tasks`: the long tasks under way (snapshot, replay, install), kept by
  :mod:`pgchanges.ops.progress`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(eq=False)
class SourceFigures:
    """What a source knows about its own progress (monotonic times)."""

    advanced_at: float = field(default_factory=time.monotonic)
    lag_seconds: float | None = None  # commit (or heartbeat) → handled, as last measured
    lag_measured_at: float | None = None
    heartbeats_sent: int = 0
    heartbeats_seen: int = 0
    heartbeat_sent_at: float | None = None  # of the last heartbeat written and not seen yet
    position: str | None = None  # where the source is (an LSN, an event id), as text

    def advanced(self, position: str | None = None) -> None:
        """The position moved, or the source found nothing pending (it is caught up)."""
        self.advanced_at = time.monotonic()
        if position is not None:
            self.position = position

    def measured_lag(self, seconds: float) -> None:
        self.lag_seconds = max(0.0, seconds)
        self.lag_measured_at = time.monotonic()

    def heartbeat_sent(self) -> None:
        self.heartbeats_sent += 1
        if self.heartbeat_sent_at is None:
            self.heartbeat_sent_at = time.monotonic()

    def heartbeat_seen(self, lag_seconds: float) -> None:
        """One of our heartbeats came back through the stream ``lag_seconds`` after it was written."""
        self.heartbeats_seen += 1
        self.heartbeat_sent_at = None
        self.measured_lag(lag_seconds)

    def heartbeat_outstanding(self) -> float:
        """Seconds since the oldest heartbeat that has not come back was written (0: none outstanding)."""
        sent = self.heartbeat_sent_at
        return 0.0 if sent is None else time.monotonic() - sent


class SinkCounters:
    """Published, failed and in-flight counts of one sink; thread-safe (sinks may publish from threads)."""

    __slots__ = ("_lock", "failed_total", "in_flight", "name", "published_total")

    def __init__(self, name: str) -> None:
        self.name = name
        self.published_total = 0
        self.failed_total = 0
        self.in_flight = 0
        self._lock = threading.Lock()

    def published(self, count: int = 1) -> None:
        """``count`` changes were confirmed by the broker."""
        with self._lock:
            self.published_total += count

    def failed(self, count: int = 1) -> None:
        """``count`` changes could not be published (they will be retried or given up by the source)."""
        with self._lock:
            self.failed_total += count

    def sending(self, count: int) -> None:
        """``count`` more changes are in flight (negative: that many fewer)."""
        with self._lock:
            self.in_flight += count

    def set_in_flight(self, count: int) -> None:
        with self._lock:
            self.in_flight = count


_SINKS: dict[str, SinkCounters] = {}
_SINKS_LOCK = threading.Lock()


def sink_metrics(name: str) -> SinkCounters:
    """The counters of the sink ``name`` (created on first use; the same object for the same name).

    ``name`` becomes the ``sink`` label: keep it short and free of secrets (a broker's URL may hold a
    password: name the sink, not its address)."""
    with _SINKS_LOCK:
        found = _SINKS.get(name)
        if found is None:
            found = _SINKS[name] = SinkCounters(name)
        return found


def all_sinks() -> list[SinkCounters]:
    with _SINKS_LOCK:
        return list(_SINKS.values())


@dataclass(eq=False)
class TaskProgress:
    """One long task under way: ``done`` of ``total`` (an estimate; None when unknown) ``unit``s."""

    task: str
    unit: str
    total: float | None
    done: float = 0.0
    started_at: float = field(default_factory=time.monotonic)
    finished: bool = False


_TASKS: dict[str, TaskProgress] = {}


def progress_tasks() -> list[TaskProgress]:
    """The long tasks of this process (finished ones stay, at their final count, until replaced)."""
    return list(_TASKS.values())


def register_task(progress: TaskProgress) -> None:
    _TASKS[progress.task] = progress


def watermark_lag(watermark: str | None) -> float | None:
    """Seconds from a polling watermark (a timestamp as PostgreSQL prints it) to now; None when it is not one
    (a numeric column) or there is none yet. A watermark without a time zone is taken as UTC."""
    if not watermark:
        return None
    try:
        at = datetime.fromisoformat(watermark.strip())
    except ValueError:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - at).total_seconds())
