"""One ordinary connection, used from worker threads without blocking the event loop (trio or asyncio).

psycopg's ``AsyncConnection`` runs on asyncio only, so ordinary queries go through the synchronous
``Connection`` in a worker thread: ``await conn.call(func, *args)`` runs ``func(connection, *args)`` there.
Sources pay that hop per batch, not per change, by putting a batch's statements into one ``func``.

A call cancelled meanwhile (a stop, a timeout) also cancels its statement on the server, so the connection is
usable again at once; a connection that broke is opened again by :meth:`ThreadedConnection.reopen`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import psycopg

from pgchanges.db.connect import close_async, connect_async
from pgchanges.errors import ConnectError

T = TypeVar("T")
Setup = Callable[[psycopg.Connection[Any]], None]


class ThreadedConnection:
    """A connection to ``conninfo``; ``setup`` runs on every (re)opened connection, in its thread."""

    def __init__(self, conninfo: str, *, autocommit: bool = True, setup: Setup | None = None, what: str = "") -> None:
        self._conninfo = conninfo
        self._autocommit = autocommit
        self._setup = setup
        self._what = what or "the connection"
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def connection(self) -> psycopg.Connection[Any] | None:
        return self._conn

    @property
    def usable(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.closed and not conn.broken

    async def open(self) -> None:
        conn = await connect_async(self._conninfo, autocommit=self._autocommit)
        if self._setup is not None:
            try:
                await anyio.to_thread.run_sync(self._setup, conn)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await close_async(conn)
                raise
        self._conn = conn

    async def reopen(self) -> None:
        """Close the connection (whatever its state) and open a new one."""
        await self.close()
        await self.open()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        await close_async(conn)

    async def call(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(connection, *args)`` in a worker thread; if cancelled, cancel the statement on the server."""
        conn = self._conn
        if conn is None or conn.closed:
            raise ConnectError(f"{self._what} is closed")
        try:
            return await anyio.to_thread.run_sync(func, conn, *args, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe(timeout=2.0)
            raise

    async def call_reopening(self, func: Callable[..., T], *args: Any) -> T:
        """:meth:`call`, opening the connection again once first if it broke, or if the call lost it."""
        for attempt in (1, 2):
            if not self.usable:
                await self.reopen()
            try:
                return await self.call(func, *args)
            except psycopg.OperationalError:
                if attempt == 2 or self.usable:
                    raise
        raise AssertionError("unreachable")
