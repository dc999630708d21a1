"""Opening connections with clear, password-free errors, without blocking the event loop.

Ordinary queries (install, metadata, fetching spilled payloads) use psycopg's synchronous ``Connection``
through :func:`anyio.to_thread.run_sync`: psycopg's ``AsyncConnection`` only runs on asyncio, and the thread
hop is paid per query or batch, not per change.
"""

from __future__ import annotations

from typing import Any

import anyio
import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import TupleRow

from pgchanges import conninfo as ci
from pgchanges.errors import ConnectError, PermissionDenied

CONNECT_TIMEOUT_SECONDS = 10


def connect(conninfo: str, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[TupleRow]:
    """Open a connection; failures become :class:`ConnectError` with a one-line, password-free message."""
    try:
        return psycopg.Connection.connect(
            conninfo, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_SECONDS, **kwargs
        )
    except pg_errors.InsufficientPrivilege as exc:
        raise PermissionDenied(ci.describe_error(exc, conninfo)) from None
    except psycopg.Error as exc:
        where = ci.redact(conninfo)
        raise ConnectError(f"cannot connect to PostgreSQL ({where}): {ci.describe_error(exc, conninfo)}") from None


async def connect_async(conninfo: str, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[TupleRow]:
    """:func:`connect` in a worker thread, so trio and asyncio keep running meanwhile."""

    def _open() -> psycopg.Connection[TupleRow]:
        return connect(conninfo, autocommit=autocommit, **kwargs)

    return await anyio.to_thread.run_sync(_open, abandon_on_cancel=True)


async def close_async(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None and not conn.closed:
        await anyio.to_thread.run_sync(conn.close)
