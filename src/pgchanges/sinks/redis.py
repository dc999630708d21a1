"""Redis Streams (``redis://host:port/db``) through redis-py's asyncio client: XADD once per change id.

Redis 7.0 has no idempotent XADD (that came in 8.6), so each change goes through one Lua script, atomic on
the server: it looks the change id up in the stream's dedup set (a sorted set ``<stream>:pgchanges-dedup``)
and, only when it is not there, XADDs the entry (fields ``id`` and ``payload``; ``MAXLEN ~`` when asked),
records the id with the entry's time as score and trims the set to its newest ``dedup_size`` ids. A change
published again after a crash is therefore stored once, however long the outage, unless more than
``dedup_size`` other entries were added to that stream since its first publish. Stream and set are written
by one script, so they are as durable as each other (Redis' own persistence).

A window is one pipeline (no MULTI): one round trip, every reply read; a reply that is an error fails only
its own change. ``timeout`` bounds the whole window (one deadline for the pipeline), not each reply: a
``socket_timeout`` (redis-py sets one by default) makes it enter a timeout context per reply read, a quarter
of the forwarder's time on a 1,000-command window (py-spy, bench/results/forward.md). A window that runs out of
time closes the connection (its replies can no longer be matched to commands) and counts as the broker being
unavailable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio
import redis.exceptions

from pgchanges.errors import SinkUnavailable
from pgchanges.sinks.base import Message, Result, Scrubber, redact_url, rejected, unavailable, url_secrets
from pgchanges.sinks.options import RedisOptions
from pgchanges.sinks.templates import Template

DEDUP_SUFFIX = ":pgchanges-dedup"

#: KEYS: stream, dedup set. ARGV: change id, payload, MAXLEN ("" for none), how many ids the set keeps.
#: Returns {1, entry id} when added, {0, score} when the id was there already.
XADD_ONCE = """
local seen = redis.call('ZSCORE', KEYS[2], ARGV[1])
if seen then return {0, seen} end
local entry
if ARGV[3] == '' then
  entry = redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'payload', ARGV[2])
else
  entry = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'id', ARGV[1], 'payload', ARGV[2])
end
redis.call('ZADD', KEYS[2], tonumber(string.match(entry, '^(%d+)')), ARGV[1])
local keep = tonumber(ARGV[4])
if redis.call('ZCARD', KEYS[2]) > keep then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -keep - 1)
end
return {1, entry}
"""

DEFAULT_MAX_BULK = 512 * 1024 * 1024  # Redis' proto-max-bulk-len when the server does not say
#: Replies of a server that will take the message later (memory, loading, failover).
_TRANSIENT_PREFIXES = ("OOM", "LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY", "NOSCRIPT")


class RedisSink:
    """XADDs to the stream the template names, once per change id."""

    asyncio_only = True

    def __init__(self, url: str, options: RedisOptions) -> None:
        self._url = url
        self.options = options
        self.name = redact_url(url)
        self._scrub = Scrubber(url_secrets(url))
        self.template = Template(options.subject)
        self._client: Any = None
        self._sha = ""
        self._maxlen = "" if options.maxlen is None else str(options.maxlen)
        self._max_bytes = DEFAULT_MAX_BULK

    async def open(self) -> None:
        await self.close()
        timeout = self.options.timeout
        # socket_timeout=None: no timeout per reply (redis-py's default is 5 s per read), the window has one
        client = redis.asyncio.Redis.from_url(self._url, socket_timeout=None, socket_connect_timeout=timeout)
        try:
            async with asyncio.timeout(timeout):
                self._sha = await client.script_load(XADD_ONCE)
                self._max_bytes = await _max_bulk_length(client)
        except Exception as exc:
            await client.aclose()
            raise unavailable(self.name, exc, self._scrub) from None
        self._client = client

    async def publish(self, messages: Sequence[Message]) -> list[Result]:
        if self._client is None:
            raise SinkUnavailable(f"{self.name}: not connected")
        pipe = self._client.pipeline(transaction=False)
        size, maxlen = str(self.options.dedup_size), self._maxlen
        sent = [m for m in messages if len(m.payload) <= self._max_bytes]  # a larger one makes Redis drop us
        for message in sent:
            stream = message.subject
            pipe.evalsha(self._sha, 2, stream, stream + DEDUP_SUFFIX, message.change.id, message.payload, maxlen, size)
        try:
            async with asyncio.timeout(self.options.timeout):
                replies = await pipe.execute(raise_on_error=False)
        except TimeoutError:
            await self.close()
            raise SinkUnavailable(f"{self.name}: no answer within {self.options.timeout}s") from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            await self.close()
            raise unavailable(self.name, exc, self._scrub) from None
        finally:
            await pipe.reset()
        answers = iter(replies)
        results = [
            self._result(m, next(answers))
            if len(m.payload) <= self._max_bytes
            else rejected(self.name, m, f"larger than the server's proto-max-bulk-len ({self._max_bytes} bytes)")
            for m in messages
        ]
        if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
            self._sha = await self._client.script_load(XADD_ONCE)  # the server restarted without our script
        return results

    def _result(self, message: Message, reply: Any) -> Result:
        if not isinstance(reply, Exception):
            return None
        text = self._scrub(str(reply))
        if isinstance(reply, redis.exceptions.ResponseError) and not text.startswith(_TRANSIENT_PREFIXES):
            return rejected(self.name, message, text)
        return SinkUnavailable(f"{self.name}: {text}")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


async def _max_bulk_length(client: Any) -> int:
    """The largest argument the server takes (``proto-max-bulk-len``; its default when CONFIG is not allowed)."""
    try:
        found = await client.config_get("proto-max-bulk-len")
    except redis.exceptions.ResponseError:
        return DEFAULT_MAX_BULK
    value = found.get("proto-max-bulk-len") or found.get(b"proto-max-bulk-len")
    return int(value) if value else DEFAULT_MAX_BULK
