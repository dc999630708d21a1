"""Webhooks (``http://…``, ``https://…``) through httpx, which runs on trio and asyncio alike.

A window is cut into POSTs of at most ``batch_size`` changes, ``concurrency`` of them at a time. Each body is
a JSON array of the changes' payloads, with headers ``Content-Type: application/json``, ``Idempotency-Key``
(a digest of the change ids it holds: the same batch sent again carries the same key) and, when a ``secret``
is given, ``X-Pgchanges-Signature: sha256=<hex>``, the HMAC-SHA256 of the body with that secret. A 2xx
answer confirms every change of the POST; 429, 5xx, a timeout or a refused connection is tried again with
backoff and jitter; any other 4xx is a permanent failure of that POST's changes (the answer's status and the
start of its body say why).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import anyio
import httpx

from pgchanges._version import __version__
from pgchanges.errors import SinkUnavailable
from pgchanges.sinks.base import Message, Result, Scrubber, redact_url, rejected, unavailable, url_secrets
from pgchanges.sinks.options import WebhookOptions
from pgchanges.sinks.templates import Template

SIGNATURE_HEADER = "X-Pgchanges-Signature"


def idempotency_key(messages: Sequence[Message]) -> str:
    """The same for the same changes: a digest of their ids (the id itself for a single change)."""
    if len(messages) == 1:
        return messages[0].change.id
    return hashlib.sha256("\n".join(m.change.id for m in messages).encode()).hexdigest()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSink:
    """POSTs batches of changes to one URL."""

    asyncio_only = False

    def __init__(self, url: str, options: WebhookOptions) -> None:
        self._url = url
        self.options = options
        self.name = redact_url(url)
        self._scrub = Scrubber([*url_secrets(url), options.secret, *options.headers.values()])
        self.template = Template(options.subject)
        self.linger = options.linger
        self.batch_size = options.batch_size
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        await self.close()
        headers = {"User-Agent": f"pgchanges/{__version__}", **self.options.headers}
        self._client = httpx.AsyncClient(headers=headers, timeout=self.options.timeout)

    async def publish(self, messages: Sequence[Message]) -> list[Result]:
        size = self.options.batch_size
        results: list[Result] = [None] * len(messages)
        limiter = anyio.CapacityLimiter(self.options.concurrency)

        async def post(start: int) -> None:
            async with limiter:
                chunk = messages[start : start + size]
                outcome = await self._post(chunk)
                results[start : start + len(chunk)] = outcome

        async with anyio.create_task_group() as tg:
            for start in range(0, len(messages), size):
                tg.start_soon(post, start)
        return results

    async def _post(self, chunk: Sequence[Message]) -> list[Result]:
        assert self._client is not None
        body = b"[" + b",".join(m.payload for m in chunk) + b"]"
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key(chunk)}
        if self.options.secret:
            headers[SIGNATURE_HEADER] = signature(self.options.secret, body)
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return [unavailable(self.name, exc, self._scrub)] * len(chunk)
        status = response.status_code
        if 200 <= status < 300:
            return [None] * len(chunk)
        why = self._scrub(f"HTTP {status} {response.reason_phrase}: {response.text[:200]}")
        if status == 429 or status >= 500:
            return [SinkUnavailable(f"{self.name}: {why}")] * len(chunk)
        return [rejected(self.name, m, why) for m in chunk]

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
