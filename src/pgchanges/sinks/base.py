"""The sink contract: what a broker or webhook client offers the forwarder, and what every sink shares.

A sink takes a *window* of messages (at most one per row: the forwarder keeps each row's changes in commit
order by never having two of them in flight at once) and returns, once the broker answered for every one, one
result per message: ``None`` (the broker confirmed it: a JetStream PubAck, a Redis reply, an AMQP confirm, a
2xx), :class:`~pgchanges.errors.SinkUnavailable` (not now: the forwarder tries it again with backoff) or
:class:`~pgchanges.errors.SinkRejected` (never: a failure of that change). Throughput comes from the window
being in flight at once, never from answering before the broker did.

A sink whose client library runs only on asyncio says so (``asyncio_only``); the forwarder then runs it
through a :class:`~pgchanges.sinks.bridge.Bridge`. A new broker (Kafka, once one can run here) is one more
module with a class like these: ``open``, ``publish``, ``close``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol
from urllib.parse import urlsplit, urlunsplit

from pgchanges.change import Change
from pgchanges.errors import SinkRejected, SinkUnavailable
from pgchanges.sinks.templates import Template

Result = SinkRejected | SinkUnavailable | None


class Message(NamedTuple):
    """One change as a sink sends it: where to (``subject``: a NATS subject, Redis stream, routing key), the
    bytes, and their content type. ``change.id`` is the message id everywhere (dedup, idempotency). A NamedTuple,
    not a frozen dataclass: one is made per change, and a frozen dataclass sets each field through
    ``object.__setattr__``."""

    change: Change
    subject: str
    payload: bytes
    content_type: str


class Sink(Protocol):
    """A broker or webhook the forwarder publishes to."""

    #: The sink's URL without its password (for logs and errors).
    name: str
    #: Whether the client runs only on asyncio (then, under trio, it runs in an asyncio loop of its own).
    asyncio_only: bool
    #: Where each change goes (subject, stream, routing key), with the sink's own cleaning of values.
    template: Template

    async def open(self) -> None:
        """Connect (and create the stream or exchange when missing); a failure is SinkUnavailable."""

    async def publish(self, messages: Sequence[Message]) -> list[Result]:
        """Send every message at once and wait for the broker's answer to each; one result per message."""

    async def close(self) -> None: ...


def redact_url(url: str) -> str:
    """``url`` with its password (and query string, which may carry tokens) left out."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that must never be shown: its password and its query string."""
    parts = urlsplit(url)
    return [s for s in (parts.password, parts.query) if s]


class Scrubber:
    """Hides secrets (passwords, the webhook secret) in text that came from a client library."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _USERINFO.sub(r"\1***@", " ".join(text.split()))


_USERINFO = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def describe(exc: BaseException, scrub: Scrubber) -> str:
    """A one-line, secret-free description of what a client raised."""
    return scrub(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def unavailable(sink: str, exc: BaseException, scrub: Scrubber) -> SinkUnavailable:
    return SinkUnavailable(f"{sink}: {describe(exc, scrub)}")


def rejected(sink: str, message: Message, reason: str) -> SinkRejected:
    change = message.change
    return SinkRejected(
        f"{sink} rejected change {change.id} ({change.op} {change.qualified_table}, {len(message.payload)} bytes): "
        f"{reason}"
    )
