"""What the database knows about pgchanges' progress, sampled off the hot path: slots, outbox consumers.

:func:`take_sample` runs a few named queries (``capture/sql/queries/ops.sql`` and the outbox's
``consumer_status``) on a connection of its own; :class:`Sampler` does that every ``interval`` seconds in a
worker thread while an App serves, so that ``/metrics`` and ``/readyz`` answer from memory and a scrape never
waits for the database. ``pgchanges status`` takes one sample the same way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import psycopg

from pgchanges import conninfo as ci
from pgchanges.capture import outbox_admin
from pgchanges.capture.install import relation_exists
from pgchanges.capture.queries import fetch_all
from pgchanges.db.connect import close_async, connect_async
from pgchanges.errors import PgChangesError

log = logging.getLogger("pgchanges.ops")

#: The decoding statistics of pg_stat_replication_slots, exported as counters (PostgreSQL 14 and newer).
SLOT_STATS = ("spill_txns", "spill_count", "spill_bytes", "stream_txns", "stream_count", "stream_bytes")
SLOT_TOTALS = ("total_txns", "total_bytes")


@dataclass(frozen=True)
class SlotSample:
    """One logical slot of the database, and who holds it."""

    name: str
    active: bool
    active_pid: int | None
    temporary: bool
    wal_status: str | None
    retained_bytes: int | None
    lag_bytes: int | None
    confirmed_lsn: str | None
    application_name: str | None
    client_addr: str | None
    backend_start: datetime | None
    stats: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ConsumerSample:
    """One outbox consumer: events not handled yet, the age of the oldest, parked events, dead letters."""

    name: str
    backlog: int
    oldest_pending_seconds: float | None
    in_flight: int
    retrying: int
    parked: int
    dead_letters: int
    seen_at: datetime | None


@dataclass(frozen=True)
class Sample:
    taken_at: float  # time.monotonic()
    slots: list[SlotSample]
    consumers: list[ConsumerSample]


def take_sample(conn: psycopg.Connection[Any], *, consumers: bool = True, consumer: str | None = None) -> Sample:
    """Slots of the database, and outbox consumers (``consumer`` only, when given; none without ``consumers``)."""
    slots = [_slot(r) for r in fetch_all(conn, "ops_slots")]
    found: list[ConsumerSample] = []
    if consumers and relation_exists(conn, "pgchanges.consumers"):
        parked = {r.consumer: int(r.parked) for r in fetch_all(conn, "ops_outbox_parked", {"consumer": consumer})}
        found = [
            ConsumerSample(
                s.name,
                s.backlog,
                s.oldest_pending_seconds,
                s.in_flight,
                s.retrying,
                parked.get(s.name, 0),
                s.dead_letters,
                s.seen_at,
            )
            for s in outbox_admin.consumer_status(conn, consumer)
        ]
    return Sample(time.monotonic(), slots, found)


def _slot(row: Any) -> SlotSample:
    stats = {name: int(getattr(row, name)) for name in (*SLOT_STATS, *SLOT_TOTALS) if getattr(row, name) is not None}
    return SlotSample(
        name=row.name,
        active=bool(row.active),
        active_pid=row.active_pid,
        temporary=bool(row.temporary),
        wal_status=row.wal_status,
        retained_bytes=None if row.retained_bytes is None else int(row.retained_bytes),
        lag_bytes=None if row.lag_bytes is None else int(row.lag_bytes),
        confirmed_lsn=row.confirmed_lsn,
        application_name=row.application_name,
        client_addr=row.client_addr,
        backend_start=row.backend_start,
        stats=stats,
    )


class Sampler:
    """Takes a :class:`Sample` every ``interval`` seconds on a connection of its own, reopened after a failure."""

    def __init__(self, conninfo: str, *, interval: float, consumer: str | None) -> None:
        self._conninfo = conninfo
        self.interval = interval
        self._consumer = consumer
        self.latest: Sample | None = None
        self.connected = False
        self.failures = 0
        self._conn: psycopg.Connection[Any] | None = None

    async def run(self) -> None:
        try:
            while True:
                await self.sample_once()
                await anyio.sleep(self.interval)
        finally:
            with anyio.CancelScope(shield=True):
                conn, self._conn = self._conn, None
                await close_async(conn)

    async def sample_once(self) -> None:
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                await close_async(self._conn)
                self._conn = await connect_async(self._conninfo)
            conn = self._conn
            self.latest = await anyio.to_thread.run_sync(self._take, conn)
            self.connected = True
        except (psycopg.Error, PgChangesError, OSError) as exc:  # the next round tries again
            self.failures += 1
            self.connected = False
            log.warning("metrics: sampling the database failed (%s)", ci.describe_error(exc, self._conninfo))

    def _take(self, conn: psycopg.Connection[Any]) -> Sample:
        return take_sample(conn, consumers=self._consumer is not None, consumer=self._consumer)
