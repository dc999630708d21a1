"""A dedicated LISTEN connection, read through anyio so the same code runs on trio and asyncio.

psycopg's ``AsyncConnection`` is asyncio-only, but its ``pq`` layer is runtime-neutral: we wait for the
socket with :func:`anyio.wait_readable`, then ``consume_input()`` and drain ``notifies()``. No thread per
wait. Notifications that arrive while psycopg itself runs a command on this connection (LISTEN, UNLISTEN)
reach us through psycopg's notify handler, so none is dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import psycopg
from psycopg import sql

from pgchanges.db.connect import close_async, connect_async
from pgchanges.db.waiting import receive_input
from pgchanges.errors import ConnectionLost


@dataclass(frozen=True, slots=True)
class Notification:
    """One NOTIFY as received: channel, payload text, and the sending backend's pid."""

    channel: str
    payload: str
    pid: int


class Listener:
    """Owns one connection that LISTENs on a fixed set of channels."""

    def __init__(self, conninfo: str, channels: Iterable[str]) -> None:
        self._conninfo = conninfo
        self._channels = list(dict.fromkeys(channels))
        self._conn: psycopg.Connection[Any] | None = None
        self._backlog: deque[Notification] = deque()

    @property
    def backend_pid(self) -> int | None:
        return None if self._conn is None else self._conn.info.backend_pid

    async def open(self) -> None:
        """Connect and LISTEN on every channel; raises :class:`~pgchanges.errors.ConnectError` on failure."""
        conn = await connect_async(self._conninfo)
        conn.add_notify_handler(self._on_notify_during_command)
        if self._channels:
            statement = sql.SQL("; ").join(
                sql.SQL("LISTEN {}").format(sql.Identifier(channel)) for channel in self._channels
            )
            await anyio.to_thread.run_sync(conn.execute, statement)
        self._conn = conn

    def _on_notify_during_command(self, notify: psycopg.Notify) -> None:
        self._backlog.append(Notification(notify.channel, notify.payload, notify.pid))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        await close_async(conn)

    async def reopen(self) -> None:
        """Close the connection (whatever its state) and LISTEN on a new one."""
        await self.close()
        await self.open()

    async def receive(self) -> list[Notification]:
        """Wait for at least one notification and return all that have arrived, in order."""
        conn = self._conn
        if conn is None:
            raise ConnectionLost("listener is not connected")
        pgconn = conn.pgconn
        out: list[Notification] = []
        if self._backlog:
            out.extend(self._backlog)
            self._backlog.clear()
        while True:
            notify = pgconn.notifies()
            while notify is not None:
                out.append(Notification(notify.relname.decode(), notify.extra.decode(), notify.be_pid))
                notify = pgconn.notifies()
            if out:
                return out
            await receive_input(pgconn, ConnectionLost, "connection closed")
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise ConnectionLost("connection closed by the server")
