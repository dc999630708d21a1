"""Liveness and readiness: what ``/healthz`` and ``/readyz`` answer, with a short reason.

* **alive** (``/healthz``): the request was answered, so the event loop runs; it also says whether the source
  is being served.
* **ready** (``/readyz``): the source is open, its connections are up, and it is not stalled. Stalled means
  either a batch has been in the handlers for longer than ``stall_after`` seconds (a handler blocks), or
  changes are pending (a batch in hand, a heartbeat written and not read back, an outbox backlog) and the
  position has not advanced for ``stall_after`` seconds. A slot that retains more than ``max_retained_bytes``
  makes it unready too: the disk is filling.

The figures come from memory (the observer, the source's figures, the last database sample), never from a
query made for the request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgchanges.ops.service import Ops


@dataclass(frozen=True)
class Verdict:
    ok: bool
    status: str
    reason: str
    details: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, **self.details}


def alive(ops: Ops) -> Verdict:
    serving = ops.observer is not None and ops.observer.up
    return Verdict(True, "alive", "the event loop answers", {"serving": serving})


def ready(ops: Ops) -> Verdict:
    """Whether the App keeps up: the first failing condition, else "ready" with the figures it looked at."""
    observer, figures, config = ops.observer, ops.figures, ops.config
    details: dict[str, Any] = {}
    if figures is not None:
        details["position_age_seconds"] = round(time.monotonic() - figures.advanced_at, 3)
        lag = ops.lag_seconds()
        details["lag_seconds"] = None if lag is None else round(lag, 3)
    if observer is not None and not observer.up:
        return Verdict(False, "not serving", "the source is not open (starting, reconnecting or stopping)", details)
    down = sorted(name for name, up in ops.connections().items() if not up)
    if down:
        return Verdict(False, "disconnected", f"connection(s) down: {', '.join(down)}", details)
    if observer is not None and observer.longest_run() > config.stall_after:
        reason = (
            f"a batch has been in the handlers for {observer.longest_run():.0f}s (stall_after={config.stall_after:g}s)"
        )
        return Verdict(False, "stalled", reason, details)
    pending = _pending(ops)
    if figures is not None and pending:
        age = time.monotonic() - figures.advanced_at
        if age > config.stall_after:
            reason = f"{pending} and the position has not advanced for {age:.0f}s (stall_after={config.stall_after:g}s)"
            return Verdict(False, "stalled", reason, details)
    retaining = _retaining(ops)
    if retaining:
        return Verdict(False, "retaining", retaining, details)
    return Verdict(True, "ready", "connected and keeping up", details)


def _pending(ops: Ops) -> str:
    """What is waiting to be handled, in words ("": nothing known to be)."""
    observer, figures = ops.observer, ops.figures
    if observer is not None and observer.runs_in_progress:
        return "a batch is in the handlers"
    if figures is not None and figures.heartbeat_outstanding() > 0:
        return "a heartbeat is on its way"
    sample = ops.sampler.latest if ops.sampler is not None else None
    if sample is not None:
        backlog = sum(c.backlog for c in sample.consumers)
        if backlog:
            return f"{backlog} outbox event(s) are pending"
    return ""


def _retaining(ops: Ops) -> str:
    limit = ops.config.max_retained_bytes
    sample = ops.sampler.latest if ops.sampler is not None else None
    if limit is None or sample is None:
        return ""
    own = ops.slot
    for slot in sample.slots:
        if (own is None or slot.name == own) and slot.retained_bytes is not None and slot.retained_bytes > limit:
            return f"slot {slot.name} retains {slot.retained_bytes} bytes of WAL (more than {limit})"
    return ""
