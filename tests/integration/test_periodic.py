"""Periodic tasks: once per period across processes, and the policies for missed periods.

The in-process tests run their App's scheduler on a fixed clock (:func:`frozen_clock`), so what runs does not
depend on the time of day the suite runs at: a test on the real clock that starts at 06:59:59 sees 07:00 come.
"""

import functools
import itertools
import textwrap
from collections import Counter
from datetime import UTC, datetime, timedelta

import anyio
import pytest

import pgchanges
from pgchanges.periodic import Scheduler
from tests.cli_process import Running
from tests.conftest import wait_for, wait_until

#: The instant the in-process schedulers see: a tenth of a second before the top of an hour (the moment a run
#: on the wall clock went wrong), in the night Berlin moves its clocks forward.
NOW = datetime(2024, 3, 31, 0, 59, 59, 900_000, tzinfo=UTC)
TOP_OF_THE_HOUR = NOW.replace(minute=0, second=0, microsecond=0)


@pytest.fixture
def frozen_clock(monkeypatch):
    """Every Scheduler made in this test (the App makes one when it serves) reads :data:`NOW` as the time."""
    make = Scheduler.__init__
    monkeypatch.setattr(Scheduler, "__init__", functools.partialmethod(make, clock=lambda: NOW))
    return NOW


WORKER = """
import os
import pgchanges
app = pgchanges.App({dsn!r})

@app.every("1s", name="tick")
def tick(scheduled_at):
    with open({path!r}, "a") as f:
        f.write(f"{{os.getpid()}} {{scheduled_at.isoformat()}}\\n")
"""


def test_three_workers_run_each_period_exactly_once(dsn, tmp_path):
    out = tmp_path / "ticks.txt"
    (tmp_path / "ticker.py").write_text(textwrap.dedent(WORKER.format(dsn=dsn, path=str(out))))
    workers = [Running("run", "ticker:app", "-v", cwd=tmp_path) for _ in range(3)]
    for worker in workers:
        worker.wait_stderr("running 1 periodic task")
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 5, "five ticks", timeout=30)
    for worker in workers:
        worker.proc.terminate()
        assert worker.finish() == 0
    runs = [line.split() for line in out.read_text().splitlines()]
    times = [datetime.fromisoformat(t) for _, t in runs]
    assert len(runs) >= 5
    assert not [t for t, n in Counter(times).items() if n > 1], "a period ran twice"
    ordered = sorted(times)
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(ordered)), ordered


def registered(db):
    if db.execute("SELECT to_regclass('pgchanges.periodic')").fetchone()[0] is None:
        return 0
    return db.execute("SELECT count(*) FROM pgchanges.periodic").fetchone()[0]


async def run_with_missed(dsn, db, missed, condition):
    app = pgchanges.App(dsn)
    seen = []
    app.every("1h", name=f"hourly_{missed}", missed=missed)(seen.append)
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        await wait_until(lambda: registered(db) == 1, "the task to register")
        # every worker was down for the last three hours: the run of TOP_OF_THE_HOUR - 3h is the first missed
        db.execute("UPDATE pgchanges.periodic SET next_run_at = %s", (TOP_OF_THE_HOUR - timedelta(hours=3),))
        await wait_until(lambda: condition(seen, db), f"the {missed!r} policy to act")
        app.stop()
    return seen, db.execute("SELECT next_run_at FROM pgchanges.periodic").fetchone()[0]


@pytest.mark.anyio
async def test_missed_once_runs_one_catch_up(dsn, db, frozen_clock):
    seen, following = await run_with_missed(dsn, db, "once", lambda seen, db: len(seen) >= 1)
    assert seen == [TOP_OF_THE_HOUR - timedelta(hours=3)] and following == TOP_OF_THE_HOUR + timedelta(hours=1)


@pytest.mark.anyio
async def test_missed_all_runs_every_missed_period(dsn, db, frozen_clock):
    seen, following = await run_with_missed(dsn, db, "all", lambda seen, db: len(seen) >= 4)
    assert seen == [TOP_OF_THE_HOUR - timedelta(hours=h) for h in (3, 2, 1, 0)]
    assert following == TOP_OF_THE_HOUR + timedelta(hours=1)


@pytest.mark.anyio
async def test_missed_skip_waits_for_the_next_period(dsn, db, frozen_clock):
    def moved(seen, db):
        return db.execute("SELECT next_run_at > %s FROM pgchanges.periodic", (NOW,)).fetchone()[0]

    seen, following = await run_with_missed(dsn, db, "skip", moved)
    assert seen == [] and following == TOP_OF_THE_HOUR + timedelta(hours=1)


@pytest.mark.anyio
async def test_cron_task_runs_in_process(dsn, db, frozen_clock):
    app = pgchanges.App(dsn)
    seen = []
    app.cron("* * * * *", tz="Europe/Berlin", name="minutely")(lambda: seen.append(1))
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        await wait_until(lambda: registered(db) == 1, "registration")
        [first] = db.execute("SELECT next_run_at FROM pgchanges.periodic").fetchone()
        assert first == TOP_OF_THE_HOUR + timedelta(hours=1), "registered for the minute after NOW"
        db.execute("UPDATE pgchanges.periodic SET next_run_at = %s", (NOW - timedelta(seconds=1),))
        await wait_until(lambda: seen == [1], "the cron task")
        app.stop()
    spec, error, following = db.execute("SELECT spec, last_error, next_run_at FROM pgchanges.periodic").fetchone()
    assert spec == "cron * * * * * Europe/Berlin" and error is None
    assert following == TOP_OF_THE_HOUR + timedelta(hours=1)


def test_unknown_time_zone_and_policy_are_clear_errors(dsn):
    app = pgchanges.App(dsn)
    with pytest.raises(pgchanges.ConfigError, match="time zone"):
        app.cron("* * * * *", tz="Mars/Olympus")
    with pytest.raises(pgchanges.ConfigError, match="missed"):
        app.every("1s", missed="sometimes")
