"""Operating the outbox from outside a worker: status per consumer, dead letters, replay.

The statements are named queries: those shared with the workers in ``capture/sql/queries/outbox.sql``, the
others in ``admin.sql``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from pgchanges.capture.install import ProgressReport, relation_exists
from pgchanges.capture.queries import fetch_all, fetch_one, query
from pgchanges.errors import ConfigError

#: Replay queues events in pieces of this many ids (one statement each, in one transaction).
REPLAY_PIECE_IDS = 10_000


def _outbox_installed(conn: psycopg.Connection[Any]) -> bool:
    return relation_exists(conn, "pgchanges.consumers")


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
        rows = fetch_all(conn, "consumer_status", {"consumer": consumer})
    return [
        ConsumerStatus(
            name=r.name,
            backlog=int(r.backlog),
            oldest_pending_seconds=None if r.oldest_pending_seconds is None else float(r.oldest_pending_seconds),
            in_flight=int(r.in_flight),
            retrying=int(r.retrying),
            dead_letters=int(r.dead_letters),
            sleeping_workers=int(r.sleeping_workers),
            seen_at=r.seen_at,
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
    return [
        f"{r.consumer} event {r.event_id} ({r.op} {r.schema_name}.{r.table_name}) failed {r.attempts}x, "
        f"last at {r.failed_at:%Y-%m-%d %H:%M:%S}: {r.error}"
        for r in fetch_all(conn, "dead_letter_list", {"consumer": consumer})
    ]


def retry_dead_letters(conn: psycopg.Connection[Any], consumer: str, ids: list[int] | None) -> list[int]:
    with conn.transaction():
        return [r.event_id for r in fetch_all(conn, "retry_dead_letters", {"consumer": consumer, "ids": ids})]


def drop_dead_letters(conn: psycopg.Connection[Any], consumer: str, ids: list[int] | None) -> list[int]:
    with conn.transaction():
        return [r.event_id for r in fetch_all(conn, "drop_dead_letters", {"consumer": consumer, "ids": ids})]


def replay(conn: psycopg.Connection[Any], consumer: str, since: str, *, progress: ProgressReport | None = None) -> int:
    """Queue again every retained event of ``consumer``'s tables from ``since`` (an event id or a time);
    ``progress`` is told the total and each piece done."""
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
    if not fetch_one(conn, "outbox_consumer_exists", {"consumer": consumer}).present:
        raise ConfigError(f"no outbox consumer named {consumer!r}")
    params: dict[str, Any] = {"consumer": consumer, "since_id": since_id, "since_time": since_time}
    with conn.transaction():  # all or nothing, in pieces of ids so that progress can be shown
        span = fetch_one(conn, "replay_range", params)
        if progress is not None:
            progress.set_total(span.events)
        queued = 0
        start = span.first_id
        while start is not None and start <= span.last_id:
            piece = {**params, "since_id": start, "below_id": start + REPLAY_PIECE_IDS}
            count = conn.execute(query("replay"), piece).rowcount
            queued += count
            if progress is not None:
                progress.advance(count)
            start += REPLAY_PIECE_IDS
        return queued
