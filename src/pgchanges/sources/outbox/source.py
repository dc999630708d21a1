"""The outbox source: a consumer of ``pgchanges.events``, served by workers (App) or read as a stream."""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import anyio
import psycopg

from pgchanges.capture import install as capture
from pgchanges.change import Change
from pgchanges.errors import ConfigError
from pgchanges.names import TableName
from pgchanges.ops.figures import SourceFigures
from pgchanges.sources.base import RETRIES, TRANSACTION, Event, Feed, Stopper, require_tables
from pgchanges.sources.options import OutboxOptions
from pgchanges.sources.outbox.store import OutboxStore
from pgchanges.sources.outbox.stream import StreamReader
from pgchanges.sources.outbox.worker import LaneWorker


class OutboxSource:
    """Durable changes of ``tables`` for the consumer ``options.consumer``."""

    name = "outbox"
    acknowledges = True
    features = frozenset((TRANSACTION, RETRIES))

    def __init__(
        self,
        conninfo: str,
        tables: Sequence[TableName],
        channels: Sequence[str] = (),
        options: OutboxOptions = OutboxOptions(),  # noqa: B008 - immutable
        *,
        auto_install: bool = True,
    ) -> None:
        require_tables(self.name, tables, channels)
        self._conninfo = conninfo
        self._tables = list(dict.fromkeys(tables))
        self._options = options
        self._auto_install = auto_install
        self.consumer = options.consumer
        self._stopper = Stopper()
        self._workers: list[LaneWorker] = []
        self._stream: StreamReader | None = None
        self.figures = SourceFigures()  # progress, for metrics and readiness (pgchanges.ops)

    def connection_states(self) -> dict[str, bool]:
        """Whether each worker's connection (and LISTEN connection) is open: ``pgchanges_connected``."""
        return {f"worker-{i}": worker.connected for i, worker in enumerate(self._workers)}

    @property
    def lanes(self) -> int:
        return self._workers[0].store.lanes if self._workers else self._options.lanes

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Install what is missing, register the consumer, and open the first worker (more for an App)."""
        first = self._new_worker()
        await first.open()
        self._workers.append(first)
        try:
            await first.conn.call(self._prepare, first.store)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise

    def _prepare(self, conn: psycopg.Connection[Any], store: OutboxStore) -> None:
        conn.autocommit = True
        try:
            capture.ensure_capture(conn, self._tables, "outbox", auto_install=self._auto_install)
        finally:
            conn.autocommit = False
        store.register(conn, self._tables)

    def _new_worker(self) -> LaneWorker:
        options = self._options
        lanes = self._workers[0].store.lanes if self._workers else options.lanes
        store = OutboxStore(
            options.consumer,
            lanes,
            options.batch_size,
            options.retention,
            start_lane=random.randrange(lanes),  # noqa: S311 - spreading workers, not cryptography
        )
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        return LaneWorker(
            self._conninfo,
            store,
            worker=worker_id,
            retry=options.retry,
            poll_interval=options.poll_interval,
            backoff=options.backoff,
            stopper=self._stopper,
            figures=self.figures,
        )

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._stream is not None:
                await self._stream.close()
            for worker in self._workers:
                await worker.close()
        self._workers = []

    def stop(self) -> None:
        """Finish the batch in hand, then end the feeds."""
        self._stopper.stop()

    # -- the App: concurrency workers, handlers in the claim's transaction -------------------------------

    async def feeds(self) -> Sequence[Feed]:
        """``concurrency`` workers, each on its own connection, so that serving starts at full speed."""
        while len(self._workers) < self._options.concurrency:
            worker = self._new_worker()
            await worker.open()
            self._workers.append(worker)
        return list(self._workers)

    # -- the stream: the caller acknowledges -------------------------------------------------------------

    def batches(self) -> AsyncGenerator[list[Event], None]:
        """Claimed batches of one worker; see :mod:`pgchanges.sources.outbox.stream`."""
        if self._stream is None:
            self._stream = StreamReader(self._workers[0], self._options.ack_wait)
        return self._stream.batches()

    async def ack(self, changes: Sequence[Change]) -> None:
        if self._stream is None:
            raise ConfigError("ack() of a change that batches() did not deliver")
        await self._stream.ack(changes)
