"""The chaos history checker: what was written (the ledger) against what was delivered, row version by version.

Pure: no I/O, so it is tested on hand-made histories. The rules, per source:

- **durable** sources (outbox, logical, forwarding): every row version in the ledger was delivered (``lost``
  counts those that were not); nothing was delivered that the ledger does not hold (``phantom``);
- **polling** cannot see a version that a later one replaced before a poll: a version is lost only when
  neither it nor any later version of its row was delivered (the others are ``superseded``, not lost);
- **notify** is at-most-once: a version may be lost only inside a *loss window*, from a fault's start to the
  gap the consumer delivered after it (or to a new consumer process, which cannot know what it missed);
  ``uncovered`` counts losses outside every window;
- **repeats** (a version delivered again) must each follow a fault that ended after the first delivery
  (``unexplained`` counts those that did not); ``worst_repeat_burst`` is the most repeats one fault caused,
  and ``excess_bursts`` counts the faults that repeated more than ``repeat_bound`` (what the source can have
  in flight: more than that is not "the in-flight batch");
- **order**: per row, each newly delivered version is higher than every version delivered before it
  (``out_of_order``; repeats of old versions after a fault do not count: they are repeats).
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Delivery:
    id: int
    ver: int
    t: float  # epoch seconds when the consumer's handler saw it
    process: int = 0  # which consumer process (0: the first; each respawn is the next)


@dataclass(frozen=True)
class Written:
    id: int
    ver: int
    op: str
    t: float  # epoch seconds of the write (clock_timestamp() in the writer's transaction)


@dataclass
class Verdict:
    source: str
    written: int = 0
    delivered: int = 0  # distinct row versions delivered
    deliveries: int = 0  # lines, repeats included
    lost: int = 0
    superseded: int = 0  # polling only
    phantom: int = 0
    repeated: int = 0
    unexplained: int = 0
    worst_repeat_burst: int = 0
    excess_bursts: int = 0
    out_of_order: int = 0
    gaps: int = 0
    uncovered: int = 0  # notify only
    lost_sample: list[tuple[int, int]] = field(default_factory=list)
    phantom_sample: list[tuple[int, int]] = field(default_factory=list)
    #: unexplained repeats: (id, ver, first delivery's time and process, the repeat's time and process)
    unexplained_sample: list[tuple[int, int, float, int, float, int]] = field(default_factory=list)
    delivered_list: Sequence[Delivery] = field(default_factory=list, repr=False)  # what was judged; not reported

    @property
    def ok(self) -> bool:
        if self.phantom or self.out_of_order or self.unexplained or self.excess_bursts:
            return False
        return self.uncovered == 0 if self.source == "notify" else self.lost == 0

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "delivered_list"}
        samples = {"lost_sample": [list(k) for k in self.lost_sample]}
        samples["phantom_sample"] = [list(k) for k in self.phantom_sample]
        samples["unexplained_sample"] = [list(k) for k in self.unexplained_sample]
        return {**out, **samples, "ok": self.ok}


def check(
    source: str,
    written: Sequence[Written],
    delivered: Sequence[Delivery],
    fault_times: Sequence[tuple[float, float]] = (),
    gap_times: Sequence[float] = (),
    restarts: Sequence[float] = (),
    repeat_bound: int | None = None,
) -> Verdict:
    """The verdict on one run. ``fault_times``: (start, end) of every fault; ``gap_times``: when the consumer
    delivered a gap; ``restarts``: when a new consumer process started (notify: the end of a loss window)."""
    verdict = Verdict(source, written=len(written), deliveries=len(delivered), gaps=len(gap_times))
    ledger = {(w.id, w.ver): w for w in written}
    seen = {(d.id, d.ver) for d in delivered}
    verdict.delivered = len(seen & ledger.keys())
    phantoms = sorted(seen - ledger.keys())
    verdict.phantom = len(phantoms)
    verdict.phantom_sample = phantoms[:10]
    missing = sorted(ledger.keys() - seen)
    if source == "polling":
        newest = defaultdict(int)
        for d in delivered:
            newest[d.id] = max(newest[d.id], d.ver)
        superseded = [key for key in missing if newest.get(key[0], 0) > key[1]]
        verdict.superseded = len(superseded)
        missing = sorted(set(missing) - set(superseded))
    if source == "notify":
        windows = _loss_windows(fault_times, sorted([*gap_times, *restarts]))
        uncovered = [key for key in missing if not _inside(ledger[key].t, windows)]
        verdict.uncovered = len(uncovered)
        verdict.lost_sample = uncovered[:10]
    else:
        verdict.lost_sample = missing[:10]
    verdict.lost = len(missing)
    _repeats(verdict, delivered, sorted(fault_times), repeat_bound)
    return verdict


def _repeats(
    verdict: Verdict, delivered: Sequence[Delivery], faults: list[tuple[float, float]], bound: int | None
) -> None:
    ends = [end + SLACK for _, end in faults]  # a consumer may hand on what it had read for a moment after
    first: dict[tuple[int, int], Delivery] = {}
    highest: dict[int, int] = {}
    bursts: Counter[int] = Counter()
    for d in delivered:
        key = (d.id, d.ver)
        if key in first:
            verdict.repeated += 1
            # the first fault that ended after the first delivery; it must have begun before this repeat
            earlier = first[key]
            index = bisect.bisect_left(ends, earlier.t)
            if index >= len(faults) or faults[index][0] > d.t:
                verdict.unexplained += 1
                if len(verdict.unexplained_sample) < 10:
                    verdict.unexplained_sample.append((d.id, d.ver, earlier.t, earlier.process, d.t, d.process))
            else:
                bursts[index] += 1
            continue
        first[key] = d
        if d.ver <= highest.get(d.id, 0):
            verdict.out_of_order += 1
        highest[d.id] = max(highest.get(d.id, 0), d.ver)
    verdict.worst_repeat_burst = max(bursts.values(), default=0)
    if bound is not None:
        verdict.excess_bursts = sum(1 for count in bursts.values() if count > bound)


#: A write may carry a timestamp a little before the fault that lost it (its transaction committed later).
SLACK = 2.0


def _loss_windows(faults: Sequence[tuple[float, float]], closers: Sequence[float]) -> list[tuple[float, float]]:
    """From each fault's start to the first gap or new process after it began (or forever, if none): the
    consumer may reconnect before the injector knows that the fault is over (a restart)."""
    windows = []
    for start, _ in faults:
        index = bisect.bisect_left(closers, start)
        close = closers[index] if index < len(closers) else float("inf")
        windows.append((start - SLACK, close + SLACK))
    return windows


def _inside(t: float, windows: Sequence[tuple[float, float]]) -> bool:
    return any(low <= t <= high for low, high in windows)
