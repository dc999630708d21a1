"""RabbitMQ (``amqp://user:pass@host:port/vhost``) through aio-pika, with publisher confirms.

Each change is a persistent message (``delivery_mode`` 2) on a durable topic exchange, ``message_id`` =
change id, routing key from the template. A window is published at once on a channel in confirm mode and the
call returns once the broker confirmed (ack) each; a nack or a missing confirm is tried again. RabbitMQ keeps
no ids: a change published again after a crash arrives again, with the same ``message_id``, so duplicates are
limited to what was in flight. A message the broker refuses for good (larger than ``max_message_size``) closes
the channel with a 406; it fails that change, the channel is opened again for the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions

from pgchanges.errors import SinkUnavailable
from pgchanges.sinks.base import Message, Result, Scrubber, redact_url, rejected, unavailable, url_secrets
from pgchanges.sinks.options import AmqpOptions
from pgchanges.sinks.templates import Template

#: AMQP reply codes of a message the broker will never take (precondition failed, frame or content too large).
_PERMANENT_CODES = {406, 311, 501}


class AmqpSink:
    """Publishes to the durable topic exchange ``options.exchange``."""

    asyncio_only = True

    def __init__(self, url: str, options: AmqpOptions) -> None:
        self._url = url
        self.options = options
        self.name = redact_url(url)
        self._scrub = Scrubber(url_secrets(url))
        self.template = Template(options.subject)
        self._connection: Any = None
        self._channel: Any = None
        self._exchange: Any = None

    async def open(self) -> None:
        await self.close()
        try:
            self._connection = await aio_pika.connect(
                self._url, timeout=self.options.confirm_timeout, client_properties={"connection_name": "pgchanges"}
            )
            await self._open_channel()
        except Exception as exc:
            await self.close()
            raise unavailable(self.name, exc, self._scrub) from None

    async def _open_channel(self) -> None:
        self._channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await self._channel.declare_exchange(
            self.options.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def publish(self, messages: Sequence[Message]) -> list[Result]:
        exchange, timeout = self._exchange, self.options.confirm_timeout
        if exchange is None:
            raise SinkUnavailable(f"{self.name}: not connected")
        sends = [
            exchange.publish(
                aio_pika.Message(
                    message.payload,
                    message_id=message.change.id,
                    content_type=message.content_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    type=f"pgchanges.{message.change.op}",
                ),
                routing_key=message.subject,
                timeout=timeout,
            )
            for message in messages
        ]
        outcomes = await asyncio.gather(*sends, return_exceptions=True)
        results = [self._result(message, outcome) for message, outcome in zip(messages, outcomes, strict=True)]
        if self._channel is None or self._channel.is_closed:
            await self._reopen()
        return results

    def _result(self, message: Message, outcome: Any) -> Result:
        if not isinstance(outcome, BaseException):
            return None
        closed = isinstance(outcome, aiormq.exceptions.ChannelClosed)
        code = outcome.args[0] if closed and outcome.args else None
        if isinstance(outcome, aiormq.exceptions.ChannelPreconditionFailed) or code in _PERMANENT_CODES:
            return rejected(self.name, message, self._scrub(repr(outcome)))
        return unavailable(self.name, outcome, self._scrub)

    async def _reopen(self) -> None:
        """A channel the broker closed (a refused message): a new one; a lost connection: reconnect next time."""
        try:
            if self._connection is None or self._connection.is_closed:
                raise aio_pika.exceptions.AMQPConnectionError("connection closed")
            await self._open_channel()
        except Exception:
            await self.close()

    async def close(self) -> None:
        connection, self._connection, self._channel, self._exchange = self._connection, None, None, None
        if connection is not None and not connection.is_closed:
            await connection.close()
