"""Operating the outbox from outside a worker: status per consumer, dead letters, replay."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from pgchanges.capture.queries import query
from pgchanges.errors import ConfigError


def _outbox_installed(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('pgchanges.consumers') IS NOT NULL").fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class ConsumerStatus:
    name: str
    backlog: int
    oldest_pending_seconds: float | None
    in_flight: int
    retrying: int
    dead_letters: int
    sleeping_workers: int
    seen_at: datetime


def consumer_status(conn: psycopg.Connection[Any], consumer: str | None = None) -> list[ConsumerStatus]:
    if not _outbox_installed(conn):
        return []
    with conn.transaction(force_rollback=True):  # the in-flight count takes brief KEY SHARE locks
        rows = conn.execute(query("consumer_status"), {"consumer": consumer}).fetchall()
    return [
        ConsumerStatus(
            r[0], int(r[1]), None if r[2] is None else float(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]), r[7]
        )
        for r in rows
    ]


def format_status(rows: list[ConsumerStatus]) -> str:
    header = f"{'consumer':<20} {'backlog':>8} {'oldest':>9} {'in flight':>9} {'retrying':>8} {'dead':>6} sleeping"
    lines = [header]
    for r in rows:
        oldest = "-" if r.oldest_pending_seconds is None else f"{r.oldest_pending_seconds:.1f}s"
        lines.append(
            f"{r.name:<20} {r.backlog:>8} {oldest:>9} {r.in_flight:>9} {r.retrying:>8} {r.dead_letters:>6} "
            f"{r.sleeping_workers}"
        )
    return "\n".join(lines)


def dead_letters(conn: psycopg.Connection[Any], consumer: str | None = None) -> list[str]:
    if not _outbox_installed(conn):
        return []
    rows = conn.execute(query("dead_letters"), {"consumer": consumer}).fetchall()
    return [
        f"{r[0]} event {r[1]} ({r[7]} {r[5]}.{r[6]}) failed {r[2]}x, last at {r[4]:%Y-%m-%d %H:%M:%S}: {r[3]}"
        for r in rows
    ]


def retry_dead_letters(conn: psycopg.Connection[Any], consumer: str, ids: list[int] | None) -> list[int]:
    with conn.transaction():
        return [r[0] for r in conn.execute(query("retry_dead_letters"), {"consumer": consumer, "ids": ids})]


def drop_dead_letters(conn: psycopg.Connection[Any], consumer: str, ids: list[int] | None) -> list[int]:
    with conn.transaction():
        return [r[0] for r in conn.execute(query("drop_dead_letters"), {"consumer": consumer, "ids": ids})]


def replay(conn: psycopg.Connection[Any], consumer: str, since: str) -> int:
    """Queue again every retained event of ``consumer``'s tables from ``since`` (an event id or a time)."""
    since_id: int | None = None
    since_time: datetime | None = None
    if since.isdigit():
        since_id = int(since)
    else:
        try:
            since_time = datetime.fromisoformat(since)
        except ValueError:
            raise ConfigError(f"--since must be an event id or an ISO 8601 time, not {since!r}") from None
    if not _outbox_installed(conn):
        raise ConfigError("the outbox is not installed here (pgchanges install TABLE --source outbox)")
    exists = conn.execute("SELECT 1 FROM pgchanges.consumers WHERE name = %s", (consumer,)).fetchone()
    if exists is None:
        raise ConfigError(f"no outbox consumer named {consumer!r}")
    with conn.transaction():
        cursor = conn.execute(query("replay"), {"consumer": consumer, "since_id": since_id, "since_time": since_time})
        return cursor.rowcount
