"""The outbox as a stream (``pgchanges.stream()``, ``tail``): the caller acknowledges, change by change.

One worker reads one claimed batch at a time. The batch's transaction commits once every change of it was
acknowledged, or when the caller moves on to the next batch: changes not acknowledged by then are parked for
``ack_wait`` seconds, holding back later changes of their rows; an acknowledgement within that time still
counts (the event leaves the parking), after it they are delivered again. At close, nothing is deferred:
changes not acknowledged are delivered again to the next reader.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Sequence
from functools import partial

from pgchanges.change import Change
from pgchanges.errors import ConfigError
from pgchanges.sources.base import CONNECTION_ERRORS, Event
from pgchanges.sources.outbox.claims import Claim, Settlement
from pgchanges.sources.outbox.worker import LaneWorker

log = logging.getLogger("pgchanges.sources.outbox")


class StreamReader:
    """The stream path over ``worker`` (its batches are claimed one at a time and settled here)."""

    def __init__(self, worker: LaneWorker, ack_wait: float) -> None:
        self._worker = worker
        self._store = worker.store
        self._ack_wait = ack_wait
        self._open: Claim | None = None
        self._acked: set[int] = set()
        self._awaiting_ack: set[int] = set()  # deferred at an earlier batch's end, an ack still counts

    async def batches(self) -> AsyncGenerator[list[Event], None]:
        async with contextlib.aclosing(self._worker.batches()) as claims:
            while True:
                if self._open is not None:
                    await self._finish()  # before the next claim: both would share the connection
                batch = await anext(claims, None)
                if batch is None:
                    return
                self._open, self._acked = batch.token, set()  # blocked ones too: finishing parks them
                if batch.changes:
                    yield list[Event](batch.changes)

    async def ack(self, changes: Sequence[Change]) -> None:
        """Acknowledge ``changes`` of the current batch, or of earlier ones still awaiting their ack."""
        in_batch = set() if self._open is None else {c.event_id for c in self._open.runnable}
        late: list[int] = []
        for change in changes:
            position = int(change.position) if isinstance(change.position, int) else None
            if position in in_batch:
                self._acked.add(position)
            elif position in self._awaiting_ack:
                late.append(position)
            else:
                raise ConfigError(f"ack() of change {change.id}, which is not awaiting an acknowledgement")
        if late:
            self._awaiting_ack.difference_update(late)
            try:
                await self._worker.conn.call(partial(self._store.unpark_now, commit=self._open is None), late)
            except CONNECTION_ERRORS as exc:  # these stay parked, and come again when their time is up
                self._open, self._acked = None, set()
                self._worker.lost_connection(exc)
        if in_batch and len(self._acked) == len(in_batch):
            await self._finish()

    async def close(self) -> None:
        """End the open batch: what was acknowledged commits; the rest is delivered again later."""
        if self._open is not None and self._worker.conn.usable:
            await self._finish(closing=True)

    async def _finish(self, *, closing: bool = False) -> None:
        claim, acked = self._open, self._acked
        self._open, self._acked = None, set()
        if claim is None:
            return
        pending = [c for c in claim.runnable if c.event_id not in acked]
        settlement = Settlement(
            finished=[c for c in claim.items if c.event_id in acked],
            released=[c for c in claim.items if c.blocked],
            deferred=pending,
            defer_seconds=0.0 if closing else self._ack_wait,
        )
        try:
            await self._worker.conn.call(self._store.finish, claim, settlement)
        except CONNECTION_ERRORS as exc:  # not acknowledged: the server rolls the claim back, it comes again
            self._worker.lost_connection(exc)
            return
        if not closing:
            self._awaiting_ack.update(c.event_id for c in pending)
