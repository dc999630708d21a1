"""Progress of long work: replay and install count what they did, and draw a bar on a terminal only."""

import io
import re

import anyio
import pytest

import pgchanges
from pgchanges.capture import install as capture
from pgchanges.capture import outbox_admin
from pgchanges.names import TableName
from pgchanges.ops.progress import Progress
from tests.conftest import outbox_pending, wait_until


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_install_of_many_tables_counts_each_and_draws_on_a_terminal(db):
    for n in range(12):
        db.execute(f"CREATE TABLE t{n} (id int PRIMARY KEY)")
    screen = Terminal()
    with Progress("install outbox", unit="tables", stream=screen) as progress:
        added = capture.install(db, [TableName("public", "t*")], "outbox", progress=progress)
    assert len(added) == 12
    assert progress.tally.total == 12 and progress.tally.done == 12
    assert re.search(r"100%.*12(\.0)?/12(\.0)?", screen.getvalue())  # the bar, drawn on the terminal


def test_progress_draws_nothing_on_a_pipe(db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    pipe = io.StringIO()
    with Progress("install notify", unit="tables", stream=pipe) as progress:
        capture.install(db, [TableName("public", "t")], "notify", progress=progress)
    assert progress.tally.done == 1
    assert pipe.getvalue() == ""


@pytest.mark.anyio
async def test_replay_goes_in_pieces_and_counts_every_event(dsn, db, monkeypatch):
    monkeypatch.setattr(outbox_admin, "REPLAY_PIECE_IDS", 7)  # several pieces for 30 events
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    app = pgchanges.App(dsn, source="outbox", consumer="c")
    seen = []

    @app.on("t")
    async def handled(change):
        seen.append(change.new["id"])

    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO t SELECT generate_series(1, 30)")
        await wait_until(lambda: len(seen) == 30 and outbox_pending(db) == 0, "the first delivery")
        app.stop()
    screen = Terminal()
    with Progress("replay c", unit="events", stream=screen) as progress:
        queued = outbox_admin.replay(db, "c", "1")
    assert queued == 30 and progress.tally.done == 0  # without progress: nothing reported
    with Progress("replay c", unit="events", stream=screen) as progress:
        queued = outbox_admin.replay(db, "c", "1", progress=progress)
    assert queued == 30
    assert progress.tally.total == 30 and progress.tally.done == 30
    assert re.search(r"100%.*30(\.0)?/30(\.0)?", screen.getvalue())
