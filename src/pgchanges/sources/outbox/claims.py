"""What an outbox worker holds and what it writes back: a claimed lane, its events, and their settlement.

A :class:`Claim` is a locked lane: its runnable parked events, then its oldest batch. Once the handlers ran,
:func:`settle` turns their outcomes into a :class:`Settlement` — which events are finished, which are parked
as they are (behind an earlier event of their row), which are parked for a retry, which become dead letters —
that the worker writes back in the claim's transaction. The retry decision lives here and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from pgchanges.change import Change
from pgchanges.plain_run import SKIPPED, Outcome
from pgchanges.retry import RetryPolicy

log = logging.getLogger("pgchanges.sources.outbox")


@dataclass
class Claimed:
    """One event of a claim."""

    event_id: int
    row_key: str | None  # read only when the lane has parked events
    attempts: int
    parked: bool  # it came from the parked events (a retry), not from the batch
    blocked: bool  # an earlier event of its row is parked: it is parked behind it, not handled now
    change: Change


@dataclass
class Claim:
    """A locked lane: its runnable parked events, then its oldest batch (``batch`` is its cut and chunk)."""

    lane: int
    batch: tuple[int, int] | None
    items: list[Claimed]
    cut_ahead: bool = False  # a snapshot is being cut in pieces and about one batch per lane is left

    @property
    def runnable(self) -> list[Claimed]:
        """The events to hand to the handlers, in order (not those parked behind their row)."""
        return [item for item in self.items if not item.blocked]


@dataclass
class Settlement:
    """What to write back when a lane's transaction ends."""

    finished: list[Claimed] = field(default_factory=list)  # handled
    released: list[Claimed] = field(default_factory=list)  # not attempted: parked (behind their row) as they are
    retry: list[tuple[Claimed, float, str]] = field(default_factory=list)
    bury: list[tuple[Claimed, str]] = field(default_factory=list)
    deferred: list[Claimed] = field(default_factory=list)  # stream: delivered, not acknowledged yet
    defer_seconds: float = 0.0


def settle(claim: Claim, outcomes: Sequence[Outcome], retry: RetryPolicy) -> Settlement:
    """The settlement of ``claim`` whose runnable events had ``outcomes`` (the runtime's, in order)."""
    settlement = Settlement(released=[item for item in claim.items if item.blocked])
    for item, outcome in zip(claim.runnable, outcomes, strict=True):
        if outcome is None:
            settlement.finished.append(item)
        elif outcome is SKIPPED:
            settlement.released.append(item)  # behind a failure of its row (or of any row, its row unknown)
        else:
            assert isinstance(outcome, BaseException), outcome
            record_failure(item, outcome, settlement, retry)
    return settlement


def record_failure(item: Claimed, exc: BaseException, settlement: Settlement, retry: RetryPolicy) -> None:
    """Park the failed event for another attempt, or bury it after the last."""
    error = f"{type(exc).__name__}: {exc}"
    attempt = item.attempts + 1
    if attempt >= retry.max_attempts:
        log.error("change %s failed %d times; moved to dead letters: %s", item.change.id, attempt, error)
        settlement.bury.append((item, error))
    else:
        delay = retry.delay(attempt)
        log.warning("change %s failed (attempt %d, retry in %.1fs): %s", item.change.id, attempt, delay, error)
        settlement.retry.append((item, delay, error))
