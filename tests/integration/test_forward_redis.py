"""Forwarding to Redis Streams (a private redis-server): entries, the dedup script, MAXLEN, the server stopped and
restarted (its AOF keeps stream and dedup set), a payload larger than the server takes."""

from __future__ import annotations

import signal

import anyio
import pytest

import pgchanges
from pgchanges.change import Change
from tests.brokers import (
    RedisServer,
    eventually,
    nats_messages,
    nats_server,
    redis_entries,
    redis_server,
    running,
    unique,
)

pytestmark = pytest.mark.anyio
__all__ = ["nats_server", "redis_server"]


def _entries(url: str, stream: str, n: int, what: str):
    return eventually(lambda: redis_entries(url, stream), lambda e: len(e) >= n, f"{n} entries in {stream} ({what})")


async def test_changes_become_stream_entries_once_even_when_published_again(dsn, db, redis_server):
    db.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    prefix = unique("r")
    app = pgchanges.App(dsn, source="logical", slot=unique("s"))
    forwarder = app.forward("items", to=redis_server.url, subject=prefix + ":{schema}.{table}")
    seen: list[Change] = []

    @app.on("items")
    async def remember(change):
        seen.append(change)

    stream = prefix + ":public.items"
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 30) g")
        db.execute("DELETE FROM items WHERE id <= 5")
        got = await _entries(redis_server.url, stream, 35, "inserts and deletes")
        assert await forwarder.forward(seen) == [None] * 35  # a restart's republish: the script adds nothing
        app.stop()
    entries = await anyio.to_thread.run_sync(redis_entries, redis_server.url, stream)
    assert entries == got and len(entries) == 35
    for entry, change in zip(entries, seen, strict=True):
        assert set(entry) == {"id", "payload"}
        assert entry["id"] == change.id and entry["payload"] == change.to_json()


async def test_maxlen_trims_the_stream(dsn, db, redis_server):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    stream = unique("m")
    app = pgchanges.App(dsn, source="logical", slot=unique("s"))
    app.forward("t", to=redis_server.url, subject=stream, maxlen=10)
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        for start in range(0, 1000, 250):
            db.execute("INSERT INTO t SELECT generate_series(%s::int, %s::int)", (start, start + 249))
        await eventually(
            lambda: redis_entries(redis_server.url, stream),
            lambda e: e and Change.from_json(e[-1]["payload"]).new["id"] == 999,
            "the last change",
        )
        app.stop()
    assert len(await anyio.to_thread.run_sync(redis_entries, redis_server.url, stream)) < 1000  # MAXLEN ~: about


async def test_a_stopped_redis_is_waited_for_and_nothing_is_lost_or_doubled(dsn, db, tmp_path):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, n int)")
    with running(RedisServer(tmp_path)) as server:
        stream = unique("d")
        app = pgchanges.App(dsn, source="logical", slot=unique("s"))
        forwarder = app.forward("t", to=server.url, subject=stream, timeout=2)
        async with anyio.create_task_group() as tg:
            await tg.start(app.serve)
            db.execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 20) g")
            await _entries(server.url, stream, 20, "before the server stops")
            await anyio.to_thread.run_sync(server.stop)
            db.execute("UPDATE t SET n = 1")
            retries = forwarder.delivery.retries
            await eventually(lambda: forwarder.delivery.retries, lambda r: r > retries + 1, "retries while it is down")
            await anyio.to_thread.run_sync(server.start)
            got = await _entries(server.url, stream, 40, "after the server came back")
            app.stop()
    assert len({e["id"] for e in got}) == len(got) == 40


async def test_a_redis_that_stops_answering_runs_out_the_window_deadline_and_is_tried_again(dsn, db, tmp_path):
    """A frozen server (SIGSTOP: connected, silent) must not hold the forwarder forever: the window's deadline
    passes, the connection is closed, the window is tried again; once the server answers, each change is
    there once."""
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    with running(RedisServer(tmp_path)) as server:
        stream = unique("h")
        app = pgchanges.App(dsn, source="logical", slot=unique("s"))
        forwarder = app.forward("t", to=server.url, subject=stream, timeout=0.5)
        async with anyio.create_task_group() as tg:
            await tg.start(app.serve)
            db.execute("INSERT INTO t SELECT generate_series(1, 10)")
            await _entries(server.url, stream, 10, "before the server is frozen")
            server.proc.send_signal(signal.SIGSTOP)
            try:
                db.execute("INSERT INTO t SELECT generate_series(11, 20)")
                retries = forwarder.delivery.retries
                await eventually(lambda: forwarder.delivery.retries, lambda r: r > retries, "a retry past the deadline")
            finally:
                server.proc.send_signal(signal.SIGCONT)
            got = await _entries(server.url, stream, 20, "after the server answers again")
            app.stop()
    assert sorted(Change.from_json(e["payload"]).new["id"] for e in got) == list(range(1, 21))


async def test_a_payload_larger_than_redis_takes_fails_that_change_only(dsn, db, redis_server):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    stream = unique("o")
    app = pgchanges.App(dsn, source="logical", slot=unique("s"))
    app.forward("t", to=redis_server.url, subject=stream, dead_letter_table="refused")
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO t VALUES (1, %s)", ("x" * (1024 * 1024 + 10),))  # the server: proto-max-bulk-len 1mb
        db.execute("INSERT INTO t VALUES (2, 'small')")
        got = await _entries(redis_server.url, stream, 1, "the small row")
        app.stop()
    assert [Change.from_json(e["payload"]).new["id"] for e in got] == [2]
    ((error,),) = db.execute("SELECT error FROM refused").fetchall()
    assert "rejected change" in error


async def test_two_sinks_on_one_outbox_app_share_its_position_and_a_refusal_holds_back_only_its_row(
    dsn, db, redis_server, nats_server
):
    """NATS refuses row 1 (larger than its max_payload), Redis takes it: the outbox retries row 1 for the App
    (Redis stores it once all the same) and makes it a dead letter; row 2 reaches both at once."""
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    stream, subject = unique("S"), unique("two")
    retry = pgchanges.RetryPolicy(max_attempts=3, initial=0.05, maximum=0.1)
    app = pgchanges.App(dsn, source="outbox", consumer="two", retry=retry)
    app.forward("t", to=nats_server.url, stream=stream, subject=stream.lower())
    app.forward("t", to=redis_server.url, subject=subject)
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO t VALUES (1, %s)", ("x" * 80_000,))
        db.execute("INSERT INTO t VALUES (2, 'small')")

        def dead():
            return db.execute("SELECT event_id FROM pgchanges.dead_letters WHERE consumer = 'two'").fetchall()

        await eventually(dead, lambda rows: len(rows) == 1, "row 1 as a dead letter")
        got = await _entries(redis_server.url, subject, 2, "both rows in Redis")
        app.stop()
    assert sorted(Change.from_json(e["payload"]).new["id"] for e in got) == [1, 2]  # row 1 once, retried 3 times
    stored = await anyio.to_thread.run_sync(nats_messages, nats_server.url, stream)
    assert [Change.from_json(d).new["id"] for _, _, d in stored] == [2]
