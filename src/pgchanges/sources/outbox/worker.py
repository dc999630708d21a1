"""One outbox worker: a connection that claims lanes, hands their batches to the App, and settles them.

A worker is one of the App's feeds: :meth:`LaneWorker.batches` claims a lane and yields its batch with the
claim's :class:`~pgchanges.sources.outbox.Transaction`; the App runs the handlers in that transaction and
calls :meth:`LaneWorker.settle`, which writes back the outcomes (finished, parked for a retry, dead letters)
and commits, acknowledging the batch, then claims the next one in the same thread hand-off. A source runs
``concurrency`` workers, each with its own connection: while one lane's handlers run, the next lane's batch
is read.

A worker that loses its connection leaves its transaction to the server to roll back: the batch becomes
claimable again at once (duplicates are limited to what was in flight); it reconnects with backoff.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import anyio
import psycopg

from pgchanges.db.listener import Listener
from pgchanges.db.threaded import ThreadedConnection
from pgchanges.ops.figures import SourceFigures
from pgchanges.plain_run import Outcome
from pgchanges.retry import RetryPolicy
from pgchanges.sources.base import CONNECTION_ERRORS, Backoff, Batch, Stopper, one_line, reconnect_with_backoff
from pgchanges.sources.outbox.claims import Claim, settle
from pgchanges.sources.outbox.store import OutboxStore
from pgchanges.sources.outbox.transaction import Transaction
from pgchanges.sources.outbox.wakeup import WAKE_CHANNEL, Sleeper

log = logging.getLogger("pgchanges.sources.outbox")


def claim_connection(conn: psycopg.Connection[Any]) -> None:
    """The set-up of a worker's connection: claims run in explicit transactions, without JIT (these short
    statements' cost estimates cross jit_above_cost, and compiling them costs more than running them)."""
    conn.execute("SET jit = off")
    conn.autocommit = False


class LaneWorker:
    """A feed of claimed batches of ``store``'s consumer."""

    def __init__(
        self,
        conninfo: str,
        store: OutboxStore,
        *,
        worker: str,
        retry: RetryPolicy,
        poll_interval: float,
        backoff: Backoff,
        stopper: Stopper,
        figures: SourceFigures | None = None,
    ) -> None:
        self.figures = figures if figures is not None else SourceFigures()  # shared by a source's workers
        self.conn = ThreadedConnection(conninfo, setup=claim_connection, what="the outbox worker's connection")
        self.listener = Listener(conninfo, [WAKE_CHANNEL])
        self.store = store
        self._retry = retry
        self._backoff = backoff
        self._stopper = stopper
        self._sleeper = Sleeper(
            store, self.conn, self.listener, worker=worker, poll_interval=poll_interval, stopper=stopper
        )
        self._next_claim: Claim | None = None  # claimed with the previous batch's acknowledgement
        self._looked_after_finish = False  # that claim found nothing (and cut nothing)
        self._lost = False  # the connection failed while settling: reconnect before the next claim

    async def open(self) -> None:
        await self.conn.open()
        await self.listener.open()

    async def close(self) -> None:
        await self.listener.close()
        await self.conn.close()

    async def reconnect(self) -> None:
        await self.close()
        await self.open()

    async def batches(self) -> AsyncGenerator[Batch, None]:
        """Claimed batches until stopped; a lane claimed just before the stop is given back, unhandled."""
        idle = 0
        while not self._stopper.stopping:
            try:
                if self._lost and not await self._reconnect():
                    break
                claim = await self._next()
            except CONNECTION_ERRORS as exc:
                self.lost_connection(exc)
                continue
            if claim is None:
                self.figures.advanced()  # nothing to claim: caught up (what is parked waits for its time)
                idle += 1
                await self._wait(idle)
                continue
            idle = 0
            changes = [item.change for item in claim.runnable]
            keys = [item.row_key for item in claim.runnable]
            assert self.conn.connection is not None
            yield Batch(changes, changes, keys=keys, transaction=Transaction(self.conn.connection), token=claim)
        await self._give_back()

    async def _next(self) -> Claim | None:
        claim, self._next_claim = self._next_claim, None
        if claim is not None:
            return claim
        if self._looked_after_finish:  # the last acknowledgement looked for the next batch: none
            self._looked_after_finish = False
            return None
        await self.conn.call(self.store.maintain_if_due)
        return await self.conn.call(self.store.claim)

    async def _wait(self, idle: int) -> None:
        try:
            await self._sleeper.wait_for_work(idle)
        except CONNECTION_ERRORS as exc:
            self.lost_connection(exc)

    async def settle(self, batch: Batch, outcomes: Sequence[Outcome]) -> None:
        """Write back the outcomes and commit (the acknowledgement); claim the next batch meanwhile."""
        claim: Claim = batch.token
        settlement = settle(claim, outcomes, self._retry)
        try:
            if self._stopper.stopping:
                await self.conn.call(self.store.finish, claim, settlement)
            else:
                self._next_claim = await self.conn.call(self.store.finish_and_claim, claim, settlement)
                self._looked_after_finish = self._next_claim is None
        except CONNECTION_ERRORS as exc:  # not acknowledged: the server rolls the claim back, and the batch comes again
            self.lost_connection(exc)

    @property
    def connected(self) -> bool:
        return not self._lost and self.conn.usable and self.listener.backend_pid is not None

    def lost_connection(self, exc: BaseException) -> None:
        """The connection failed (its transaction, and any claim in it, went with it): reconnect before the
        next claim."""
        self._next_claim, self._looked_after_finish = None, False  # its transaction went with the connection
        self._lost = True
        log.warning("outbox worker lost its connection (%s); reconnecting", one_line(exc))

    async def _reconnect(self) -> bool:
        reconnected = await reconnect_with_backoff(
            self.reconnect,
            backoff=self._backoff,
            what="the outbox worker",
            logger=log,
            stopper=self._stopper,
            errors=CONNECTION_ERRORS,
        )
        self._lost = not reconnected
        return reconnected

    async def _give_back(self) -> None:
        if self._next_claim is not None:
            self._next_claim = None
            with anyio.CancelScope(shield=True), contextlib.suppress(*CONNECTION_ERRORS, psycopg.Error):
                await self.conn.call(_roll_back)


def _roll_back(conn: psycopg.Connection[Any]) -> None:
    if not conn.broken:
        conn.rollback()
