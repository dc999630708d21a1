"""The operator endpoint against a real server: /metrics scraped with httpx and parsed with prometheus-client,
/readyz through a blocked handler, outbox figures, and a quiet slot that keeps up thanks to heartbeats."""

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import pgchanges
from pgchanges.ops.figures import progress_tasks
from tests.conftest import wait_until

pytestmark = pytest.mark.anyio
SECRET = "s3cret-not-for-logs"


def with_password(dsn):
    return f"{dsn} password={SECRET}"  # the test cluster trusts: the password is only carried around


async def get(app, path):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.ops.port}") as client:
        return await client.get(path)


async def scrape(app):
    response = await get(app, "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert SECRET not in response.text
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def value(samples, name, **labels):
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return found[0] if len(found) == 1 else None


async def eventually(check, what, timeout=15.0):
    """Await ``check()`` (async) until it returns something true; fail saying what was last seen."""
    seen = None
    with anyio.move_on_after(timeout):
        while not (seen := await check()):
            await anyio.sleep(0.02)
        return seen
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last seen: {seen!r}")


async def test_metrics_of_a_logical_app(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY)")
    db.execute("INSERT INTO t SELECT generate_series(1, 50); ANALYZE t")  # the snapshot's rows, estimated
    app = pgchanges.App(
        with_password(dsn), source="logical", slot="ops", snapshot=True, heartbeat=0.1, http="127.0.0.1:0"
    )
    app.ops.sampler.interval = 0.05
    handled = []

    @app.on("public.t")
    async def on_t(change):
        handled.append(change)

    @app.on("public.u")
    def on_u(change):
        handled.append(change)
        raise ValueError("no thanks")

    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO t VALUES (51), (52)")
        db.execute("INSERT INTO u VALUES (1)")
        await wait_until(lambda: len(handled) == 53, lambda: f"53 changes, got {len(handled)}")

        async def settled():
            samples = await scrape(app)
            seen = value(samples, "pgchanges_heartbeats_seen_total", source="logical")
            retained = value(samples, "pgchanges_slot_retained_bytes", slot="ops")
            return samples if seen and retained is not None else None

        samples = await eventually(settled, "a heartbeat read back and a sample of the slot")
        health = (await get(app, "/healthz")).json()
        ready = await get(app, "/readyz")
        app.stop()
    assert value(samples, "pgchanges_changes_total", source="logical", table="public.t", op="insert") == 52
    assert value(samples, "pgchanges_changes_total", source="logical", table="public.u", op="insert") == 1
    assert value(samples, "pgchanges_handler_seconds_count", handler=on_t.__qualname__) == 52
    assert value(samples, "pgchanges_handler_errors_total", handler=on_u.__qualname__) == 1
    assert value(samples, "pgchanges_lag_seconds", source="logical") >= 0
    assert value(samples, "pgchanges_position_age_seconds", source="logical") >= 0
    assert value(samples, "pgchanges_connected", connection="replication") == 1
    assert value(samples, "pgchanges_slot_active", slot="ops") == 1
    assert value(samples, "pgchanges_slot_spill_bytes_total", slot="ops") >= 0  # pg_stat_replication_slots
    assert value(samples, "pgchanges_progress_done", task="snapshot public.t", unit="rows") == 50
    assert value(samples, "pgchanges_progress_total", task="snapshot public.t", unit="rows") is not None
    assert health == {"status": "alive", "reason": "the event loop answers", "serving": True, "time": health["time"]}
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and SECRET not in ready.text
    assert any(t.task == "snapshot public.t" and t.finished for t in progress_tasks())


async def test_readyz_fails_while_a_handler_blocks_and_recovers_after(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    app = pgchanges.App(dsn, source="logical", slot="stall", http="127.0.0.1:0", stall_after=0.2)
    release = anyio.Event()
    handled = []

    @app.on("public.t")
    async def slow(change):
        if change.new["id"] == 1:
            await release.wait()
        handled.append(change)

    async def readiness():
        response = await get(app, "/readyz")
        return response.status_code, response.json()

    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        await eventually(lambda: _is(readiness, 200), "ready before any change")
        db.execute("INSERT INTO t VALUES (1)")
        _, body = await eventually(lambda: _is(readiness, 503), "/readyz to fail while the handler blocks")
        assert body["status"] == "stalled" and "in the handlers" in body["reason"], body
        release.set()
        db.execute("INSERT INTO t VALUES (2)")
        await wait_until(lambda: len(handled) == 2, "both changes handled")
        _, body = await eventually(lambda: _is(readiness, 200), "/readyz to recover")
        app.stop()
    assert body["status"] == "ready"


async def _is(readiness, wanted):
    status, body = await readiness()
    return (status, body) if status == wanted else None


async def test_outbox_backlog_parked_and_dead_letters(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    app = pgchanges.App(
        dsn,
        source="outbox",
        consumer="billing",
        retry=pgchanges.RetryPolicy(max_attempts=1),
        http="127.0.0.1:0",
        poll_interval=0.05,
    )
    app.ops.sampler.interval = 0.05
    handled = []

    @app.on("public.orders")
    async def bill(change):
        handled.append(change)
        if change.new["id"] == 2:
            raise RuntimeError("refused")

    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO orders VALUES (1), (2), (3)")
        await wait_until(lambda: len(handled) == 3, lambda: f"3 changes handled, got {len(handled)}")

        async def dead_letter_seen():
            samples = await scrape(app)
            dead = value(samples, "pgchanges_dead_letters", consumer="billing")
            return (
                samples if dead == 1 and value(samples, "pgchanges_outbox_backlog", consumer="billing") == 0 else None
            )

        samples = await eventually(dead_letter_seen, "the dead letter in the metrics")
        app.stop()
    assert value(samples, "pgchanges_outbox_parked", consumer="billing") == 0
    assert value(samples, "pgchanges_lag_seconds", source="outbox") == 0
    assert value(samples, "pgchanges_changes_total", source="outbox", table="public.orders", op="insert") >= 3
    assert value(samples, "pgchanges_handler_errors_total", handler=bill.__qualname__) == 1
    assert value(samples, "pgchanges_connected", connection="worker-0") == 1


def retained(db, slot):
    row = db.execute(
        """SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
                  pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
           FROM pg_replication_slots WHERE slot_name = %s""",
        (slot,),
    ).fetchone()
    return row


async def test_a_quiet_slot_keeps_up_with_a_busy_unwatched_table(dsn, db):
    db.execute("CREATE TABLE watched (id int PRIMARY KEY); CREATE TABLE busy (id int, pad text)")
    app = pgchanges.App(dsn, source="logical", slot="quiet", heartbeat=0.1, http="127.0.0.1:0")

    @app.on("public.watched")
    async def never(change):
        raise AssertionError("the watched table stays quiet")

    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        figures = app.source.figures
        for _ in range(8):  # about 16 MB of WAL the slot does not publish
            db.execute("INSERT INTO busy SELECT g, repeat('x', 1000) FROM generate_series(1, 2000) g")
        written = db.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        seen = figures.heartbeats_seen

        def caught_up():
            (now,) = db.execute("SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots WHERE slot_name = 'quiet'",
                                (written,)).fetchone()  # fmt: skip
            return now and figures.heartbeats_seen > seen

        await wait_until(caught_up, "the slot to confirm past the busy table's WAL, heartbeats read back", 20)

        async def bounded():
            await anyio.to_thread.run_sync(db.execute, "CHECKPOINT")  # logs the running transactions: the restart
            found = retained(db, "quiet")  # point may move past them once the slot confirmed beyond
            return found if found[0] < 4 * 1024 * 1024 else None

        kept, behind = await eventually(bounded, "the WAL the quiet slot retains to drop below 4 MB", 30)
        lag = figures.lag_seconds
        app.stop()
    assert behind < 1024 * 1024 and kept < 4 * 1024 * 1024
    assert lag is not None and lag < 5  # measured by heartbeats: the watched table wrote nothing


async def test_polling_lag_is_now_minus_the_watermark(dsn, db):
    db.execute("CREATE TABLE p (id int PRIMARY KEY, updated_at timestamptz NOT NULL)")
    db.execute("INSERT INTO p VALUES (1, now() - interval '30 seconds')")
    app = pgchanges.App(dsn, source="polling", column="updated_at", interval=0.05, http="127.0.0.1:0")
    handled = []

    @app.on("public.p")
    async def seen(change):
        handled.append(change)

    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        await wait_until(lambda: handled, "the row polled")
        samples = await scrape(app)
        app.stop()
    assert 29 < value(samples, "pgchanges_lag_seconds", source="polling") < 600
    assert value(samples, "pgchanges_changes_total", source="polling", table="public.p", op="upsert") == 1
