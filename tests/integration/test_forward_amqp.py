"""Forwarding to RabbitMQ (the machine's broker on 127.0.0.1:5672, isolated by an exchange and queue of the
test's own): a durable topic exchange, routing keys from the template, persistent messages, message_id,
publisher confirms; its connection closed by the broker mid-stream; the broker stopped and started again."""

from __future__ import annotations

import asyncio
import subprocess

import anyio
import pytest

import pgchanges
from pgchanges.change import Change
from tests.brokers import eventually, unique

pytestmark = pytest.mark.anyio
AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def _bound_queue(exchange: str, binding: str) -> str:
    """A durable queue bound to ``exchange`` (declared as the forwarder declares it)."""

    async def declare() -> str:
        import aio_pika

        connection = await aio_pika.connect(AMQP)
        async with connection:
            channel = await connection.channel()
            ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue(exchange + ".q", durable=True)
            await queue.bind(ex, binding)
            return queue.name

    return asyncio.run(declare())


def _drain(queue: str) -> list[tuple[str, dict[str, object], bytes]]:
    """What the queue holds (routing key, properties, body), acknowledged."""

    async def read() -> list[tuple[str, dict[str, object], bytes]]:
        import aio_pika

        connection = await aio_pika.connect(AMQP)
        async with connection:
            channel = await connection.channel()
            q = await channel.get_queue(queue)
            out = []
            while (message := await q.get(fail=False)) is not None:
                props = {"message_id": message.message_id, "delivery_mode": message.delivery_mode.value}
                props["content_type"] = message.content_type
                out.append((message.routing_key or "", props, message.body))
                await message.ack()
            return out

    return asyncio.run(read())


def _cleanup(exchange: str) -> None:
    async def drop() -> None:
        import aio_pika

        connection = await aio_pika.connect(AMQP)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(exchange + ".q")
            await channel.exchange_delete(exchange)

    asyncio.run(drop())


async def test_changes_are_persistent_confirmed_messages_with_their_ids(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
    exchange = unique("pgchanges-test-")
    queue = await anyio.to_thread.run_sync(_bound_queue, exchange, "public.orders.*")
    received: list[tuple[str, dict[str, object], bytes]] = []
    try:
        app = pgchanges.App(dsn, source="logical", slot=unique("s"))
        app.forward("orders", to=AMQP, exchange=exchange)
        async with anyio.create_task_group() as tg:
            await tg.start(app.serve)
            db.execute("INSERT INTO orders VALUES (1, 'new'), (2, 'new')")
            db.execute("UPDATE orders SET status = 'paid' WHERE id = 1")

            def more():
                received.extend(_drain(queue))
                return len(received)

            await eventually(more, lambda n: n >= 3, "three messages in the bound queue")
            app.stop()
    finally:
        await anyio.to_thread.run_sync(_cleanup, exchange)
    assert [key for key, _, _ in received] == ["public.orders.insert", "public.orders.insert", "public.orders.update"]
    for _, props, body in received:
        change = Change.from_json(body)
        assert props == {"message_id": change.id, "delivery_mode": 2, "content_type": "application/json"}
        assert body.decode() == change.to_json()


async def test_a_connection_the_broker_closes_is_opened_again_and_nothing_is_lost(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    exchange = unique("pgchanges-test-")
    queue = await anyio.to_thread.run_sync(_bound_queue, exchange, "#")
    ids: set[str] = set()
    try:
        app = pgchanges.App(dsn, source="logical", slot=unique("s"))
        app.forward("t", to=AMQP, exchange=exchange, subject="{table}")
        async with anyio.create_task_group() as tg:
            await tg.start(app.serve)

            def count():
                ids.update(props["message_id"] for _, props, _ in _drain(queue))
                return len(ids)

            db.execute("INSERT INTO t SELECT generate_series(1, 10)")
            await eventually(count, lambda n: n >= 10, "the first ten")
            closed = await anyio.to_thread.run_sync(_close_pgchanges_connections)
            assert closed, "no connection of the forwarder found"
            db.execute("INSERT INTO t SELECT generate_series(11, 20)")
            await eventually(count, lambda n: n >= 20, "the next ten, after the broker closed the connection")
            app.stop()
    finally:
        await anyio.to_thread.run_sync(_cleanup, exchange)
    assert len(ids) == 20  # duplicates would carry the same message_id: 20 distinct ids, none missing


async def test_the_broker_stopped_and_started_again_loses_nothing(dsn, db):
    """The machine's RabbitMQ application stopped (connections refused) while changes commit, then started:
    the forwarder retries with its position held, and every change reaches the durable queue."""
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    exchange = unique("pgchanges-test-")
    queue = await anyio.to_thread.run_sync(_bound_queue, exchange, "#")
    ids: set[str] = set()
    try:
        app = pgchanges.App(dsn, source="logical", slot=unique("s"))
        forwarder = app.forward("t", to=AMQP, exchange=exchange, subject="{table}")
        async with anyio.create_task_group() as tg:
            await tg.start(app.serve)

            def count():
                ids.update(props["message_id"] for _, props, _ in _drain(queue))
                return len(ids)

            db.execute("INSERT INTO t SELECT generate_series(1, 10)")
            await eventually(count, lambda n: n >= 10, "the first ten")
            await anyio.to_thread.run_sync(_rabbitmq, "stop_app")
            try:
                db.execute("INSERT INTO t SELECT generate_series(11, 30)")
                await eventually(
                    lambda: forwarder.delivery.retries, lambda n: n > 0, "the forwarder to meet the stopped broker"
                )
            finally:
                await anyio.to_thread.run_sync(_rabbitmq, "start_app")
            await eventually(count, lambda n: n >= 30, "the twenty written while the broker was stopped", 60)
            app.stop()
    finally:
        await anyio.to_thread.run_sync(_cleanup, exchange)
    assert len(ids) == 30  # duplicates would carry the same message_id: 30 distinct ids, none missing


def _rabbitmq(command: str) -> None:
    """``rabbitmqctl stop_app`` / ``start_app`` (and wait until it serves again) on the machine's broker."""
    subprocess.run(["rabbitmqctl", "-q", command], check=True, capture_output=True, timeout=120)
    if command == "start_app":
        subprocess.run(["rabbitmqctl", "-q", "await_startup"], check=True, capture_output=True, timeout=120)


def _close_pgchanges_connections() -> int:
    """Close, on the broker's side, the connections named "pgchanges" (the forwarder's; no others)."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    pids = [line.split("\t", 1)[0] for line in listed.splitlines() if '"pgchanges"' in line]
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test"], check=True, timeout=30)
    return len(pids)
