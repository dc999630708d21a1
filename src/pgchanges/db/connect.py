"""Opening connections with clear, password-free errors, without blocking the event loop.

Ordinary queries (install, metadata, fetching spilled payloads) use psycopg's synchronous ``Connection``
through :func:`anyio.to_thread.run_sync`: psycopg's ``AsyncConnection`` only runs on asyncio, and the thread
hop is paid per query or batch, not per change.

Every connection is opened with TCP liveness settings (:data:`LIVENESS`), so that a peer that vanished
without a word (a partition, a host that died: no RST, nothing refused) is noticed within
:data:`DEAD_PEER_SECONDS` (30 s), whatever the connection was doing. On Linux (``tcp_user_timeout`` needs
libpq 12 and a kernel that has ``TCP_USER_TIMEOUT``):

* idle (``LISTEN``, between polls) or waiting for the answer to a request the server had acknowledged: nothing
  is unacknowledged, so only keepalives can notice. A probe goes out after ``keepalives_idle`` (10 s) of
  silence, then every ``keepalives_interval`` (5 s); the kernel drops the connection at the first probe that
  goes unanswered ``tcp_user_timeout`` (15 s) after the last packet received: **15 s**.
* having sent data that is not acknowledged (a query sent into the partition, a replication status update):
  keepalives are not sent while data is in flight, and retransmissions alone would go on for about 15 minutes
  (``net.ipv4.tcp_retries2``); ``tcp_user_timeout`` drops the connection 15 s after the oldest unacknowledged
  send. That send comes at most 15 s after the last packet received (else the connection was dropped
  already), so at worst **30 s** after the partition began.

Without ``TCP_USER_TIMEOUT`` (other systems), an idle connection is dropped after ``keepalives_count``
unanswered probes (10 + 3 * 5 = 25 s), and one with unacknowledged data only when the system gives up.

The dropped connection fails the call that waits on it (``psycopg.OperationalError``), and its owner opens a
new one. Values given in the DSN (or ``PGCONNECT_TIMEOUT``) are kept: the defaults only fill what is missing
libpq ignores these settings on Unix-domain sockets.

Every connection also checks that the server's version is one pgchanges supports
(:mod:`pgchanges.db.server_version`), so an old server is a clear error at the first connection, not a
syntax error somewhere later.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from pgchanges import conninfo as ci
from pgchanges.db.server_version import require_supported
from pgchanges.errors import ConnectError, PermissionDenied

CONNECT_TIMEOUT_SECONDS = 10
KEEPALIVES_IDLE_SECONDS = 10
KEEPALIVES_INTERVAL_SECONDS = 5
KEEPALIVES_COUNT = 3
TCP_USER_TIMEOUT_MS = 15_000
#: libpq parameters every connection gets unless its conninfo names them (tcp_user_timeout needs libpq 12).
LIVENESS: dict[str, str] = {
    "keepalives": "1",
    "keepalives_idle": str(KEEPALIVES_IDLE_SECONDS),
    "keepalives_interval": str(KEEPALIVES_INTERVAL_SECONDS),
    "keepalives_count": str(KEEPALIVES_COUNT),
    **({"tcp_user_timeout": str(TCP_USER_TIMEOUT_MS)} if psycopg.pq.version() >= 120000 else {}),
}
#: How long after a peer vanished its connection fails, at most (Linux; see the module doc): the user timeout
#: runs from the oldest unacknowledged send, which comes within one user timeout of the last packet received.
DEAD_PEER_SECONDS = 2 * TCP_USER_TIMEOUT_MS / 1000


def connection_defaults(conninfo: str, given: dict[str, Any] | None = None) -> dict[str, str]:
    """The liveness settings and connect timeout that neither ``conninfo`` nor ``given`` (keywords) set."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        params = {}  # connecting reports the bad conninfo
    named = {*params, *(given or {})}
    defaults = {k: v for k, v in LIVENESS.items() if k not in named}
    if "connect_timeout" not in named and not os.environ.get("PGCONNECT_TIMEOUT"):
        defaults["connect_timeout"] = str(CONNECT_TIMEOUT_SECONDS)
    return defaults


def connect(conninfo: str, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[TupleRow]:
    """Open a connection; failures become :class:`ConnectError` with a one-line, password-free message."""
    params: dict[str, Any] = {**connection_defaults(conninfo, kwargs), **kwargs}
    try:
        conn = psycopg.Connection.connect(conninfo, autocommit=autocommit, **params)
    except pg_errors.InsufficientPrivilege as exc:
        raise PermissionDenied(ci.describe_error(exc, conninfo)) from None
    except psycopg.Error as exc:
        where = ci.redact(conninfo)
        raise ConnectError(f"cannot connect to PostgreSQL ({where}): {ci.describe_error(exc, conninfo)}") from None
    try:
        require_supported(conn)
    except BaseException:
        conn.close()
        raise
    return conn


async def connect_async(conninfo: str, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[TupleRow]:
    """:func:`connect` in a worker thread, so trio and asyncio keep running meanwhile."""

    def _open() -> psycopg.Connection[TupleRow]:
        return connect(conninfo, autocommit=autocommit, **kwargs)

    return await anyio.to_thread.run_sync(_open, abandon_on_cancel=True)


async def close_async(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None and not conn.closed:
        await anyio.to_thread.run_sync(conn.close)
