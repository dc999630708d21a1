"""Waiting for input on a psycopg ``pq`` connection through anyio, so the same code runs on trio and asyncio."""

from __future__ import annotations

import anyio
import psycopg
from psycopg import pq


async def receive_input(pgconn: pq.abc.PGconn, lost: type[Exception], what: str) -> None:
    """Wait until the socket is readable and let libpq read it; a broken connection raises ``lost``."""
    try:
        await anyio.wait_readable(pgconn.socket)
        pgconn.consume_input()
    except (psycopg.OperationalError, OSError) as exc:
        raise lost(str(exc).strip() or what) from exc
