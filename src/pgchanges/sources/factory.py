"""Builds the source a user named (``source="notify"``, …) from a conninfo and the tables wanted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pgchanges.errors import ConfigError
from pgchanges.names import TableName
from pgchanges.sources.base import Source

SOURCES = ("notify", "outbox", "logical", "polling")


def make_source(
    kind: str, conninfo: str, tables: Sequence[TableName], channels: Sequence[str] = (), **options: Any
) -> Source:
    if kind == "notify":
        from pgchanges.sources.notify import NotifySource  # noqa: PLC0415 - sources load on demand

        return NotifySource(conninfo, tables, channels, **options)
    if kind == "outbox":
        from pgchanges.sources.outbox import OutboxSource  # noqa: PLC0415

        return OutboxSource(conninfo, tables, channels, **options)
    if kind == "logical":
        from pgchanges.sources.logical import LogicalSource  # noqa: PLC0415

        return LogicalSource(conninfo, tables, channels, **options)
    if kind == "polling":
        from pgchanges.sources.polling import PollingSource  # noqa: PLC0415

        return PollingSource(conninfo, tables, channels, **options)
    raise ConfigError(f"unknown source {kind!r}; available: {', '.join(SOURCES)}")
