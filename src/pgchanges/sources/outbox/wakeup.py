"""How an idle outbox worker waits for work without making writers pay for it.

A sleeping worker makes every writer NOTIFY (and so take the NOTIFY commit lock) until it wakes. So a worker
that found no work first looks again a few times within a short grace period: under a steady stream of
writes it finds work again and never sleeps, and writers never pay for the wake-up. Only a truly idle worker
sleeps: it registers in ``pgchanges.sleepers`` with a deadline and LISTENs; the row triggers NOTIFY only
while some worker's deadline lies ahead (one shared sequence, ``pgchanges.sleep_until``, tells them; see
``capture/sql/0009_outbox_write_path.sql``), and a worker killed in its sleep stops costing them at its
deadline.

A writer that checked for sleepers just before the announcement, and commits after the worker's last look,
will not wake it: while such writers are in flight the worker looks again as each of them ends (checking at
growing intervals), so their events do not wait for the poll interval.
"""

from __future__ import annotations

from typing import Any

import anyio
import psycopg

from pgchanges.capture.queries import fetch_one, run
from pgchanges.db.listener import Listener
from pgchanges.db.threaded import ThreadedConnection
from pgchanges.sources.base import Stopper
from pgchanges.sources.outbox.store import OutboxStore

WAKE_CHANNEL = "pgchanges:outbox"
#: The grace period: an idle worker looks again after each of these pauses before it sleeps.
IDLE_POLL_SECONDS = (0.005, 0.01, 0.02, 0.04)
#: A sleeping worker's deadline (after which writers stop notifying it) lies this far past its longest wait.
SLEEP_DEADLINE_SLACK_SECONDS = 1.0
#: A sleeping worker first looks again this soon when writers were in flight as it announced its sleep.
WRITER_RECHECK_SECONDS = 0.005


class Sleeper:
    """The waiting of one worker (``worker`` is its id in ``pgchanges.sleepers``)."""

    def __init__(
        self,
        store: OutboxStore,
        conn: ThreadedConnection,
        listener: Listener,
        *,
        worker: str,
        poll_interval: float,
        stopper: Stopper,
    ) -> None:
        self._store = store
        self._conn = conn
        self._listener = listener
        self._params = {"consumer": store.consumer, "worker": worker}
        self._poll_interval = poll_interval
        self._stopper = stopper

    async def wait_for_work(self, idle_rounds: int) -> None:
        """Wait after the ``idle_rounds``-th look in a row that found nothing (or until stopped)."""
        if idle_rounds <= len(IDLE_POLL_SECONDS):
            await self._stopper.sleep(IDLE_POLL_SECONDS[idle_rounds - 1])
        else:
            await self._sleep_until_work()

    async def _sleep_until_work(self) -> None:
        """Announce this worker as sleeping, look once more, then wait for a wake-up or the poll interval."""
        next_run, writers = await self._conn.call(self._announce)
        try:
            if next_run is not None and next_run <= 0:
                return
            timeout = self._poll_interval if next_run is None else min(self._poll_interval, next_run)
            with anyio.move_on_after(timeout):
                await self._stopper.wait(self._wait_for_wake_up(writers))
        finally:
            with anyio.CancelScope(shield=True):
                await self._conn.call(self._unannounce)

    def _announce(self, conn: psycopg.Connection[Any]) -> tuple[float | None, list[str]]:
        """Sleep (writers NOTIFY until this worker wakes, or at the latest a little after its longest wait);
        the seconds until a parked event is due (None: none is parked; 0: work was found) and the writers in
        flight."""
        seconds = self._poll_interval + SLEEP_DEADLINE_SLACK_SECONDS
        run(conn, "sleep", {**self._params, "seconds": seconds})
        conn.commit()
        writers = fetch_one(conn, "writers_in_flight")
        if self._store.cut(conn):
            return 0.0, []
        row = fetch_one(conn, "next_run_at", {"consumer": self._store.consumer})
        conn.commit()
        next_run = None if row is None or row.seconds is None else float(row.seconds)
        return next_run, list(writers.writers) if writers else []

    async def _wait_for_wake_up(self, writers: list[str]) -> None:
        """Return at the first NOTIFY, or as soon as one of ``writers`` (in flight at the announcement) ended."""
        recheck = WRITER_RECHECK_SECONDS
        while True:
            if not writers:
                await self._listener.receive()
                return
            with anyio.move_on_after(recheck):
                await self._listener.receive()
                return
            if await self._conn.call(_writers_still_in_flight, writers) < len(writers):
                return
            recheck = min(recheck * 2, self._poll_interval)

    def _unannounce(self, conn: psycopg.Connection[Any]) -> None:
        if conn.broken:
            return
        run(conn, "wake", self._params)
        conn.commit()


def _writers_still_in_flight(conn: psycopg.Connection[Any], writers: list[str]) -> int:
    """How many of ``writers`` (virtual transaction ids of writers_in_flight) have not yet ended."""
    row = fetch_one(conn, "writers_in_flight")
    conn.commit()
    return len(set(writers).intersection(row.writers if row else ()))
