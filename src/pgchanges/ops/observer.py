"""The observer of one served App: what its runtime and server report, kept as plain counters.

:class:`Observer` implements :class:`pgchanges.runtime.RuntimeObserver` and
:class:`pgchanges.serving.ServerObserver`. Its hooks are called per run of changes (a batch, or a notify
lane's batch) and per failure, never per change, and they only add to dicts: the Prometheus objects are made
when ``/metrics`` is scraped (:mod:`pgchanges.ops.metrics`). Everything runs in the event loop's thread, so
nothing needs a lock.

* changes handled are counted per run, by (schema, table, op), in passes of C code over the run (``_count``);
* handlers are timed per run: the run's time is shared out evenly among its handler calls, found per
  (table, op) of the run, so the histogram's sum and count are exact and its buckets hold each run's mean
  (a notify lane's run is often one change: exact per call). Timing each call cost about a tenth of the logical
  source's no-op rate in bench/metrics_bench.py;
* the lag (commit → handled) is measured once per run, from the run's last change with a commit time.
"""

from __future__ import annotations

import itertools
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from operator import countOf, itemgetter
from typing import NamedTuple, cast

from pgchanges.change import Change
from pgchanges.ops.figures import SourceFigures
from pgchanges.routing import Router

#: Upper bounds (seconds) of the handler histogram's buckets: handlers run from microseconds to minutes.
BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_KEY = itemgetter(2, 3, 1)  # Change is a NamedTuple: (schema, table, op)
_NAMES = tuple((index, itemgetter(index)) for index in (3, 1, 2))  # table, op, schema


def _count(changes: Sequence[Change]) -> Counter[tuple[str | None, str | None, str]]:
    """The run's changes per (schema, table, op), in passes of C code: three that compare each change's names
    with the first's (a table's changes share the name objects, so this is mostly identity checks), and only
    when the run mixes tables or ops, one that makes a key per change."""
    first, count = changes[0], len(changes)
    same = (countOf(map(getter, changes), first[index]) == count for index, getter in _NAMES)
    if all(same):
        return Counter({(first[2], first[3], first[1]): count})
    return Counter(map(_KEY, changes))


class _Probe(NamedTuple):
    """What Router.routes_for reads of a change."""

    schema: str | None
    table: str | None
    op: str


class HandlerTimes:
    """A histogram of one handler's call times: counts per bucket (the last is +Inf) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float, calls: int = 1) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += calls
        self.total += seconds * calls


class Observer:
    """Counters of one App served from ``source_name``; ``figures`` is the source's own (or a fresh one)."""

    def __init__(self, source_name: str, router: Router, figures: SourceFigures | None, *, acknowledges: bool) -> None:
        self.source_name = source_name
        self.figures = figures if figures is not None else SourceFigures()
        self.changes: Counter[tuple[str | None, str | None, str]] = Counter()
        self.times: dict[str, HandlerTimes] = {}
        self.errors: Counter[str] = Counter()
        self.up = False
        self._router = router
        self._acknowledges = acknowledges
        self._running: dict[int, float] = {}
        self._tokens = itertools.count()

    # -- RuntimeObserver ---------------------------------------------------------------------------------

    def run_started(self) -> int:
        token = next(self._tokens)
        self._running[token] = time.monotonic()
        return token

    def run_finished(self, token: int, changes: Sequence[Change]) -> None:
        """Count the run's changes, share its time out among its handler calls, measure the lag."""
        started = self._running.pop(token, None)
        if not changes:
            return
        keys = _count(changes)
        self.changes.update(keys)
        if started is not None:
            self._time(keys, time.monotonic() - started)
        committed = changes[-1].commit_time
        if committed is not None:
            self.figures.measured_lag(time.time() - committed.timestamp())
        if not self._acknowledges:  # notify: handling is all the progress there is
            self.figures.advanced()

    def _time(self, keys: Counter[tuple[str | None, str | None, str]], seconds: float) -> None:
        calls: Counter[str] = Counter()
        routes_for = self._router.routes_for
        for key, count in keys.items():  # per (table, op) of the run, not per change
            for route in routes_for(cast(Change, _Probe(*key))):
                calls[route.name] += count
        total = calls.total()
        if not total:
            return
        mean = seconds / total
        for name, count in calls.items():
            times = self.times.get(name)
            if times is None:
                times = self.times[name] = HandlerTimes()
            times.observe(mean, count)

    def handler_failed(self, handler: str) -> None:
        self.errors[handler] += 1

    # -- ServerObserver ----------------------------------------------------------------------------------

    def serving(self, up: bool) -> None:
        self.up = up
        if up:
            self.figures.advanced()

    def settled(self) -> None:
        self.figures.advanced()

    # -- read by metrics and readiness ---------------------------------------------------------------------

    def longest_run(self) -> float:
        """Seconds the oldest run of changes in progress has been running (0: none is)."""
        if not self._running:
            return 0.0
        return time.monotonic() - min(self._running.values())

    @property
    def runs_in_progress(self) -> int:
        return len(self._running)
