"""The polling source's two connections (a REPEATABLE READ reader, an autocommit writer for watermarks), held
in one place so that nothing keeps one that was replaced or lost."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import psycopg

from pgchanges.db.connect import close_async, connect_async
from pgchanges.errors import ConnectError


class PollingConnections:
    """The polling source's reader and writer: the only place that holds them.

    Callers ask for the current connection at each use (:meth:`reader`, :meth:`writer`) and never keep it. A
    failure seen by anyone marks both :meth:`lost`; :attr:`usable` is then False until :meth:`open` replaced
    them, and asking for a connection raises :class:`~pgchanges.errors.ConnectError` meanwhile, so no
    statement goes to a connection known to be dead.
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._reader: psycopg.Connection[Any] | None = None
        self._writer: psycopg.Connection[Any] | None = None
        self._lost: str | None = "not open"

    @property
    def usable(self) -> bool:
        if self._lost is not None:
            return False
        for conn in (self._reader, self._writer):
            if conn is None or conn.closed or conn.broken:
                return False
        # a poll must begin its own snapshot: a reader left inside a transaction would see the same rows forever
        assert self._reader is not None
        return self._reader.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    @property
    def why_unusable(self) -> str:
        if self._lost is not None:
            return self._lost
        if self._reader is not None and self._reader.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            return "the reader was left inside a transaction"
        return "a connection is closed"

    def lost(self, why: str) -> None:
        """Nothing more goes to either connection until they are opened again."""
        if self._lost is None:
            self._lost = why

    def reader(self) -> psycopg.Connection[Any]:
        return self._current(self._reader, "reader")

    def writer(self) -> psycopg.Connection[Any]:
        return self._current(self._writer, "writer")

    def _current(self, conn: psycopg.Connection[Any] | None, which: str) -> psycopg.Connection[Any]:
        if self._lost is not None or conn is None or conn.closed:
            raise ConnectError(f"the polling {which} connection is not usable ({self._lost or 'closed'})")
        return conn

    async def open(self) -> None:
        """Close both (whatever their state) and open both again; raises the first failure."""
        await self.close()
        try:
            self._writer = await connect_async(self._conninfo)
            self._reader = await connect_async(self._conninfo, autocommit=False)
            await anyio.to_thread.run_sync(self._configure_reader, self._reader)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise
        self._lost = None

    @staticmethod
    def _configure_reader(reader: psycopg.Connection[Any]) -> None:
        reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        reader.read_only = True
        with reader.transaction():
            reader.execute("SET datestyle = 'ISO, YMD'")  # watermark text must read back the same

    async def close(self) -> None:
        self.lost("closed")
        conns, self._reader, self._writer = (self._reader, self._writer), None, None
        for conn in conns:
            with contextlib.suppress(psycopg.Error):  # closing a broken connection: nothing left to release
                await close_async(conn)
