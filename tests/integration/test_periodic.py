"""Periodic tasks: once per period across processes, and the policies for missed periods."""

import itertools
import textwrap
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import anyio
import pytest

import pgchanges
from tests.cli_process import Running
from tests.conftest import wait_until

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
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 5):
        time.sleep(0.2)
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
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        db.execute("UPDATE pgchanges.periodic SET next_run_at = %s", (now - timedelta(hours=3),))
        await wait_until(lambda: condition(seen, db), f"the {missed!r} policy to act")
        app.stop()
    return seen, now, db.execute("SELECT next_run_at FROM pgchanges.periodic").fetchone()[0]


@pytest.mark.anyio
async def test_missed_once_runs_one_catch_up(dsn, db):
    seen, now, following = await run_with_missed(dsn, db, "once", lambda seen, db: len(seen) >= 1)
    assert seen == [now - timedelta(hours=3)] and following == now + timedelta(hours=1)


@pytest.mark.anyio
async def test_missed_all_runs_every_missed_period(dsn, db):
    seen, now, following = await run_with_missed(dsn, db, "all", lambda seen, db: len(seen) >= 4)
    assert seen == [now - timedelta(hours=h) for h in (3, 2, 1, 0)] and following == now + timedelta(hours=1)


@pytest.mark.anyio
async def test_missed_skip_waits_for_the_next_period(dsn, db):
    def moved(seen, db):
        return db.execute("SELECT next_run_at > now() FROM pgchanges.periodic").fetchone()[0]

    seen, now, following = await run_with_missed(dsn, db, "skip", moved)
    assert seen == [] and following == now + timedelta(hours=1)


@pytest.mark.anyio
async def test_cron_task_runs_in_process(dsn, db):
    app = pgchanges.App(dsn)
    seen = []
    app.cron("* * * * *", tz="Europe/Berlin", name="minutely")(lambda: seen.append(1))
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        await wait_until(lambda: registered(db) == 1, "registration")
        db.execute("UPDATE pgchanges.periodic SET next_run_at = now() - interval '1 second'")
        await wait_until(lambda: seen == [1], "the cron task")
        app.stop()
    spec, error = db.execute("SELECT spec, last_error FROM pgchanges.periodic").fetchone()
    assert spec == "cron * * * * * Europe/Berlin" and error is None


def test_unknown_time_zone_and_policy_are_clear_errors(dsn):
    app = pgchanges.App(dsn)
    with pytest.raises(pgchanges.ConfigError, match="time zone"):
        app.cron("* * * * *", tz="Mars/Olympus")
    with pytest.raises(pgchanges.ConfigError, match="missed"):
        app.every("1s", missed="sometimes")
