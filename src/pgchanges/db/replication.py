"""A logical replication connection (``replication=database``) driven through anyio on trio and asyncio.

psycopg's ``pq`` layer speaks the streaming replication protocol: a replication command returns COPY_BOTH;
``get_copy_data(1)`` yields XLogData (``w``) and primary keepalive (``k``) messages without blocking, and
standby status updates (``r``) go back with ``put_copy_data``. We wait for the socket with
:func:`anyio.wait_readable`, as the LISTEN connection does.
"""

from __future__ import annotations

import re
import select
import struct
import time
from dataclasses import dataclass
from typing import Any

import anyio
import psycopg
from psycopg import pq, sql

from pgchanges.db.connect import close_async, connect_async
from pgchanges.db.waiting import receive_input
from pgchanges.errors import CaptureError, ConfigError, ReplicationLost
from pgchanges.pgoutput import PG_EPOCH, lsn_to_str

SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")
_XLOG_DATA = ord("w")
#: where an XLogData message's pgoutput payload starts: after "w", WAL start, WAL end and the send time
PAYLOAD_START = 1 + struct.calcsize("!QQq")
_KEEPALIVE = struct.Struct("!QqB")
_STATUS = struct.Struct("!cQQQqB")


@dataclass(frozen=True, slots=True)
class Keepalive:
    wal_end: int
    reply_requested: bool


#: What :meth:`ReplicationStream.read` gives: each XLogData message as it came, its pgoutput payload starting at
#: :data:`PAYLOAD_START` (the header before it, WAL start and end and the send time, is not needed: pgoutput's
#: Begin and Commit carry the positions), and the primary keepalives. A message is neither wrapped in an object
#: nor sliced: each cost about a tenth of a no-op consumer's time per change (bench/results/peers.md).
StreamMessage = memoryview | Keepalive


def check_slot_name(name: str) -> str:
    if not SLOT_NAME.match(name):
        raise ConfigError(f"replication slot name {name!r} may only hold a-z, 0-9 and _ (at most 63)")
    return name


#: A read takes what is in the socket too, up to about this many messages (a full batch, not one recv's worth).
READ_AT_MOST = 1000


def _readable_now(pgconn: Any) -> bool:
    try:
        return bool(select.select([pgconn.socket], [], [], 0)[0])
    except (OSError, ValueError, psycopg.OperationalError):
        return False


class ReplicationStream:
    """One replication connection streaming pgoutput from a slot."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn: psycopg.Connection[Any] | None = None
        self.streaming = False  # START_REPLICATION went through: status updates may be sent

    async def open(self) -> None:
        self.streaming = False
        self._conn = await connect_async(psycopg.conninfo.make_conninfo(self._conninfo, replication="database"))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        self.streaming = False
        await close_async(conn)

    @property
    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            raise ReplicationLost("replication connection is not open")
        return self._conn

    async def create_temporary_slot(self, slot: str) -> None:
        """A slot that lives as long as this connection (for `tail` without --slot)."""
        statement = sql.SQL("CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput").format(
            sql.Identifier(check_slot_name(slot))
        )
        await anyio.to_thread.run_sync(self.connection.execute, statement)

    async def create_slot_with_snapshot(self, slot: str, *, temporary: bool) -> tuple[str, str]:
        """Create ``slot`` and export a snapshot of its start point; returns (consistent point, snapshot name).

        The snapshot stays usable (``SET TRANSACTION SNAPSHOT``) until this connection runs another command.
        """
        statement = sql.SQL("CREATE_REPLICATION_SLOT {} {} LOGICAL pgoutput (SNAPSHOT 'export')").format(
            sql.Identifier(check_slot_name(slot)), sql.SQL("TEMPORARY" if temporary else "")
        )

        def create() -> tuple[str, str]:
            row = self.connection.execute(statement).fetchone()
            if row is None:
                raise ReplicationLost("CREATE_REPLICATION_SLOT returned nothing")
            return str(row[1]), str(row[2])

        return await anyio.to_thread.run_sync(create)

    async def start(self, slot: str, publications: list[str], start_lsn: int = 0, *, messages: bool = True) -> None:
        """START_REPLICATION from ``start_lsn`` (0: the slot's confirmed position)."""
        conn = self.connection
        names = ",".join(sql.Identifier(p).as_string(conn) for p in publications)
        statement = sql.SQL(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '2', publication_names {}, messages {})"
        ).format(
            sql.Identifier(check_slot_name(slot)),
            sql.SQL(lsn_to_str(start_lsn)),
            sql.Literal(names),
            sql.Literal("true" if messages else "false"),
        )
        pgconn = conn.pgconn
        pgconn.send_query(statement.as_bytes(conn))
        while pgconn.is_busy():
            await receive_input(pgconn, ReplicationLost, "replication connection lost")
        result = pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            message = result.error_message.decode(errors="replace").strip() if result is not None else ""
            raise CaptureError(f"cannot start replication from slot {slot}: {message or 'no result'}")
        self.streaming = True

    async def read(self) -> list[StreamMessage]:
        """Wait for and return every replication message available now."""
        pgconn = self.connection.pgconn
        out: list[StreamMessage] = []
        while True:
            try:
                size, data = pgconn.get_copy_data(1)
            except psycopg.OperationalError as exc:
                raise ReplicationLost(str(exc).strip() or "replication connection lost") from exc
            if size > 0:
                out.append(data if data[0] == _XLOG_DATA else _parse_other(data))
                continue
            if size == -1:
                raise ReplicationLost("the server ended the replication stream")
            if size == -2:
                raise ReplicationLost(pgconn.get_error_message().strip())
            if out and (len(out) >= READ_AT_MOST or not _readable_now(pgconn)):
                return out
            if out:  # more is waiting in the socket: take it into this read (one wake-up, one batch)
                pgconn.consume_input()
                continue
            await receive_input(pgconn, ReplicationLost, "replication connection lost")

    def send_status(self, flushed_lsn: int, *, reply: bool = False) -> None:
        """Tell the server everything up to ``flushed_lsn`` is processed (the slot may advance to it)."""
        now = int((time.time() - PG_EPOCH.timestamp()) * 1_000_000)
        message = _STATUS.pack(b"r", flushed_lsn, flushed_lsn, flushed_lsn, now, int(reply))
        pgconn = self.connection.pgconn
        try:
            pgconn.put_copy_data(message)
            pgconn.flush()
        except psycopg.OperationalError as exc:
            raise ReplicationLost(str(exc).strip() or "replication connection lost") from exc


def _parse_other(data: memoryview) -> Keepalive:
    kind = bytes(data[:1])
    if kind == b"k":
        end, _sent, reply = _KEEPALIVE.unpack_from(data, 1)
        return Keepalive(end, bool(reply))
    raise ReplicationLost(f"unexpected replication message {kind!r}")
