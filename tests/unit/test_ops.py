"""The operator endpoint's parts without a database: addresses and sizes, the observer's counting and timing,
readiness verdicts, the metrics a scrape shows, the HTTP server, JSON logs and their scrubbing."""

import io
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgchanges.change import EMPTY, Change
from pgchanges.errors import ConfigError
from pgchanges.ops import health, http, logs
from pgchanges.ops.figures import SourceFigures, sink_metrics
from pgchanges.ops.metrics import exposition
from pgchanges.ops.observer import Observer
from pgchanges.ops.progress import Progress
from pgchanges.ops.sampler import ConsumerSample, Sample, SlotSample
from pgchanges.ops.service import Ops, OpsConfig, parse_size
from pgchanges.routing import Router


def change(i, table="t", op="insert", commit_time=None):
    return Change(f"0/1:{i}", op, "public", table, None, None, EMPTY, 1, commit_time, "0/1", "logical")


def samples(text):
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(found, name, **labels):
    matching = [s.value for s in found if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, f"{name}{labels}: {matching}"
    return matching[0]


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:9187", ("127.0.0.1", 9187)), ("[::1]:0", ("::1", 0)), (":9187", ("0.0.0.0", 9187))],
)
def test_addresses(address, expected):
    assert http.parse_address(address) == expected


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:http", "1.2.3.4:70000"])
def test_bad_addresses_are_config_errors(address):
    with pytest.raises(ConfigError, match="HOST:PORT"):
        http.parse_address(address)


def test_sizes():
    assert parse_size("10GB") == 10 * 1000**3
    assert parse_size("2 GiB") == 2 * 1024**3
    assert parse_size(123) == 123
    assert parse_size(None) is None
    with pytest.raises(ConfigError, match="size"):
        parse_size("lots")


def observed_router():
    router = Router()

    async def on_t(c):
        pass

    def on_u(c):
        pass

    router.add("public.t", None, on_t)
    router.add("public.u", None, on_u)
    router.add("public.u", "update", on_t)
    return router


def test_observer_counts_a_run_and_shares_its_time_among_the_calls():
    observer = Observer("logical", observed_router(), None, acknowledges=True)
    committed = datetime.now(UTC) - timedelta(seconds=5)
    run = [change(1), change(2), change(3, "u"), change(4, "u", "update", committed)]
    token = observer.run_started()
    assert observer.runs_in_progress == 1
    observer.run_finished(token, run)
    assert observer.runs_in_progress == 0 and observer.longest_run() == 0
    assert observer.changes == {
        ("public", "t", "insert"): 2,
        ("public", "u", "insert"): 1,
        ("public", "u", "update"): 1,
    }
    names = {name.rsplit(".", 1)[-1]: times for name, times in observer.times.items()}
    assert sum(names["on_t"].counts) == 3 and sum(names["on_u"].counts) == 2  # the update goes to both
    assert 4.9 < observer.figures.lag_seconds < 60
    one_table = [change(i) for i in range(5)]
    observer.run_finished(observer.run_started(), one_table)
    assert observer.changes[("public", "t", "insert")] == 7


def test_notify_progress_is_handling_and_failures_are_counted():
    figures = SourceFigures()
    figures.advanced_at -= 100
    observer = Observer("notify", observed_router(), figures, acknowledges=False)
    observer.run_finished(observer.run_started(), [change(1)])
    assert time.monotonic() - figures.advanced_at < 50
    observer.handler_failed("h")
    observer.handler_failed("h")
    assert observer.errors == {"h": 2}


def fake_ops(**config):
    ops = Ops("host=db password=hunter2", OpsConfig("127.0.0.1:0", **config))
    ops.sampler.latest = Sample(time.monotonic(), [], [])
    ops.sampler.connected = True
    return ops


def attach(ops, source_name="logical", acknowledges=True):
    server = SimpleNamespace(
        source=SimpleNamespace(name=source_name, acknowledges=acknowledges, slot="s1", figures=SourceFigures()),
        runtime=SimpleNamespace(router=observed_router(), observer=None),
        observer=None,
    )
    observer = ops.attach(server)
    assert server.runtime.observer is observer and server.observer is observer
    return observer


def test_readiness_follows_serving_runs_and_progress():
    ops = fake_ops(stall_after=0.05)
    observer = attach(ops)
    assert health.ready(ops).status == "not serving"
    observer.serving(True)
    assert health.ready(ops).ok
    token = observer.run_started()
    observer._running[token] -= 1  # the run started a second ago
    verdict = health.ready(ops)
    assert (verdict.ok, verdict.status) == (False, "stalled") and "in the handlers" in verdict.reason
    observer.run_finished(token, [change(1)])
    observer.settled()
    assert health.ready(ops).ok
    ops.figures.heartbeat_sent()
    ops.figures.heartbeat_sent_at -= 1
    ops.figures.advanced_at -= 1
    verdict = health.ready(ops)
    assert verdict.status == "stalled" and "heartbeat" in verdict.reason
    ops.figures.heartbeat_seen(0.01)
    assert health.ready(ops).ok
    assert health.alive(ops).as_json()["serving"] is True


