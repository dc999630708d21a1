"""The logical source: change data capture from a publication and a replication slot, decoded by us.

No triggers: the publication names the tables, the slot keeps the server's place, and the ``pgoutput``
stream is decoded by :mod:`pgchanges.pgoutput`. A change's ``id`` is ``<commit LSN>:<sequence>``, stable when
a transaction is delivered again. The slot only advances (standby status update) to the end of a transaction
once every change of it, and of every transaction before it, has been acknowledged; with nothing in flight,
keepalives confirm the server's WAL end, so a quiet publication does not make the slot retain WAL forever.

Large transactions are not streamed in progress: the server spills them to disk (``logical_decoding_work_mem``)
and sends them at commit, and we hand them on in batches, so memory stays bounded on both sides.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import psycopg
from psycopg import sql

from pgchanges.capture import install as capture
from pgchanges.capture import migrations
from pgchanges.change import EMPTY, Change, Op, freeze
from pgchanges.db.connect import close_async, connect_async
from pgchanges.db.replication import Keepalive, ReplicationStream, check_slot_name
from pgchanges.errors import CaptureError, ConnectError, NotInstalled, PermissionDenied, ReplicationLost
from pgchanges.handling import Handling
from pgchanges.names import TableName
from pgchanges.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Relation,
    StreamStart,
    Truncate,
    TupleData,
    Update,
    insert_relation,
    is_plain_insert,
    lsn_to_str,
)
from pgchanges.rowtypes import Converter, fetch_type_info, text_converter
from pgchanges.sources import snapshot as snapshot_mod
from pgchanges.sources.base import Backoff, Event, gap_marker, require_tables
from pgchanges.sources.lazy_row import LazyRow, typed_values

log = logging.getLogger(__name__)

STATUS_INTERVAL_SECONDS = 10.0
RETAINED_WARNING_BYTES = 1 << 30


@dataclass
class _Relation:
    schema: str
    table: str
    names: tuple[str, ...]
    converters: tuple[Converter, ...]
    replica_identity: str


@dataclass
class _Transaction:
    xid: int
    commit_lsn: int
    commit_time: datetime
    commit_text: str  # the commit LSN as text: the position of its changes and the prefix of their ids
    changes: list[Change] | None = None  # kept only for transaction handlers
    delivered: int = 0
    acked: int = 0
    end_lsn: int | None = None  # known at Commit


@dataclass
class _Pending:
    """Transactions delivered but not yet fully acknowledged, oldest first."""

    by_commit: OrderedDict[int, _Transaction] = field(default_factory=OrderedDict)

    def __bool__(self) -> bool:
        return bool(self.by_commit)


def publication_name(tables: Sequence[TableName]) -> str:
    """A stable publication name for a set of tables."""
    key = ",".join(sorted(f"{t.schema}.{t.table}" for t in tables))
    return "pgchanges_" + hashlib.sha256(key.encode()).hexdigest()[:16]


class LogicalSource:
    """Changes of ``tables`` from a replication slot (``slot``; a temporary one when None)."""

    name = "logical"

    def __init__(
        self,
        conninfo: str,
        tables: Sequence[TableName],
        channels: Sequence[str] = (),
        *,
        slot: str | None = None,
        publication: str | None = None,
        auto_install: bool = True,
        batch_size: int = 1000,
        replica_identity_full: bool = False,
        backoff: Backoff = Backoff(),  # noqa: B008 - immutable
        retained_warning_bytes: int = RETAINED_WARNING_BYTES,
        snapshot: bool = False,
    ) -> None:
        require_tables(self.name, tables, channels)
        self._conninfo = conninfo
        self._tables = list(dict.fromkeys(tables))
        self.temporary = slot is None
        self.slot = check_slot_name(slot) if slot else f"pgchanges_tmp_{uuid.uuid4().hex[:12]}"
        self.publication = publication or publication_name(self._tables)
        self._auto_install = auto_install
        self.batch_size = batch_size
        self._replica_identity_full = replica_identity_full
        self._backoff = backoff
        self._retained_warning = retained_warning_bytes
        self._control: psycopg.Connection[Any] | None = None
        self._stream = ReplicationStream(conninfo)
        self._decoder = Decoder()
        self._relations: dict[int, _Relation] = {}
        self._pending = _Pending()
        self._current: _Transaction | None = None
        self._seq = 0
        self._flushed = 0
        self._last_sent = -1
        self._last_status = 0.0
        self._stopping = False
        self._wait_scope: anyio.CancelScope | None = None
        self._collect = False  # keep each transaction's changes for transaction handlers
        self._emitted = 0  # changes emitted so far, to know when a whole transaction was dispatched
        # transactions whose changes are kept for transaction handlers: (number of its last change, it)
        self._completed: list[tuple[int, _Transaction]] = []
        self._want_snapshot = snapshot
        self._snapshot_plan: list[snapshot_mod.TableSnapshot] = []
        self._snapshot_name: str | None = None  # exported with the slot; None: read a fresh snapshot
        self._snapshot_position = ""
        self._snapshot_counts: dict[int, list[int]] = {}  # table oid -> [delivered, acked]
        self._snapshot_reading: set[int] = set()

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def open(self) -> None:
        self._control = await connect_async(self._conninfo)
        await anyio.to_thread.run_sync(self._prepare, self._control)
        await self._start_stream()

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        level = conn.execute("SHOW wal_level").fetchone()
        if not level or level[0] != "logical":
            raise CaptureError(
                f"wal_level is {level[0] if level else '?'}; logical capture needs wal_level = logical "
                "(ALTER SYSTEM SET wal_level = logical, then restart the server)"
            )
        try:
            ensure_publication(
                conn, self.publication, self._tables, self._replica_identity_full, auto_install=self._auto_install
            )
            slot_exists = conn.execute(
                "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", (self.slot,)
            ).fetchone()
            if self._want_snapshot and not self.temporary and slot_exists:
                if snapshot_mod.pending_slots(conn, self.slot):
                    self._snapshot_plan = snapshot_mod.plan(conn, self.slot, self._tables)
                    log.info("resuming the interrupted snapshot of slot %s", self.slot)
                else:
                    log.info("slot %s exists; its snapshot is done (or was never taken)", self.slot)
            elif self._want_snapshot:
                # a new slot: progress left by an earlier slot of the same name means nothing now
                conn.execute("DELETE FROM pgchanges.snapshot_progress WHERE slot = %s", (self.slot,))
                self._snapshot_plan = snapshot_mod.plan(conn, self.slot, self._tables)
                if not self.temporary:
                    snapshot_mod.start_progress(conn, self.slot, self._snapshot_plan)
            if not self.temporary and not self._snapshot_plan:
                ensure_slot(conn, self.slot)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise PermissionDenied(
                f"permission denied: {' '.join(str(exc).split())}. Logical capture needs the REPLICATION "
                "attribute (ALTER ROLE … REPLICATION) and ownership of the tables for the publication."
            ) from None
        if not self.temporary:
            self._warn_if_retaining(conn)

    def _warn_if_retaining(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(
            """SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) FROM pg_catalog.pg_replication_slots
               WHERE slot_name = %s""",
            (self.slot,),
        ).fetchone()
        if row and row[0] is not None and row[0] > self._retained_warning:
            log.warning(
                "replication slot %s retains %.1f MB of WAL; it advances only while a consumer acknowledges",
                self.slot,
                float(row[0]) / 1e6,
            )

    async def _start_stream(self) -> None:
        await self._stream.open()
        fresh_slot = self._snapshot_plan and (self.temporary or self._snapshot_plan[0].last_key is None)
        if fresh_slot and not await self._slot_exists():
            position, self._snapshot_name = await self._stream.create_slot_with_snapshot(
                self.slot, temporary=self.temporary
            )
            self._snapshot_position = position
            if not self.temporary:
                await anyio.to_thread.run_sync(self._remember_slot)
            return  # replication starts once the snapshot has been read
        if self.temporary and not self._snapshot_plan:
            await self._stream.create_temporary_slot(self.slot)
        if self._snapshot_plan:
            return
        await self._stream.start(self.slot, [self.publication])
        self._decoder = Decoder()
        self._pending = _Pending()
        self._current = None

    async def _slot_exists(self) -> bool:
        assert self._control is not None
        row = await anyio.to_thread.run_sync(
            lambda: self._control.execute(  # type: ignore[union-attr]
                "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", (self.slot,)
            ).fetchone()
        )
        return row is not None

    def _remember_slot(self) -> None:
        assert self._control is not None
        self._control.execute(
            "INSERT INTO pgchanges.logical_objects (kind, name) VALUES ('slot', %s) ON CONFLICT DO NOTHING",
            (self.slot,),
        )

    async def _snapshot_batches(self) -> AsyncIterator[list[Event]]:
        """The tables' rows as of the slot's start point (or, resuming, as of now), page by page."""
        reader = await connect_async(self._conninfo, autocommit=False)
        try:
            await anyio.to_thread.run_sync(self._begin_snapshot, reader)
            for item in self._snapshot_plan:
                self._snapshot_counts[item.oid] = [0, 0]
                self._snapshot_reading.add(item.oid)
                pages = snapshot_mod.read_pages(reader, item)
                while (page := await anyio.to_thread.run_sync(next, pages, None)) is not None:
                    self._snapshot_counts[item.oid][0] += len(page)
                    yield [snapshot_mod.to_change(self.slot, item, row, self._snapshot_position) for row in page]
                self._snapshot_reading.discard(item.oid)
                await self._record_snapshot(item.oid, None)
            await anyio.to_thread.run_sync(reader.commit)
        finally:
            await close_async(reader)
        self._snapshot_plan = []
        self._snapshot_name = None
        await self._stream.start(self.slot, [self.publication])

    def _begin_snapshot(self, reader: psycopg.Connection[Any]) -> None:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        if self._snapshot_name:
            reader.execute("SET TRANSACTION SNAPSHOT %s" % sql.quote(self._snapshot_name))  # noqa: UP031
        if not self._snapshot_position:
            row = reader.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            self._snapshot_position = str(row[0]) if row else ""

    async def _record_snapshot(self, oid: int, last_key: list[Any] | None) -> None:
        if self.temporary or self._control is None:
            return
        delivered, acked = self._snapshot_counts.get(oid, [0, 0])
        done = oid not in self._snapshot_reading and acked >= delivered
        control = self._control
        await anyio.to_thread.run_sync(snapshot_mod.record, control, self.slot, oid, last_key, done)

    async def close(self) -> None:
        if self._control is not None and not self._control.closed and self._flushed:
            with contextlib.suppress(ReplicationLost):
                self._stream.send_status(self._flushed)
        await self._stream.close()
        control, self._control = self._control, None
        await close_async(control)

    def stop(self) -> None:
        self._stopping = True
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    # -- reading -------------------------------------------------------------------------------------------

    async def batches(self) -> AsyncIterator[list[Event]]:
        if self._snapshot_plan:
            async for page in self._snapshot_batches():
                yield page
        failures = 0
        while not self._stopping:
            try:
                with anyio.CancelScope() as self._wait_scope:
                    messages = await self._stream.read()
                self._wait_scope = None
                if self._stopping:
                    return
                failures = 0
                batch = await self._handle(messages)
            except (ReplicationLost, ConnectError, psycopg.OperationalError) as exc:
                delay = self._backoff.delay(failures)
                failures += 1
                log.warning("replication connection lost (%s); reconnecting in %.2fs", exc, delay)
                await anyio.sleep(delay)
                await self._stream.close()
                try:
                    await self._start_stream()
                except (ReplicationLost, ConnectError, CaptureError, psycopg.OperationalError) as again:
                    log.warning("reconnecting failed: %s", again)
                    continue
                if self.temporary:
                    yield [gap_marker(self.name, f"temporary slot lost with the connection: {exc}")]
                continue
            if batch:
                for start in range(0, len(batch), self.batch_size):
                    yield batch[start : start + self.batch_size]
            elif self._completed:
                yield []  # a commit came without changes of its own: its transaction handlers are due
            self._maybe_send_status()

    async def _handle(self, messages: list[Any]) -> list[Event]:
        out: list[Event] = []
        decoder = self._decoder
        decode = decoder.decode
        for message in messages:
            if isinstance(message, Keepalive):
                if not self._pending and self._current is None and message.wal_end > self._flushed:
                    self._flushed = message.wal_end  # nothing in flight: let the slot follow the server
                if message.reply_requested:
                    self._send_status()
                continue
            payload = message.payload
            current = self._current
            if current is not None and current.changes is None and is_plain_insert(payload) and not decoder.in_stream:
                out.append(self._insert_change(payload, current))  # the common case, without detours
                continue
            change = await self._apply(decode(payload))
            if change is not None:
                out.extend(change)
        return out

    async def _apply(self, message: Any) -> list[Change] | None:
        kind = type(message)
        if kind is Begin:
            self._current = _Transaction(
                message.xid,
                message.final_lsn,
                message.commit_time,
                lsn_to_str(message.final_lsn),
                [] if self._collect else None,
            )
            self._seq = 0
            return None
        if kind is Commit:
            self._commit(message)
            return None
        if kind is Relation:
            self._relations[message.oid] = await self._relation(message)
            return None
        changes = self._changes_of(message)
        current = self._current
        if changes and current is not None and current.changes is not None:
            current.changes.extend(changes)
        return changes

    def _commit(self, message: Commit) -> None:
        txn, self._current = self._current, None
        if txn is None:
            return
        txn.end_lsn = message.end_lsn
        if txn.changes:
            # its transaction handlers are one more thing to acknowledge: the slot waits for them
            txn.delivered += 1
            self._completed.append((self._emitted, txn))
        if txn.delivered == 0:
            self._advance_to(message.end_lsn)
        else:
            self._pending.by_commit[txn.commit_lsn] = txn
            self._complete_prefix()

    def _changes_of(self, message: Any) -> list[Change] | None:
        kind = type(message)
        if kind is Insert or kind is Update or kind is Delete:
            return [self._row_change(message)]
        if kind is Truncate:
            return [self._truncate_change(oid) for oid in message.relation_oids if oid in self._relations]
        if kind is LogicalMessage:
            return [self._message_change(message)]
        if kind is StreamStart:
            raise CaptureError("streamed transactions were not requested")
        return None

    async def _relation(self, message: Relation) -> _Relation:
        oids = {c.type_oid for c in message.columns}
        types = {}
        if any(oid >= 10_000 for oid in oids):  # user-defined: domains, enums, arrays of them
            assert self._control is not None
            types = await anyio.to_thread.run_sync(fetch_type_info, self._control, oids)
        return _Relation(
            message.namespace,
            message.name,
            tuple(c.name for c in message.columns),
            tuple(text_converter(types, c.type_oid) for c in message.columns),
            message.replica_identity,
        )

    @staticmethod
    def _values(relation: _Relation, data: TupleData) -> dict[str, Any]:
        return typed_values(relation.names, relation.converters, data.values)

    def _next_id(self) -> tuple[str, _Transaction | None]:
        txn = self._current
        self._seq += 1
        self._emitted += 1
        if txn is not None:
            txn.delivered += 1
            return f"{txn.commit_text}:{self._seq}", txn
        return f"nontx:{uuid.uuid4().hex}", None

    def _row_change(self, message: Insert | Update | Delete) -> Change:
        relation = self._relations[message.relation_oid]
        change_id, txn = self._next_id()
        new = old = None
        changed = EMPTY
        op: Op
        if isinstance(message, Insert):
            op, new = "insert", self._values(relation, message.new)
        elif isinstance(message, Update):
            op, new = "update", self._values(relation, message.new)
            if message.old is not None:
                old = self._values(relation, message.old)
                if message.old_kind == "O":
                    changed = tuple(k for k, v in new.items() if v is not UNCHANGED_TOAST and old.get(k) != v)
        else:
            op, old = "delete", self._values(relation, message.old)
        return Change(
            change_id,
            op,
            relation.schema,
            relation.table,
            freeze(new),
            freeze(old),
            changed,
            txn.xid if txn else None,
            txn.commit_time if txn else None,
            txn.commit_text if txn else None,
            self.name,
        )

    def _insert_change(self, payload: bytes | memoryview, txn: _Transaction) -> Change:
        relation = self._relations[insert_relation(payload)]
        self._seq += 1
        self._emitted += 1
        txn.delivered += 1
        return Change(
            f"{txn.commit_text}:{self._seq}",
            "insert",
            relation.schema,
            relation.table,
            LazyRow(relation.names, relation.converters, payload),
            None,
            EMPTY,
            txn.xid,
            txn.commit_time,
            txn.commit_text,
            "logical",
        )

    def _truncate_change(self, oid: int) -> Change:
        relation = self._relations[oid]
        change_id, txn = self._next_id()
        return Change(
            change_id,
            "truncate",
            relation.schema,
            relation.table,
            None,
            None,
            EMPTY,
            txn.xid if txn else None,
            txn.commit_time if txn else None,
            txn.commit_text if txn else None,
            self.name,
        )

    def _message_change(self, message: LogicalMessage) -> Change:
        if message.transactional:
            change_id, txn = self._next_id()
        else:
            change_id, txn = f"message:{lsn_to_str(message.lsn)}", None
        return Change(
            change_id,
            "message",
            None,
            None,
            None,
            None,
            EMPTY,
            txn.xid if txn else None,
            txn.commit_time if txn else None,
            lsn_to_str(message.lsn),
            self.name,
            freeze({"prefix": message.prefix, "content": message.content, "transactional": message.transactional}),
        )

    # -- acknowledging -------------------------------------------------------------------------------------

    async def ack(self, changes: Sequence[Change]) -> None:
        """Mark ``changes`` handled; the slot advances past every transaction that is handled completely."""
        snapshot_keys: dict[int, list[Any] | None] = {}
        for change in changes:
            commit_text, _, _ = change.id.partition(":")
            if commit_text == "snapshot":
                oid = int(change.id.split(":")[2])
                self._snapshot_counts.setdefault(oid, [0, 0])[1] += 1
                snapshot_keys[oid] = (change.extra or {}).get("key")
                continue
            if commit_text in ("nontx", "message", "gap"):
                continue
            txn = self._find(commit_text)
            if txn is not None:
                txn.acked += 1
            elif self._current is not None and self._current.commit_text == commit_text:
                self._current.acked += 1
        for oid, key in snapshot_keys.items():
            await self._record_snapshot(oid, key)
        if not snapshot_keys:
            self._complete_prefix()
            self._maybe_send_status()

    def _find(self, commit_text: str) -> _Transaction | None:
        for txn in self._pending.by_commit.values():
            if txn.commit_text == commit_text:
                return txn
        return None

    def _complete_prefix(self) -> None:
        while self._pending.by_commit:
            first = next(iter(self._pending.by_commit.values()))
            if first.acked < first.delivered or first.end_lsn is None:
                return
            self._pending.by_commit.popitem(last=False)
            self._advance_to(first.end_lsn)

    def _advance_to(self, lsn: int) -> None:
        self._flushed = max(self._flushed, lsn)

    def _maybe_send_status(self) -> None:
        """Report progress when the flushed LSN moved, or at least every STATUS_INTERVAL_SECONDS."""
        moved = self._flushed != self._last_sent
        if moved or time.monotonic() - self._last_status >= STATUS_INTERVAL_SECONDS:
            self._send_status()

    def _send_status(self) -> None:
        self._last_status = time.monotonic()
        self._last_sent = self._flushed
        self._stream.send_status(self._flushed)

    # -- App path ------------------------------------------------------------------------------------------

    async def serve(
        self,
        handling: Handling,
        on_transaction: Callable[[list[Change]], Awaitable[None]] | None = None,
    ) -> None:
        """Run handlers in commit order; acknowledge each change once its handlers returned.

        ``on_transaction`` gets every change of a transaction at once, after its commit and after the
        per-change handlers of its last change; the slot does not pass the transaction before it returned.
        A handler that raises is logged with the change id and the change is acknowledged all the same (use
        the outbox source for retries); with ``App(on_error="stop")`` the App stops without acknowledging,
        and the change is delivered again after a restart.
        """
        self._collect = on_transaction is not None
        dispatched = 0
        async for batch in self.batches():
            await handling.handle_all([e for e in batch if isinstance(e, Change) and e.op != "gap"])
            dispatched += sum(1 for e in batch if isinstance(e, Change) and _numbered(e))
            if on_transaction is not None:
                while self._completed and self._completed[0][0] <= dispatched:
                    txn = self._completed.pop(0)[1]
                    changes, txn.changes = txn.changes or [], None
                    await on_transaction(changes)
                    txn.acked += 1
            await self.ack([e for e in batch if isinstance(e, Change)])
            if self._stopping:
                return


def _numbered(change: Change) -> bool:
    """Whether the change took a number from ``_next_id`` (everything but gaps and non-transactional messages)."""
    return change.op != "gap" and not change.id.startswith("message:")


def ensure_publication(
    conn: psycopg.Connection[Any],
    name: str,
    tables: Sequence[TableName],
    full: bool,
    *,
    auto_install: bool = True,
) -> None:
    """Create the publication when missing and the capture rules that fill it (optionally REPLICA IDENTITY FULL).

    The publication is created empty and filled by the rules, so a pattern that matches no table yet still
    gives a publication to stream from; tables created later join it (capture/sql/0006_follow.sql).
    """
    exists = conn.execute("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = %s", (name,)).fetchone()
    if exists is None:
        if not auto_install:
            names = " ".join(f"'{t}'" if t.is_pattern else str(t) for t in tables)
            raise NotInstalled(f"logical capture is not installed; run `pgchanges install {names} --source logical`")
        migrations.migrate(conn)
        with conn.transaction():
            conn.execute(sql.SQL("CREATE PUBLICATION {}").format(sql.Identifier(name)))
            conn.execute(
                "INSERT INTO pgchanges.logical_objects (kind, name) VALUES ('publication', %s) ON CONFLICT DO NOTHING",
                (name,),
            )
    capture.ensure_capture(
        conn, tables, "logical", auto_install=auto_install, publication=name, replica_identity_full=full
    )


def ensure_slot(conn: psycopg.Connection[Any], slot: str) -> None:
    exists = conn.execute("SELECT plugin FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    if exists is None:
        conn.execute("SELECT pg_catalog.pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        conn.execute(
            "INSERT INTO pgchanges.logical_objects (kind, name) VALUES ('slot', %s) ON CONFLICT DO NOTHING", (slot,)
        )
        log.info("created replication slot %s", slot)
    elif exists[0] != "pgoutput":
        raise CaptureError(f"replication slot {slot} uses plugin {exists[0]}, not pgoutput")
