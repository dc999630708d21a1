"""NATS JetStream (``nats://host:port``) through nats-py: async publishes with ``Nats-Msg-Id`` = change id.

A window is published with ``publish_async`` (all in flight at once, in order on one connection) and the
call returns once every PubAck came (or ``ack_timeout`` passed: those are tried again). JetStream drops a
message whose ``Nats-Msg-Id`` it stored within the stream's ``duplicate_window`` (PubAck ``duplicate``), so a
change published again after a crash is stored once, if it comes within that window; a longer outage than the
window can store it twice. The stream is created when missing, its subjects covering the template.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js.api import StreamConfig

from pgchanges.errors import SinkUnavailable
from pgchanges.sinks.base import Message, Result, Scrubber, redact_url, rejected, unavailable, url_secrets
from pgchanges.sinks.options import NatsOptions
from pgchanges.sinks.templates import Template, nats_token

log = logging.getLogger("pgchanges.forward")

ACK_CHECK_SECONDS = 0.25  # how often a wait for PubAcks looks whether the connection is still there
#: JetStream API error codes of a message the stream can never take.
_PERMANENT_CODES = {400, 413}


class NatsSink:
    """Publishes to JetStream stream ``options.stream``."""

    asyncio_only = True

    def __init__(self, url: str, options: NatsOptions) -> None:
        self._url = url
        self.options = options
        self.name = redact_url(url)
        self._scrub = Scrubber(url_secrets(url))
        self._nc: Any = None
        self._js: Any = None
        self.template = Template(options.subject, nats_token)

    async def open(self) -> None:
        await self.close()
        try:
            nc = await nats.connect(
                servers=[self._url],
                name="pgchanges forward",
                allow_reconnect=True,
                max_reconnect_attempts=1,  # a first connect that fails fails (the forwarder tries again later)
                reconnect_time_wait=0.25,
                connect_timeout=self.options.ack_timeout,
                error_cb=self._client_error,
            )
        except Exception as exc:
            raise unavailable(self.name, exc, self._scrub) from None
        nc.options["max_reconnect_attempts"] = -1  # once connected, the client reconnects for as long as it takes
        self._nc = nc
        self._js = nc.jetstream(timeout=self.options.ack_timeout, publish_async_max_pending=1 << 30)
        try:
            await self._ensure_stream()
        except Exception as exc:
            await self.close()
            raise unavailable(self.name, exc, self._scrub) from None

    async def _client_error(self, exc: Exception) -> None:
        log.debug("%s: %s", self.name, self._scrub(str(exc)))

    async def _ensure_stream(self) -> None:
        options = self.options
        try:
            info = await self._js.stream_info(options.stream)
        except nats.js.errors.NotFoundError:
            if not options.create_stream:
                raise
            subjects = [self.template.wildcard()]
            config = StreamConfig(name=options.stream, subjects=subjects, duplicate_window=options.dedup_window)
            await self._js.add_stream(config)
            log.info("created JetStream stream %s for %s", options.stream, subjects[0])
            return
        window = info.config.duplicate_window or 0
        if abs(window - options.dedup_window) > 1e-3:
            log.warning(
                "stream %s dedups within %.0fs (not the %.0fs asked for)", options.stream, window, options.dedup_window
            )

    async def publish(self, messages: Sequence[Message]) -> list[Result]:
        js = self._js
        if js is None:
            raise SinkUnavailable(f"{self.name}: not connected")
        if not self._nc.is_connected:  # the client is reconnecting by itself meanwhile
            return [SinkUnavailable(f"{self.name}: disconnected, reconnecting")] * len(messages)
        pending: list[asyncio.Future[Any] | Result] = []
        for message in messages:
            headers = {"Nats-Msg-Id": message.change.id, "Content-Type": message.content_type}
            try:
                pending.append(await js.publish_async(message.subject, message.payload, headers=headers))
            except nats.errors.MaxPayloadError:
                limit = self._nc.max_payload
                pending.append(rejected(self.name, message, f"larger than the server's max_payload ({limit} bytes)"))
            except Exception as exc:
                pending.append(unavailable(self.name, exc, self._scrub))
        await self._acks([f for f in pending if isinstance(f, asyncio.Future)])
        return [self._result(message, item) for message, item in zip(messages, pending, strict=True)]

    async def _acks(self, futures: list[asyncio.Future[Any]]) -> None:
        """Wait for the PubAcks: all of them, ``ack_timeout`` at most, or until the connection drops. First for
        the last one sent only (PubAcks come back in the order sent, so that is usually all of them, for one
        callback instead of one per future), then for whatever is still unanswered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.ack_timeout
        waiting = futures[-1:]
        while waiting:
            left = deadline - loop.time()
            if left <= 0 or not self._nc.is_connected:
                return
            await asyncio.wait(waiting, timeout=min(left, ACK_CHECK_SECONDS))
            waiting = [f for f in futures if not f.done()]

    def _result(self, message: Message, item: asyncio.Future[Any] | Result) -> Result:
        if not isinstance(item, asyncio.Future):
            return item
        if not item.done():
            item.cancel()
            connected = "no PubAck within" if self._nc.is_connected else "connection lost waiting"
            return SinkUnavailable(f"{self.name}: {connected} {self.options.ack_timeout}s for the PubAck")
        exc = item.exception()
        if exc is None:
            return None
        if isinstance(exc, nats.js.errors.APIError) and exc.code in _PERMANENT_CODES:
            return rejected(self.name, message, self._scrub(f"{exc.description} (JetStream error {exc.err_code})"))
        return unavailable(self.name, exc, self._scrub)

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            try:
                await nc.close()
            except Exception as exc:
                log.debug("closing %s: %s", self.name, self._scrub(str(exc)))
