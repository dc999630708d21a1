"""The options of each sink, typed and checked when ``app.forward(...)`` is called (no client library needed).

``app.forward("orders", to="nats://localhost:4222", stream="ORDERS", dedup_window=600)`` turns the keyword
options into a :class:`NatsOptions`; a misspelt one is a ConfigError listing the valid ones, as for sources.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pgchanges.errors import ConfigError
from pgchanges.sources.options import checked_options

DEFAULT_WINDOW = 1000


@dataclass(frozen=True)
class NatsOptions:
    """``stream`` is created when missing, with ``dedup_window`` seconds of JetStream dedup by ``Nats-Msg-Id``
    (a change published again later than that after its first publish is stored again)."""

    stream: str = "PGCHANGES"
    dedup_window: float = 120.0
    ack_timeout: float = 10.0
    create_stream: bool = True
    subject: str = "pgchanges.{schema}.{table}"


@dataclass(frozen=True)
class RedisOptions:
    """``maxlen``: trim each stream to about that many entries (``MAXLEN ~``); ``dedup_size``: how many change ids
    per stream the dedup set keeps (a change published again after more entries than that is stored again)."""

    maxlen: int | None = None
    dedup_size: int = 100_000
    timeout: float = 10.0
    subject: str = "pgchanges:{schema}.{table}"

    def __post_init__(self) -> None:
        if self.dedup_size < 1:
            raise ConfigError(f"dedup_size must be at least 1, not {self.dedup_size}")


@dataclass(frozen=True)
class AmqpOptions:
    """``exchange``: a durable topic exchange (declared when missing); the routing key comes from ``subject``."""

    exchange: str = "pgchanges"
    confirm_timeout: float = 10.0
    subject: str = "{schema}.{table}.{op}"


@dataclass(frozen=True)
class WebhookOptions:
    """POSTs of JSON arrays of at most ``batch_size`` changes, ``concurrency`` at a time; ``secret`` signs each body
    (HMAC-SHA256); ``linger``: after a batch smaller than ``batch_size``, wait that long before the next."""

    secret: str | None = field(default=None, repr=False)
    batch_size: int = 100
    linger: float = 0.0
    timeout: float = 10.0
    concurrency: int = 4
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    subject: str = "{schema}.{table}"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.concurrency < 1:
            raise ConfigError("batch_size and concurrency must be at least 1")


SinkOptions = NatsOptions | RedisOptions | AmqpOptions | WebhookOptions
KINDS: dict[str, type[SinkOptions]] = {
    "nats": NatsOptions,
    "redis": RedisOptions,
    "rediss": RedisOptions,
    "amqp": AmqpOptions,
    "amqps": AmqpOptions,
    "http": WebhookOptions,
    "https": WebhookOptions,
}


def scheme_of(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in KINDS:
        raise ConfigError(
            f"cannot forward to {scheme + '://…' if scheme else repr(url)}: use nats://, redis://, amqp://, "
            "http:// or https://"
        )
    return scheme


def sink_options(url: str, given: Mapping[str, Any]) -> SinkOptions:
    """The options of the sink for ``url``; unknown ones are a ConfigError naming the valid ones."""
    scheme = scheme_of(url)
    return checked_options(KINDS[scheme], given, f"a {scheme} sink", none_is_default=True)
