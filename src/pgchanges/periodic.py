"""Periodic tasks: ``@app.every("5m")`` and ``@app.cron("0 * * * *", tz="Europe/Berlin")``, run once per period
across any number of worker processes.

Coordination is a row per task in ``pgchanges.periodic``: every worker looks at the due tasks, and the one that
locks a task's row (``FOR UPDATE SKIP LOCKED``) while it is due moves ``next_run_at`` forward in the same
transaction and runs it. ``every`` intervals are aligned to multiples of the interval since the Unix epoch,
so all workers agree on the schedule. Missed periods (every worker was down) follow the task's policy:
``"once"`` runs one catch-up run, ``"all"`` runs each missed period in turn, ``"skip"`` waits for the next.

"Now" is the database's ``now()``, the one clock every worker shares, unless the scheduler is given a ``clock``
(tests give it a fixed instant, so that what runs does not depend on the time of day they run at).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal
from zoneinfo import ZoneInfo

import anyio
import psycopg
from cronsim import CronSim, CronSimError

from pgchanges.capture import migrations
from pgchanges.capture.queries import fetch_one, run
from pgchanges.db.connect import close_async, connect_async
from pgchanges.errors import ConfigError
from pgchanges.routing import Router
from pgchanges.runtime import Runtime

log = logging.getLogger("pgchanges.periodic")

MissedPolicy = Literal["once", "all", "skip"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_SLEEP_SECONDS = 1.0  # an idle worker looks once a second (one cheap query), so edits apply soon
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
Clock = Callable[[], datetime]


def parse_interval(value: str | float | timedelta) -> timedelta:
    """``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``, a number of seconds, or a timedelta."""
    if isinstance(value, timedelta):
        interval = value
    elif isinstance(value, int | float):
        interval = timedelta(seconds=value)
    else:
        match = _INTERVAL.match(value)
        if not match:
            raise ConfigError(f"interval {value!r}: use a number and a unit, like '30s', '5m', '2h' or '1d'")
        interval = timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    if interval <= timedelta(0):
        raise ConfigError("an interval must be positive")
    return interval


@dataclass(frozen=True)
class Schedule:
    """When a task is due: a fixed interval, or a cron expression in a time zone."""

    interval: timedelta | None = None
    cron: str | None = None
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))

    def __post_init__(self) -> None:
        if self.cron is not None:
            try:
                CronSim(self.cron, EPOCH.astimezone(self.tz))
            except CronSimError as exc:
                raise ConfigError(f"cron expression {self.cron!r}: {exc}") from None

    @property
    def spec(self) -> str:
        if self.interval is not None:
            return f"every {self.interval.total_seconds():g}s"
        return f"cron {self.cron} {self.tz.key}"

    def next_after(self, moment: datetime) -> datetime:
        """The first scheduled time strictly after ``moment``."""
        if self.interval is not None:
            step = self.interval.total_seconds()
            elapsed = (moment - EPOCH).total_seconds()
            return EPOCH + timedelta(seconds=(elapsed // step + 1) * step)
        assert self.cron is not None
        local = moment.astimezone(self.tz)
        return next(CronSim(self.cron, local)).astimezone(UTC)


@dataclass
class PeriodicTask:
    name: str
    schedule: Schedule
    func: Callable[..., Any]
    missed: MissedPolicy = "once"

    @property
    def wants_time(self) -> bool:
        try:
            return len(inspect.signature(self.func).parameters) >= 1
        except (TypeError, ValueError):
            return False


class Scheduler:
    """Runs due periodic tasks; safe to run in any number of processes at once.

    ``clock`` returns the current time (timezone-aware); by default it is the database's ``now()``.
    """

    def __init__(
        self, conninfo: str, tasks: list[PeriodicTask], *, clock: Clock | None = None, runtime: Runtime | None = None
    ) -> None:
        self._conninfo = conninfo
        self._tasks = {task.name: task for task in tasks}
        self._clock = clock
        self._runtime = runtime or Runtime(Router(), "log")  # a failed run is recorded; the next period runs
        self._conn: psycopg.Connection[Any] | None = None

    def _now(self) -> datetime | None:
        """The ``now`` parameter of the queries, which read the time as ``coalesce(%(now)s::timestamptz, now())``:
        the clock's time, or None for the database's."""
        return None if self._clock is None else self._clock()

    async def run(self) -> None:
        """Until cancelled."""
        self._conn = await connect_async(self._conninfo, autocommit=True)
        try:
            await anyio.to_thread.run_sync(self._register)
            while True:
                for name in list(self._tasks):
                    while (scheduled := await anyio.to_thread.run_sync(self._claim, name)) is not None:
                        await self._execute(self._tasks[name], scheduled)
                await anyio.sleep(await anyio.to_thread.run_sync(self._seconds_to_next))
        finally:
            with anyio.CancelScope(shield=True):
                await close_async(self._conn)

    def _register(self) -> None:
        conn = self._conn
        assert conn is not None
        migrations.migrate(conn)
        now: datetime = fetch_one(conn, "periodic_now", {"now": self._now()}).now
        for task in self._tasks.values():
            first = task.schedule.next_after(now)
            run(conn, "periodic_register", {"name": task.name, "spec": task.schedule.spec, "first": first})

    def _claim(self, name: str) -> datetime | None:
        """If ``name`` is due and no one else holds it: move it forward and return the time it was due for."""
        conn = self._conn
        assert conn is not None
        task = self._tasks[name]
        with conn.transaction():
            row = fetch_one(conn, "periodic_claim", {"name": name, "now": self._now()})
            if row is None:
                return None
            due: datetime = row.next_run_at
            now: datetime = row.now
            following = task.schedule.next_after(due if task.missed == "all" else now)
            if task.missed == "skip" and task.schedule.next_after(due) <= now:
                run(conn, "periodic_skip", {"name": name, "following": following})
                log.info("skipped missed runs of %s; next at %s", name, following.isoformat())
                return None
            run(conn, "periodic_started", {"name": name, "following": following, "now": now})
            return due

    async def _execute(self, task: PeriodicTask, scheduled: datetime) -> None:
        """Run the task through the runtime (a failure is logged and recorded; the next period runs again)."""
        args = (scheduled,) if task.wants_time else ()
        what = f"periodic task {task.name} (due {scheduled.isoformat()})"
        failure = await self._runtime.call(task.func, *args, subject=what, name=task.name)
        error = None if failure is None else f"{type(failure).__name__}: {failure}"
        assert self._conn is not None
        params = {"error": error, "name": task.name, "now": self._now()}
        await anyio.to_thread.run_sync(partial(run, self._conn, "periodic_finished", params))

    def _seconds_to_next(self) -> float:
        assert self._conn is not None
        row = fetch_one(self._conn, "periodic_wait", {"names": list(self._tasks), "now": self._now()})
        wait = float(row.seconds) if row and row.seconds is not None else MAX_SLEEP_SECONDS
        return min(MAX_SLEEP_SECONDS, max(0.01, wait))
