"""Progress of long work (the initial snapshot, ``replay``, ``install`` of many tables): a bar on a terminal,
the same figures in the metrics.

:class:`Progress` keeps a :class:`~pgchanges.ops.figures.TaskProgress` that ``/metrics`` shows as
``pgchanges_progress_done`` and ``pgchanges_progress_total`` (labels ``task`` and ``unit``), and draws a
tqdm bar (done / total, rate, ETA) when its stream (stderr) is a terminal and tqdm (the ops extra) is
installed. On a non-terminal it draws nothing: logs and pipes stay clean.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Any

import psycopg

from pgchanges.capture.queries import fetch_all
from pgchanges.ops.figures import TaskProgress, register_task


class Progress:
    """``with Progress("snapshot public.orders", total=estimate) as progress: progress.advance(len(page))``."""

    def __init__(
        self, task: str, *, total: float | None = None, unit: str = "rows", stream: IO[str] | None = None
    ) -> None:
        self.tally = TaskProgress(task, unit, total)
        register_task(self.tally)
        self._bar: Any = None
        out = stream if stream is not None else sys.stderr
        if _is_terminal(out):
            try:
                from tqdm import tqdm  # noqa: PLC0415 - the ops extra, only on a terminal
            except ImportError:
                return
            self._bar = tqdm(total=total, unit=f" {unit}", desc=task, file=out, dynamic_ncols=True, unit_scale=True)

    def advance(self, count: float) -> None:
        self.tally.done += count
        if self._bar is not None:
            if self.tally.total is not None and self.tally.done > self.tally.total:  # the estimate was low
                self.set_total(self.tally.done)
            self._bar.update(count)

    def set_total(self, total: float | None) -> None:
        self.tally.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def close(self) -> None:
        self.tally.finished = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def table_estimates(conn: psycopg.Connection[Any], oids: Sequence[int]) -> dict[int, int | None]:
    """The planner's row estimate of each table (None where it has none yet: never vacuumed or analysed)."""
    rows = fetch_all(conn, "ops_table_estimates", {"oids": list(oids)})
    return {int(r.table_oid): (int(r.estimate) if r.estimate is not None and r.estimate >= 0 else None) for r in rows}