def test_readiness_fails_on_a_retaining_slot_and_an_outbox_backlog():
    ops = fake_ops(stall_after=0.05, max_retained_bytes=1000)
    attach(ops).serving(True)
    slot = SlotSample("s1", True, 1, False, "reserved", 5000, 10, "0/1", "app", None, None, {"spill_bytes": 7})
    ops.sampler.latest = Sample(time.monotonic(), [slot], [])
    verdict = health.ready(ops)
    assert verdict.status == "retaining" and "s1 retains 5000 bytes" in verdict.reason
    consumer = ConsumerSample("c", 3, 12.5, 0, 0, 1, 2, None)
    ops.sampler.latest = Sample(time.monotonic(), [], [consumer])
    ops.figures.advanced_at -= 1
    assert "3 outbox event(s) are pending" in health.ready(ops).reason
    ops.sampler.connected = False
    assert health.ready(ops).reason == "connection(s) down: metrics"


def test_a_scrape_shows_every_family_with_its_labels():
    ops = fake_ops()
    observer = attach(ops)
    observer.serving(True)
    observer.run_finished(observer.run_started(), [change(1), change(2, "u")])
    observer.handler_failed("on_t")
    slot = SlotSample("s1", True, 1, False, "reserved", 5000, 10, "0/1", "app", None, None, {"spill_bytes": 7})
    ops.sampler.latest = Sample(time.monotonic(), [slot], [ConsumerSample("c", 3, 12.5, 0, 0, 1, 2, None)])
    sink = sink_metrics("unit-sink")
    sink.published(5)
    sink.failed()
    sink.sending(2)
    with Progress("unit task", total=10, unit="rows") as progress:
        progress.advance(4)
    found = samples(exposition(ops.registry).decode())
    assert value(found, "pgchanges_changes_total", source="logical", table="public.t", op="insert") == 1
    assert value(found, "pgchanges_handler_seconds_count", handler=next(iter(observer.times))) >= 1
    assert value(found, "pgchanges_handler_errors_total", handler="on_t") == 1
    assert value(found, "pgchanges_slot_retained_bytes", slot="s1") == 5000
    assert value(found, "pgchanges_slot_spill_bytes_total", slot="s1") == 7
    assert value(found, "pgchanges_outbox_backlog", consumer="c") == 3
    assert value(found, "pgchanges_outbox_parked", consumer="c") == 1
    assert value(found, "pgchanges_dead_letters", consumer="c") == 2
    assert value(found, "pgchanges_connected", connection="metrics") == 1
    assert value(found, "pgchanges_sink_published_total", sink="unit-sink") == 5
    assert value(found, "pgchanges_sink_in_flight", sink="unit-sink") == 2
    assert value(found, "pgchanges_progress_done", task="unit task", unit="rows") == 4
    assert value(found, "pgchanges_progress_total", task="unit task", unit="rows") == 10
    assert value(found, "pgchanges_position_age_seconds", source="logical") >= 0
    assert any(s.name == "process_cpu_seconds_total" for s in found)  # the default registry too


def test_progress_draws_nothing_on_a_non_terminal():
    out = io.StringIO()
    with Progress("quiet", total=3, unit="rows", stream=out) as progress:
        progress.advance(3)
    assert out.getvalue() == "" and progress.tally.done == 3 and progress.tally.finished


pytestmark = pytest.mark.filterwarnings("error")


@pytest.mark.anyio
async def test_the_http_server_answers_keeps_alive_and_refuses_the_rest(anyio_backend):
    async def handle(method, path):
        return http.Response(200, json.dumps({"method": method, "path": path}).encode())

    async with anyio.create_task_group() as tg:
        port = await tg.start(http.serve, "127.0.0.1:0", handle)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            first = await client.get("/metrics?x=1")
            second = await client.get("/readyz")  # the same connection
            assert first.json() == {"method": "GET", "path": "/metrics"} and second.json()["path"] == "/readyz"
            assert (await client.head("/healthz")).content == b""
        stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            await stream.send(b"NOT HTTP\r\n\r\n")
            assert (await stream.receive()).startswith(b"HTTP/1.1 400")
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_ops_routes(anyio_backend):
    ops = fake_ops()
    attach(ops).serving(True)
    assert (await ops.respond("POST", "/metrics")).status == 405
    assert (await ops.respond("GET", "/nothing")).status == 404
    ready = await ops.respond("GET", "/readyz")
    assert ready.status == 200 and json.loads(ready.body)["status"] == "ready"
    assert b"hunter2" not in (await ops.respond("GET", "/metrics")).body


def test_json_logs_are_one_object_per_line_with_context_and_no_secret():
    logs.forget("postgresql://app:s3cret-pw@db/shop")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("pgchanges.test_ops")
    logger.addHandler(handler)
    logger.propagate = False
    token = logs.serving_context.set({"source": "outbox", "consumer": "billing"})
    try:
        logger.warning("connect to postgresql://app:s3cret-pw@db/shop failed; password=s3cret-pw")
        try:
            raise ValueError("boom s3cret-pw")
        except ValueError:
            logger.exception("handler failed", extra={"change_id": "outbox:7", "table": "public.orders"})
    finally:
        logs.serving_context.reset(token)
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2 and "s3cret-pw" not in out.getvalue()
    assert lines[0]["level"] == "warning" and lines[0]["logger"] == "pgchanges.test_ops"
    assert lines[0]["consumer"] == "billing" and lines[0]["source"] == "outbox"
    assert lines[1]["change_id"] == "outbox:7" and lines[1]["table"] == "public.orders"
    assert "ValueError" in lines[1]["exception"]
    datetime.fromisoformat(lines[0]["time"])
