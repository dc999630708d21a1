"""The logical source: change data capture from a publication and a replication slot, decoded by us.

No triggers: the publication names the tables, the slot keeps the server's place, and the ``pgoutput``
stream is decoded by :mod:`pgchanges.pgoutput`. A change's ``id`` is ``<commit LSN>:<sequence>``, stable when
a transaction is delivered again. The slot only advances (standby status update) to the end of a transaction
once every change of it, and of every transaction before it, has been acknowledged; with nothing in flight,
keepalives confirm the server's WAL end, so a quiet publication does not make the slot retain WAL forever.

Large transactions are not streamed in progress: the server spills them to disk (``logical_decoding_work_mem``)
and sends them at commit, and we hand them on in batches, so memory stays bounded on both sides.

This module is the I/O: the replication stream, the control connection (setup, the catalog lookups that type
a relation's columns, snapshot progress), reading the initial snapshot, status updates and reconnecting. What
a read of the stream makes and what the slot may confirm is pure state, kept by
:class:`~pgchanges.sources.logical_tracker.TransactionTracker`; the server-side setup is in
:mod:`~pgchanges.sources.logical_setup`, the snapshot's queries and tally in :mod:`~pgchanges.sources.snapshot`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import operator
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, cast

import anyio
import psycopg

from pgchanges.capture.logical_admin import (
    end_silent_walsender,
    ensure_publication,
    ensure_slot,
    publication_name,
    remember,
    slot_exists,
)
from pgchanges.capture.queries import fetch_one
from pgchanges.change import Change
from pgchanges.db.connect import close_async, connect_async
from pgchanges.db.replication import ReplicationStream, StreamMessage, check_slot_name
from pgchanges.db.threaded import ThreadedConnection
from pgchanges.errors import CaptureError, ConnectError, ReplicationLost
from pgchanges.names import TableName
from pgchanges.ops.figures import SourceFigures
from pgchanges.ops.progress import Progress, table_estimates
from pgchanges.pgoutput import Relation, lsn_to_str
from pgchanges.plain_run import Outcome
from pgchanges.rowtypes import fetch_type_info, text_converter
from pgchanges.sources import logical_setup as setup
from pgchanges.sources import snapshot as snapshot_mod
from pgchanges.sources.base import (
    CONNECTION_ERRORS,
    WHOLE_TRANSACTIONS,
    Batch,
    Event,
    Feed,
    Stopper,
    gap_marker,
    one_line,
    reconnect_with_backoff,
    require_tables,
    row_changes,
)
from pgchanges.sources.logical_changes import RelationInfo, relation_info
from pgchanges.sources.logical_tracker import TransactionTracker
from pgchanges.sources.options import LogicalOptions

__all__ = ["LogicalSource", "ensure_publication", "ensure_slot", "publication_name"]

log = logging.getLogger(__name__)

STATUS_INTERVAL_SECONDS = 10.0
#: While a batch is in hand (a handler or a broker taking long), a status this often at least: the server ends
#: a replication connection that sent nothing for wal_sender_timeout (60 s by default), and everything read
#: since the last acknowledgement would be read again after the reconnect.
KEEPALIVE_SECONDS = 1.0
USER_TYPE_OIDS = 10_000  # oids from here on are user-defined types (domains, enums, arrays of them)
HEARTBEAT_PREFIX = "pgchanges.heartbeat"  # the prefix of the heartbeat messages (ops_emit_heartbeat)
_OP = operator.itemgetter(1)


class LogicalSource:
    """Changes of ``tables`` from a replication slot (``slot``; a temporary one when None)."""

    name = "logical"
    acknowledges = True
    features = frozenset((WHOLE_TRANSACTIONS,))

    def __init__(
        self,
        conninfo: str,
        tables: Sequence[TableName],
        channels: Sequence[str] = (),
        options: LogicalOptions = LogicalOptions(),  # noqa: B008 - immutable
        *,
        auto_install: bool = True,
        whole_transactions: bool = False,
    ) -> None:
        require_tables(self.name, tables, channels)
        self._conninfo = conninfo
        unique = list(dict.fromkeys(tables))
        slot = options.slot
        self.temporary = slot is None
        self.slot = check_slot_name(slot) if slot else f"pgchanges_tmp_{uuid.uuid4().hex[:12]}"
        self.publication = options.publication or publication_name(unique)
        self.batch_size = options.batch_size
        self._setup = setup.Setup(
            slot=self.slot,
            temporary=self.temporary,
            publication=self.publication,
            tables=unique,
            replica_identity_full=options.replica_identity_full,
            auto_install=auto_install,
            snapshot=options.snapshot,
            retained_warning_bytes=options.retained_warning_bytes,
        )
        self._backoff = options.backoff
        # the control connection (setup, type lookups, snapshot progress, heartbeats): opened again when broken
        self._control = ThreadedConnection(conninfo, what="the logical source's control connection")
        self._stream = ReplicationStream(conninfo)
        # what the stream made and what the slot may confirm; whole transactions kept for their handlers
        self.tracker = TransactionTracker(collect=whole_transactions)
        self._last_sent = -1
        self._last_status = 0.0
        self._stopper = Stopper()
        self._snapshot_plan: list[snapshot_mod.TableSnapshot] = []
        self._snapshot_name: str | None = None  # exported with the slot; None: read a fresh snapshot
        self._snapshot_position = ""
        self._snapshot_tally = snapshot_mod.SnapshotTally()
        self.figures = SourceFigures()  # progress, lag and heartbeats, for metrics and readiness (pgchanges.ops)
        self._heartbeat = options.heartbeat or None
        # time.monotonic() of the next heartbeat: the first comes one interval after the start (an earlier one
        # would be read by a stream consumer that then pauses, leaving the server's shutdown to wait for the
        # reply to the keepalive after it)
        self._heartbeat_due = time.monotonic() + (self._heartbeat or 0.0)
        self._heartbeat_mark = f"{self.slot} ".encode()

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._control.open()
        self._snapshot_plan = await self._control.call(setup.prepare, self._setup)
        await self._start_stream()

    async def _start_stream(self) -> None:
        await self._stream.open()
        fresh_slot = self._snapshot_plan and (self.temporary or self._snapshot_plan[0].last_key is None)
        if fresh_slot and not await self._on_control(slot_exists, self.slot):
            position, self._snapshot_name = await self._stream.create_slot_with_snapshot(
                self.slot, temporary=self.temporary
            )
            self._snapshot_position = position
            if not self.temporary:
                await self._on_control(remember, "slot", self.slot)
            return  # replication starts once the snapshot has been read
        if self.temporary and not self._snapshot_plan:
            await self._stream.create_temporary_slot(self.slot)
        if self._snapshot_plan:
            return
        # From what this source confirmed, not 0 (the slot's position): PostgreSQL before 17 may not save a
        # slot's confirmed position at a shutdown checkpoint, so after a server restart the slot can stand far
        # behind what was acknowledged, and everything since would come again (the chaos runner, issue 16).
        await self._stream.start(self.slot, [self.publication], self.tracker.flushed)
        self.tracker.restart()

    async def _on_control(self, call: Callable[..., Any], *args: Any) -> Any:
        """``call(control connection, *args)`` in a worker thread; a control connection that broke (a
        partition, a restart) is opened again first, so a lookup never fails on a dead connection for good."""
        return await self._control.call_reopening(call, *args)

    async def close(self) -> None:
        flushed = self.tracker.flushed
        if self._control.usable and flushed:
            with contextlib.suppress(ReplicationLost):
                self._stream.send_status(flushed)
        await self._stream.close()
        await self._control.close()

    def stop(self) -> None:
        self._stopper.stop()

    async def feeds(self) -> Sequence[Feed]:
        return [_LogicalFeed(self)]

    def connection_states(self) -> dict[str, bool]:
        """Whether the replication and control connections are open (the ``pgchanges_connected`` metric)."""
        try:
            stream: psycopg.Connection[Any] | None = self._stream.connection
        except ReplicationLost:
            stream = None
        return {name: conn is not None and not conn.closed and not conn.broken
                for name, conn in (("replication", stream), ("control", self._control.connection))}  # fmt: skip

    # -- the initial snapshot ------------------------------------------------------------------------------

    async def _snapshot_batches(self) -> AsyncGenerator[list[Event], None]:
        """The tables' rows as of the slot's start point (or, resuming, as of now), page by page."""
        reader = await connect_async(self._conninfo, autocommit=False)
        tally = self._snapshot_tally
        try:
            await anyio.to_thread.run_sync(self._begin_snapshot, reader)
            estimates = await self._on_control(table_estimates, [item.oid for item in self._snapshot_plan])
            for item in self._snapshot_plan:
                tally.start(item.oid)
                pages = snapshot_mod.read_pages(reader, item)
                with Progress(f"snapshot {item.table}", total=estimates.get(item.oid)) as progress:
                    while (page := await anyio.to_thread.run_sync(next, pages, None)) is not None:
                        tally.handed_on(item.oid, len(page))
                        yield [snapshot_mod.to_change(self.slot, item, row, self._snapshot_position) for row in page]
                        progress.advance(len(page))
                tally.read_to_the_end(item.oid)
                await self._record_snapshot(item.oid, None)
            await anyio.to_thread.run_sync(reader.commit)
        finally:
            await close_async(reader)
        self._snapshot_plan = []
        self._snapshot_name = None
        await self._stream.start(self.slot, [self.publication])

    def _begin_snapshot(self, reader: psycopg.Connection[Any]) -> None:
        snapshot_mod.begin(reader, self._snapshot_name)
        if not self._snapshot_position:
            self._snapshot_position = snapshot_mod.current_position(reader)

    async def _record_snapshot(self, oid: int, last_key: list[Any] | None) -> None:
        if self.temporary or self._control.connection is None:
            return
        done = self._snapshot_tally.done(oid)
        await self._on_control(snapshot_mod.record, self.slot, oid, last_key, done)

    # -- reading -------------------------------------------------------------------------------------------

    async def batches(self) -> AsyncGenerator[list[Event], None]:
        if self._snapshot_plan:
            async with contextlib.aclosing(self._snapshot_batches()) as pages:  # its connection closes with it
                async for page in pages:
                    yield page
        stopper = self._stopper
        while not stopper.stopping:
            try:
                await self._heartbeat_if_due()
                messages = None
                with anyio.move_on_after(self._heartbeat_due - time.monotonic() if self._heartbeat else math.inf):
                    messages = await stopper.wait(self._stream.read())  # cancelled only while nothing was read
                if stopper.stopping:
                    return
                if messages is None:  # the heartbeat is due: write it, then read on
                    continue
                changes = await self._handle(messages)
                if changes and "message" in map(_OP, changes):
                    changes = self._without_heartbeats(changes)
            except CONNECTION_ERRORS as exc:
                log.warning("replication connection lost (%s); reconnecting", one_line(exc))
                if not await self._reconnect():
                    return
                if self.temporary:
                    yield [gap_marker(self.name, f"temporary slot lost with the connection: {exc}")]
                continue
            for batch in self.tracker.in_batches(changes, self.batch_size):
                if stopper.stopping:
                    return  # the rest of the read comes again: it is not acknowledged
                yield cast(list[Event], batch)
            self._maybe_send_status()

    async def _heartbeat_if_due(self) -> None:
        """Write a heartbeat to the WAL when one is due: it comes back through the stream however quiet the
        tables are, which measures the lag and lets the slot's position move on (see ``_without_heartbeats``)."""
        if self._heartbeat is None or time.monotonic() < self._heartbeat_due:
            return
        self._heartbeat_due = time.monotonic() + self._heartbeat
        content = self._heartbeat_mark + f"{time.time():.6f}".encode()
        try:
            # not opened again here: a heartbeat is not worth holding up the read loop for a reconnect (the
            # next lookup, or the stream's own reconnect, opens a broken control connection again)
            await self._control.call(_emit_heartbeat, content)
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction) as exc:
            self._heartbeat = None
            log.warning("heartbeats are off: %s", one_line(exc))
            return
        except (psycopg.Error, ConnectError) as exc:
            log.warning("writing a heartbeat failed (%s); the next one is tried in %gs", exc, self._heartbeat)
            return
        self.figures.heartbeat_sent()

    def _without_heartbeats(self, changes: list[Change]) -> list[Change]:
        """``changes`` without the heartbeat messages (of any pgchanges consumer); ours give the lag."""
        kept: list[Change] = []
        mark = self._heartbeat_mark
        for change in changes:
            extra = change.extra
            if change.op != "message" or extra is None or extra.get("prefix") != HEARTBEAT_PREFIX:
                kept.append(change)
                continue
            content = bytes(extra.get("content") or b"")
            if content.startswith(mark):
                with contextlib.suppress(ValueError):
                    self.figures.heartbeat_seen(time.time() - float(content[len(mark) :]))
                if not self.tracker.in_flight:
                    self.figures.advanced()
        return kept

    async def _reconnect(self) -> bool:
        """Open the stream again, with backoff; False when stopped first."""

        async def restart() -> None:
            await self._stream.close()
            if not self.temporary:  # our old walsender may still hold the slot: end it once it went silent
                await self._on_control(end_silent_walsender, self.slot)
            await self._start_stream()

        return await reconnect_with_backoff(
            restart,
            backoff=self._backoff,
            what="the replication stream",
            logger=log,
            stopper=self._stopper,
            errors=(*CONNECTION_ERRORS, CaptureError),
        )

    async def _handle(self, messages: list[StreamMessage]) -> list[Change]:
        """The changes of one read; the tracker stops at each Relation for its column types to be looked up."""
        tracker = self.tracker
        out: list[Change] = []
        rest = iter(messages)
        while (relation := tracker.receive(rest, out)) is not None:
            tracker.add_relation(await self._relation(relation))
        if tracker.reply_requested:
            self._send_status()
        return out

    async def _relation(self, message: Relation) -> RelationInfo:
        oids = {c.type_oid for c in message.columns}
        types = {}
        if any(oid >= USER_TYPE_OIDS for oid in oids):
            types = await self._on_control(fetch_type_info, oids)
        return relation_info(message, lambda oid: text_converter(types, oid))

    # -- acknowledging -------------------------------------------------------------------------------------

    async def ack(self, changes: Sequence[Change]) -> None:
        """Mark ``changes`` handled; the slot advances past every transaction that is handled completely."""
        snapshot_keys = self._snapshot_tally.ack(changes)
        self.tracker.ack(changes)
        for oid, key in snapshot_keys.items():
            await self._record_snapshot(oid, key)
        if not snapshot_keys:  # while the snapshot is read, the stream has not started: no status to send
            # the read loop may have met a lost connection meanwhile (reading ahead): it reconnects and reports
            # from there, and what was read before the loss comes again (see _LogicalFeed.settle)
            with contextlib.suppress(ReplicationLost):
                self._maybe_send_status()

    def keep_alive(self) -> None:
        """Tell the server we are here, if nothing was sent for :data:`KEEPALIVE_SECONDS` (the position sent is
        what was acknowledged: nothing more). Called beside the batch in hand, never during a reconnect's start."""
        if not self._stream.streaming or time.monotonic() - self._last_status < KEEPALIVE_SECONDS:
            return
        with contextlib.suppress(ReplicationLost):  # the reader meets it too, and reconnects
            self._send_status()

    def _maybe_send_status(self) -> None:
        """Report progress when the flushed LSN moved, or at least every STATUS_INTERVAL_SECONDS."""
        moved = self.tracker.flushed != self._last_sent
        if moved or time.monotonic() - self._last_status >= STATUS_INTERVAL_SECONDS:
            self._send_status()

    def _send_status(self) -> None:
        self._last_status = time.monotonic()
        if self.tracker.flushed != self._last_sent:
            self.figures.advanced(lsn_to_str(self.tracker.flushed))
        self._last_sent = self.tracker.flushed
        self.tracker.reply_requested = False
        self._stream.send_status(self._last_sent)


