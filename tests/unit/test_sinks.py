"""Sinks without a broker: templates, the delivery's rounds (per-row order, retries, skips), options, secrets."""

from __future__ import annotations

import anyio
import pytest

from pgchanges.change import Change, freeze
from pgchanges.errors import ConfigError, SinkRejected, SinkUnavailable
from pgchanges.forwarding import make_forwarder
from pgchanges.plain_run import SKIPPED
from pgchanges.sinks.base import Message, Scrubber, redact_url
from pgchanges.sinks.bridge import Bridge
from pgchanges.sinks.delivery import Delivery
from pgchanges.sinks.options import sink_options
from pgchanges.sinks.templates import Template, key_text, nats_token
from pgchanges.sources.base import Backoff

pytestmark = pytest.mark.anyio


def change(n: int, row: int, op: str = "update") -> Change:
    return Change(f"c{n}", op, "public", "t", freeze({"id": row}), None, (), 1, None, n, "logical")  # type: ignore[arg-type]


def test_templates_fill_in_and_say_what_nats_subjects_they_cover():
    template = Template("pgchanges.{schema}.{table}.{op}.{key}", nats_token)
    assert template.render(change(1, 7), "7") == "pgchanges.public.t.update.7"
    assert template.wildcard() == "pgchanges.*.*.*.>"
    assert Template("pgchanges.{schema}.{table}").wildcard() == "pgchanges.*.*"
    assert Template("cdc_{table}.x").wildcard() == ">"
    assert Template("x.{key}", nats_token).render(change(1, 1), key_text((3, "a.b"), nats_token)) == "x.3.a_b"
    with pytest.raises(ConfigError, match="unknown placeholder"):
        Template("x.{tabel}")


def test_redaction_of_urls_and_secrets():
    assert redact_url("amqp://user:hunter2@host:5672/vh?token=abc") == "amqp://user:***@host:5672/vh"
    scrub = Scrubber(["hunter2", "abc"])
    assert scrub("failed amqp://user:hunter2@host abc") == "failed amqp://user:***@host ***"


def test_sink_options_are_checked_when_forwarding_is_set_up():
    with pytest.raises(ConfigError, match=r"unknown option.*strem.*valid options: stream"):
        sink_options("nats://localhost:4222", {"strem": "X"})
    with pytest.raises(ConfigError, match="cannot forward to kafka"):
        sink_options("kafka://localhost:9092", {})
    assert "s3cret" not in repr(sink_options("https://hook", {"secret": "s3cret"}))
    with pytest.raises(ConfigError, match="window"):
        make_forwarder("dbname=x", "redis://localhost", window=0)


class FakeSink:
    """Answers each publish from a script: per change id, a list of results to give in turn (default None)."""

    name = "fake://"
    asyncio_only = False
    template = Template("{table}")

    def __init__(self, script: dict[str, list[object]]) -> None:
        self.script = script
        self.windows: list[list[str]] = []

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, messages):
        self.windows.append([m.change.id for m in messages])
        return [self.script.get(m.change.id, [None]).pop(0) if self.script.get(m.change.id) else None for m in messages]


async def deliver(sink: FakeSink, changes: list[Change], window: int = 10):
    rejected: list[str] = []

    async def on_rejected(c: Change, error: SinkRejected):
        rejected.append(c.id)
        return error

    delivery = Delivery(sink, Bridge("fake"), window=window, backoff=Backoff(0.001, 0.002), on_rejected=on_rejected)
    messages = [Message(c, "t", b"{}", "application/json") for c in changes]
    rows = [("public", "t", str(c.new["id"])) for c in changes]
    return await delivery.deliver(messages, rows, changes), rejected, delivery


async def test_a_row_has_one_change_in_flight_and_later_ones_wait_for_its_confirm():
    sink = FakeSink({})
    changes = [change(1, 1), change(2, 2), change(3, 1), change(4, 1), change(5, 3)]
    outcomes, _, _ = await deliver(sink, changes)
    assert outcomes == [None] * 5
    assert sink.windows == [["c1", "c2", "c5"], ["c3"], ["c4"]]


async def test_the_window_bounds_what_is_in_flight():
    sink = FakeSink({})
    outcomes, _, _ = await deliver(sink, [change(i, i) for i in range(7)], window=3)
    assert [len(w) for w in sink.windows] == [3, 3, 1] and outcomes == [None] * 7


async def test_unavailable_is_retried_and_a_refused_change_holds_back_its_row():
    refused = SinkRejected("too big")
    sink = FakeSink({"c1": [SinkUnavailable("down"), SinkUnavailable("down"), None], "c2": [refused]})
    changes = [change(1, 1), change(2, 2), change(3, 2), change(4, 1), change(5, 3)]
    outcomes, rejected, delivery = await deliver(sink, changes)
    assert outcomes == [None, refused, SKIPPED, None, None]
    assert rejected == ["c2"] and delivery.retries >= 1
    assert "c3" not in {i for w in sink.windows for i in w}  # never published after its row's refusal
    order = [i for w in sink.windows for i in w]
    assert order.index("c4") > max(i for i, x in enumerate(order) if x == "c1")  # row 1 kept its order


async def test_a_whole_table_change_waits_for_every_row_before_it():
    sink = FakeSink({})
    truncate = Change("c9", "truncate", "public", "t", None, None, (), 1, None, 9, "logical")
    changes = [change(1, 1), change(2, 2), truncate, change(3, 3)]
    delivery_rows = [("public", "t", "1"), ("public", "t", "2"), ("public", "t", None), ("public", "t", "3")]
    delivery = Delivery(sink, Bridge("fake"), window=10, backoff=Backoff(), on_rejected=None)  # type: ignore[arg-type]
    messages = [Message(c, "t", b"{}", "application/json") for c in changes]
    assert await delivery.deliver(messages, delivery_rows, changes) == [None] * 4
    assert sink.windows == [["c1", "c2"], ["c9"], ["c3"]]


async def test_the_bridge_runs_a_coroutine_in_an_asyncio_loop_under_trio_too():
    import asyncio

    bridge = Bridge("test")
    await bridge.start()

    async def where() -> bool:
        await asyncio.sleep(0)
        return True

    try:
        assert await bridge.run(where)
        with anyio.move_on_after(0.05):
            await bridge.run(asyncio.sleep, 10)  # cancelled from the caller's side
    finally:
        await bridge.stop()
