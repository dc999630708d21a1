"""Builds the source a user named (``source="notify"``, …) from a conninfo, the tables wanted and its options."""

from __future__ import annotations

from collections.abc import Sequence

from pgchanges.names import TableName
from pgchanges.sources.base import Source
from pgchanges.sources.options import (
    SOURCES,
    LogicalOptions,
    NotifyOptions,
    OutboxOptions,
    PollingOptions,
    SourceOptions,
)

__all__ = ["SOURCES", "make_source"]


def make_source(
    conninfo: str,
    tables: Sequence[TableName],
    options: SourceOptions,
    *,
    channels: Sequence[str] = (),
    auto_install: bool = True,
    ddl: bool = False,
    whole_transactions: bool = False,
) -> Source:
    """The source for ``options`` (their type names the source); sources load on demand."""
    if isinstance(options, NotifyOptions):
        from pgchanges.sources.notify import NotifySource  # noqa: PLC0415

        return NotifySource(conninfo, tables, channels, options, auto_install=auto_install, ddl=ddl)
    if isinstance(options, OutboxOptions):
        from pgchanges.sources.outbox import OutboxSource  # noqa: PLC0415

        return OutboxSource(conninfo, tables, channels, options, auto_install=auto_install)
    if isinstance(options, LogicalOptions):
        from pgchanges.sources.logical import LogicalSource  # noqa: PLC0415

        return LogicalSource(
            conninfo, tables, channels, options, auto_install=auto_install, whole_transactions=whole_transactions
        )
    assert isinstance(options, PollingOptions)
    from pgchanges.sources.polling import PollingSource  # noqa: PLC0415

    return PollingSource(conninfo, tables, channels, options, auto_install=auto_install)
