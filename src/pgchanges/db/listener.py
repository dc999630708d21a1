"""A dedicated LISTEN connection, read through anyio so the same code runs on trio and asyncio.

psycopg's ``AsyncConnection`` is asyncio-only, but its ``pq`` layer is runtime-neutral: we wait for the
socket with :func:`anyio.wait_readable`, then ``consume_input()`` and drain ``notifies()``. No thread per
wait. Notifications that arrive while psycopg itself runs a command on this connection (LISTEN, UNLISTEN)
reach us through psycopg's notify handler, so none is dropped.

:meth:`Listener.receive_raw` gives plain ``(channel, payload bytes, pid)`` tuples, which the notify source
reads in bulk: a frozen dataclass per notification cost more than taking it from libpq, and the JSON parser
takes the payload's bytes as they came. :meth:`Listener.receive` gives :class:`Notification` objects.
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


Raw = tuple[str, bytes, int]  # channel, payload (UTF-8), pid


class Listener:
    """Owns one connection that LISTENs on a fixed set of channels."""

    def __init__(self, conninfo: str, channels: Iterable[str]) -> None:
        self._conninfo = conninfo
        self._channels = list(dict.fromkeys(channels))
        self._conn: psycopg.Connection[Any] | None = None
        self._backlog: deque[Raw] = deque()
        self._decoded: dict[bytes, str] = {}  # channel names as libpq gives them → str

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
        self._backlog.append((notify.channel, notify.payload.encode(), notify.pid))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        await close_async(conn)

    async def reopen(self) -> None:
        """Close the connection (whatever its state) and LISTEN on a new one."""
        await self.close()
        await self.open()

    async def receive(self) -> list[Notification]:
        """Wait for at least one notification and return all that have arrived, in order."""
        return [Notification(channel, payload.decode(), pid) for channel, payload, pid in await self.receive_raw()]

    async def receive_raw(self) -> list[Raw]:
        """As :meth:`receive`, as ``(channel, payload, pid)`` tuples with the payload's bytes."""
        conn = self._conn
        if conn is None:
            raise ConnectionLost("listener is not connected")
        pgconn = conn.pgconn
        out: list[Raw] = []
        if self._backlog:
            out.extend(self._backlog)
            self._backlog.clear()
        channels = self._decoded
        while True:
            notify = pgconn.notifies()
            while notify is not None:
                relname = notify.relname
                channel = channels.get(relname)
                if channel is None:
                    channel = channels[relname] = relname.decode()
                out.append((channel, notify.extra, notify.be_pid))
                notify = pgconn.notifies()
            if out:
                return out
            await receive_input(pgconn, ConnectionLost, "connection closed")
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise ConnectionLost("connection closed by the server")
