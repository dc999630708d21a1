"""Sinks: where ``app.forward(...)`` and ``pgchanges forward`` send changes (NATS JetStream, Redis Streams,
RabbitMQ, webhooks), each through its own client library, loaded only when used.

``base`` is the contract, ``delivery`` the windows, per-row order and retries every sink shares, ``bridge``
how an asyncio-only client runs under trio, ``formats`` and ``templates`` what is sent and where to,
``options`` the typed options. One module per broker: ``nats``, ``redis``, ``amqp``, ``webhook``.
"""

from __future__ import annotations

import importlib
from typing import Any

from pgchanges.errors import ConfigError
from pgchanges.sinks.base import Sink
from pgchanges.sinks.options import SinkOptions, scheme_of

_NATS = ("nats", "NatsSink", "nats", "nats")
_REDIS = ("redis", "RedisSink", "redis", "redis")
_AMQP = ("amqp", "AmqpSink", "rabbitmq", "aio_pika")
_HTTP = ("webhook", "WebhookSink", "http", "httpx")
#: scheme -> (module, class, the extra that installs its client, the client's import name)
_SINKS = {
    "nats": _NATS,
    "redis": _REDIS,
    "rediss": _REDIS,
    "amqp": _AMQP,
    "amqps": _AMQP,
    "http": _HTTP,
    "https": _HTTP,
}


def make_sink(url: str, options: SinkOptions) -> Sink:
    """The sink for ``url`` with ``options`` (from :func:`pgchanges.sinks.options.sink_options`)."""
    scheme = scheme_of(url)
    module_name, cls_name, extra, client = _SINKS[scheme]
    try:
        importlib.import_module(client)
    except ImportError:
        raise ConfigError(f"forwarding to {scheme}:// needs {client}: pip install 'pgchanges[{extra}]'") from None
    module: Any = importlib.import_module(f"pgchanges.sinks.{module_name}")
    sink: Sink = getattr(module, cls_name)(url, options)
    return sink


__all__ = ["Sink", "make_sink"]