class _LogicalFeed:
    """The App's feed: each batch of the stream, with the whole transactions it completes (their handlers run
    after the batch's per-change handlers), then the acknowledgement; the slot does not pass a transaction
    before its transaction handlers returned."""

    def __init__(self, source: LogicalSource) -> None:
        self._source = source

    def keep_alive(self) -> None:
        self._source.keep_alive()

    @property
    def reads_ahead(self) -> bool:
        """Whether the server may read the next batch while this one is handled (:mod:`pgchanges.serving`):
        yes, unless transaction handlers are on (they run between batches, in the stream's order of commits).
        A reconnect while a batch is in hand starts again from the last acknowledged position: that batch is
        read again, never skipped."""
        return not self._source.tracker.collect

    async def batches(self) -> AsyncGenerator[Batch, None]:
        tracker = self._source.tracker
        async with contextlib.aclosing(self._source.batches()) as reads:
            async for events in reads:
                changes = row_changes(events)
                due: list[Any] = []
                if tracker.collect:
                    tracker.dispatched(events)  # handled before the transactions: the Server runs those after
                    while (ready := tracker.next_transaction()) is not None:
                        due.append(ready)
                token = (tracker.session, [txn for txn, _ in due])
                yield Batch(events, changes, transactions=[whole for _, whole in due], token=token)

    async def settle(self, batch: Batch, outcomes: Sequence[Outcome]) -> None:
        session, transactions = batch.token
        tracker = self._source.tracker
        changes = [e for e in batch.events if isinstance(e, Change)]
        if session != tracker.session:  # read before the stream (re)started (reading ahead): it comes again,
            changes = [c for c in changes if c.id.startswith("snapshot:")]  # apart from snapshot rows
            transactions = []
        for txn in transactions:
            tracker.transaction_returned(txn)
        await self._source.ack(changes)


def _emit_heartbeat(conn: psycopg.Connection[Any], content: bytes) -> None:
    fetch_one(conn, "ops_emit_heartbeat", {"content": content})
