"""Keeps capture in step with the schema where no DDL event trigger does: ``follow_all_v1()`` on a timer.

With the event triggers of ``pgchanges install --ddl``, a table created, renamed or recreated is captured in the
DDL's own transaction, and this loop has nothing to do. Without them (they need a superuser), a consumer calls
``pgchanges.follow_all_v1()`` every ``interval`` seconds: a new table that matches a pattern is captured from
then on, and rows written to it before that are not captured (the log says when a table was picked up late).
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import psycopg

from pgchanges.capture import ddl
from pgchanges.capture import install as capture
from pgchanges.capture.queries import fetch_all
from pgchanges.db.connect import close_async, connect_async
from pgchanges.errors import ConnectError

log = logging.getLogger("pgchanges.follow")


async def follow_schema(conninfo: str, interval: float) -> None:
    """Run until cancelled: follow the schema every ``interval`` seconds unless the event trigger does it."""
    conn: psycopg.Connection[Any] | None = None
    warned = False
    try:
        while True:
            await anyio.sleep(interval)
            try:
                if conn is None or conn.closed or conn.broken:
                    await close_async(conn)
                    conn = await connect_async(conninfo)
                names = await anyio.to_thread.run_sync(_follow_once, conn, abandon_on_cancel=True)
            except psycopg.errors.InsufficientPrivilege as exc:
                if not warned:
                    log.warning("cannot follow schema changes with this role: %s", " ".join(str(exc).split()))
                    warned = True
                continue
            except (psycopg.OperationalError, ConnectError) as exc:
                log.debug("schema follow skipped: %s", exc)
                continue
            if names:
                log.warning(
                    "now capturing changes of %s (picked up by the periodic follow: rows written before now were "
                    "not captured; `pgchanges install --ddl` captures new tables at once)",
                    ", ".join(names),
                )
    finally:
        with anyio.CancelScope(shield=True):
            await close_async(conn)


def _follow_once(conn: psycopg.Connection[Any]) -> list[str]:
    if not capture.schema_installed(conn) or ddl.ddl_installed(conn):
        return []
    with conn.transaction():
        oids = capture.follow_all(conn)
        if not oids:
            return []
        rows = fetch_all(conn, "captured_table_names", {"table_oids": oids})
    return sorted(str(r.qualified_name) for r in rows)
