"""The transaction an outbox handler declared with ``transaction=True`` runs in (``pgchanges.Transaction``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg


class Transaction:
    """The transaction a handler runs in: its writes commit together with the event's acknowledgement.

    Sync handlers (which run in a worker thread) may use ``tx.connection`` directly; async handlers use
    ``await tx.execute(...)``. The handlers of one change run inside one savepoint: if one raises, the change's
    writes are rolled back and the change is retried.
    """

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection

    async def execute(self, statement: Any, params: Any = None) -> list[tuple[Any, ...]]:
        """Run ``statement`` in the transaction; returns its rows (empty for statements without any)."""

        def run() -> list[tuple[Any, ...]]:
            cursor = self.connection.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

        return await anyio.to_thread.run_sync(run)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(self.connection.execute, "SAVEPOINT pgchanges_handler")
        try:
            yield
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.connection.execute, "ROLLBACK TO SAVEPOINT pgchanges_handler")
            raise
        await anyio.to_thread.run_sync(self.connection.execute, "RELEASE SAVEPOINT pgchanges_handler")
