"""The logical source's transactions and acknowledgements, as pure state: this module owns all of it.

Like h11's ``_connection.py`` for HTTP, :class:`TransactionTracker` holds every piece of state of the logical
source's accounting and every transition of it, and does no I/O: no sockets, no anyio, no psycopg calls.
:class:`~pgchanges.sources.logical.LogicalSource` does the I/O around it (the replication stream, the control
connection, catalog lookups, the snapshot, reconnecting) and asks the tracker what to hand on and confirm.

Messages in, changes out. :meth:`~TransactionTracker.receive` takes the messages of one read of the stream
(XLogData and keepalives), decodes the pgoutput payloads and appends the changes they make. A change's id is
``<commit LSN>:<n>``, n counting from 1 in its transaction, so it is the same when the transaction is
delivered again after a restart. With ``collect`` set (the App has transaction handlers) the changes of each
transaction are kept, to hand them on together after its commit. A plain Insert outside a collected
transaction takes a fast path that does not decode the row: it is split and typed when first read (LazyRow).

Relations need I/O. Typing a table's columns may need catalog queries (domains, enums), so ``receive`` stops
at each Relation message and returns it. The caller resolves it into a
:class:`~pgchanges.sources.logical_changes.RelationInfo`, hands that to :meth:`~TransactionTracker.add_relation`
and calls ``receive`` again with the same iterator, which goes on after the Relation. This keeps the loop over
the messages, the hot path, in one function with no event objects per message.

Acknowledgements in, the position to confirm out. A transaction is pending from its Begin until it is done:
its Commit arrived, each change of it was acknowledged (:meth:`~TransactionTracker.ack`) and, when its changes
were collected, its transaction handlers returned, which counts as one more thing to acknowledge.
:attr:`~TransactionTracker.flushed`, the position to confirm to the slot, moves to the end of a transaction
only when it and every transaction before it are done, and never moves back. With nothing in flight (nothing
pending), a keepalive moves it to the server's WAL end, so a slot whose tables are quiet does not retain WAL
while other tables are busy; a keepalive's WAL end is where the server's decoding has got to, so no
transaction that it has not sent yet lies before it.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from pgchanges.change import EMPTY, Change, Op, new_change
from pgchanges.db.replication import PAYLOAD_START, Keepalive, StreamMessage
from pgchanges.errors import CaptureError
from pgchanges.pgoutput import (
    BEGIN,
    COMMIT,
    Begin,
    Commit,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Relation,
    StreamStart,
    Truncate,
    Update,
    insert_relation,
    lsn_to_str,
    pg_timestamp,
    plain_delete,
    plain_update,
)
from pgchanges.rowmaps import Row
from pgchanges.sources.logical_changes import (
    RelationInfo,
    message_change,
    row_change,
    truncate_change,
)

_ROW_TAGS = frozenset(b"IUD")
_AT = PAYLOAD_START
# the first part of the id of changes that no transaction of the stream numbers (see ``_counted``)
_UNCOUNTED = ("message:", "snapshot:", "gap:")


@dataclass(slots=True)
class Transaction:
    """One transaction of the stream, from its Begin until it is done."""

    xid: int
    commit_lsn: int
    commit_time: datetime
    commit_text: str  # the commit LSN as text: the position of its changes and the prefix of their ids
    changes: list[Change] | None  # kept only for transaction handlers
    delivered: int = 0  # its changes so far (the number of the last one), plus one for its handlers
    acked: int = 0
    end_lsn: int | None = None  # known at Commit

    @property
    def done(self) -> bool:
        return self.end_lsn is not None and self.acked >= self.delivered


class TransactionTracker:
    """Replication messages in, changes out; acknowledgements in, the position to confirm (:attr:`flushed`)."""

    def __init__(self, *, collect: bool = False) -> None:
        self.collect = collect  # keep each transaction's changes for transaction handlers
        self.flushed = 0  # the position to confirm: every transaction that ends before it is done
        self.reply_requested = False  # a keepalive asked for a status update; the caller clears it
        #: which replication session the changes come from (restart() starts a new one): changes of an earlier
        #: one come again, and their acknowledgements must not count for the ones that came again
        self.session = 0
        self._relations: dict[int, RelationInfo] = {}
        self._decoder = Decoder()
        self._current: Transaction | None = None
        self._pending: dict[str, Transaction] = {}  # by commit text, to find a change's transaction
        self._order: deque[Transaction] = deque()  # the same, oldest first, to find the done prefix
        self._emitted = 0  # changes counted so far (see ``_counted``), to know when a transaction was handed on
        self._dispatched = 0  # of those, the ones whose per-change handlers ran
        self._completed: deque[tuple[int, Transaction]] = deque()  # collected: (count at its last change, it)

    @property
    def in_flight(self) -> bool:
        """Whether a transaction was begun and is not done yet."""
        return bool(self._pending)

    def restart(self) -> None:
        """A new replication session: the server sends again everything after the confirmed position."""
        self.session += 1
        self._decoder = Decoder()
        self._current = None
        self._pending.clear()
        self._order.clear()
        self._completed.clear()
        self._emitted = self._dispatched = 0

    # -- messages in, changes out --------------------------------------------------------------------------

    def receive(self, messages: Iterator[StreamMessage], out: list[Change]) -> Relation | None:
        """Append the changes of ``messages`` to ``out``; stop at a Relation message and return it.

        The caller resolves a returned Relation, gives it to :meth:`add_relation` and calls again with the
        same iterator. None: every message was taken.

        The hot path of the logical source. Outside a streamed transaction, Begin, Commit and the rows of a
        transaction whose changes are not collected are read in place (no message objects; rows typed when
        first read); everything else goes through the :class:`~pgchanges.pgoutput.Decoder`.
        """
        decoder = self._decoder
        append = out.append
        for message in messages:
            if isinstance(message, Keepalive):
                self._keepalive(message)
                continue
            current = self._current
            size = len(message) - _AT  # the pgoutput payload starts at _AT of the XLogData message
            if not decoder.in_stream and size > 6:
                tag = message[_AT]
                if current is not None and current.changes is None and tag in _ROW_TAGS:
                    change = self._plain_row(tag, message, current)
                    if change is not None:
                        append(change)
                        continue
                elif tag == 66 and size == BEGIN.size:  # "B"
                    final_lsn, micros, xid = BEGIN.unpack_from(message, _AT)
                    self._begin_at(final_lsn, pg_timestamp(micros), xid)
                    continue
                elif tag == 67 and size == COMMIT.size:  # "C"
                    self._commit_at(COMMIT.unpack_from(message, _AT)[2])
                    continue
            decoded = decoder.decode(message[_AT:])
            if type(decoded) is Relation:
                return decoded
            changes = self._apply(decoded)
            if changes:
                out.extend(changes)
        return None

    def _plain_row(self, tag: int, message: memoryview, current: Transaction) -> Change | None:
        """The change of an Insert, Update or Delete read in place, or None when it needs the Decoder (an
        unknown relation, an Update with the whole old row, anything malformed in its header)."""
        relation = self._relations.get(insert_relation(message, _AT))
        if relation is None:
            return None
        names, converters = relation.names, relation.converters
        new = old = None
        op: Op
        if tag == 73:  # "I"
            if message[_AT + 5] != 78:
                return None
            op, new = "insert", Row(names, converters, message, _AT + 6, True)
        elif tag == 85:  # "U"
            starts = plain_update(message, _AT)
            if starts is None:
                return None
            op, new = "update", Row(names, converters, message, starts[1], True)
            if starts[0] >= 0:
                old = Row(names, converters, message, starts[0])
        else:  # "D"
            if not plain_delete(message, _AT):
                return None
            op, old = "delete", Row(names, converters, message, _AT + 6, True)
        # not counted in _emitted: only collected transactions need the count, and they take the Decoder
        current.delivered += 1
        text = current.commit_text
        fields = (f"{text}:{current.delivered}", op, relation.schema, relation.table, new, old, EMPTY, current.xid,
                  current.commit_time, text, "logical", None)  # fmt: skip
        return new_change(Change, fields)

    def add_relation(self, relation: RelationInfo) -> None:
        """The resolved form of the Relation message :meth:`receive` stopped at (or of any later one)."""
        self._relations[relation.oid] = relation

    def in_batches(self, changes: list[Change], size: int) -> list[list[Change]]:
        """``changes`` of one read, in batches of at most ``size``, as equal as they can be.

        A commit that came in a read of its own makes no change, but its transaction handlers are due: it
        yields one empty batch, so they run at once instead of after the next read.
        """
        if changes:  # in batches of equal size: 1,200 in 1,000s would make a batch of 200 pay a round trip
            step = -(-len(changes) // -(-len(changes) // size))
            return [changes[start : start + step] for start in range(0, len(changes), step)]
        return [[]] if self._completed else []

    def _keepalive(self, message: Keepalive) -> None:
        if not self._pending and message.wal_end > self.flushed:
            self.flushed = message.wal_end  # nothing in flight: let the slot follow the server
        if message.reply_requested:
            self.reply_requested = True

    def _apply(self, message: Message) -> list[Change] | None:
        if type(message) is Begin:
            self._begin(message)
            return None
        if type(message) is Commit:
            self._commit(message)
            return None
        changes = self._changes_of(message)
        current = self._current
        if changes and current is not None and current.changes is not None:
            current.changes.extend(changes)
        return changes

    def _begin(self, message: Begin) -> None:
        self._begin_at(message.final_lsn, message.commit_time, message.xid)

    def _begin_at(self, final_lsn: int, commit_time: datetime, xid: int) -> None:
        text = lsn_to_str(final_lsn)
        txn = Transaction(xid, final_lsn, commit_time, text, [] if self.collect else None)
        self._current = self._pending[text] = txn
        self._order.append(txn)

    def _commit(self, message: Commit) -> None:
        self._commit_at(message.end_lsn)

    def _commit_at(self, end_lsn: int) -> None:
        txn, self._current = self._current, None
        if txn is None:
            return
        txn.end_lsn = end_lsn
        if txn.changes:
            # its transaction handlers are one more thing to acknowledge: the slot waits for them
            txn.delivered += 1
            self._completed.append((self._emitted, txn))
        if txn.acked >= txn.delivered:  # done now (it had no changes): the prefix may move; otherwise it cannot
            self._complete_prefix()

    def _changes_of(self, message: Message) -> list[Change] | None:
        if isinstance(message, Insert | Update | Delete):
            return [row_change(self._relations[message.relation_oid], message, *self._next_id())]
        if isinstance(message, Truncate):
            known = [oid for oid in message.relation_oids if oid in self._relations]
            return [truncate_change(self._relations[oid], *self._next_id()) for oid in known]
        if isinstance(message, LogicalMessage):
            if not message.transactional:
                return [message_change(message, f"message:{lsn_to_str(message.lsn)}", None)]
            return [message_change(message, *self._next_id())]
        if isinstance(message, StreamStart):
            raise CaptureError("streamed transactions were not requested")
        return None  # Origin, Type and the stream messages make no change

    def _next_id(self) -> tuple[str, Transaction | None]:
        self._emitted += 1
        txn = self._current
        if txn is None:
            return f"nontx:{uuid.uuid4().hex}", None
        txn.delivered += 1
        return f"{txn.commit_text}:{txn.delivered}", txn

    # -- acknowledgements in, the position to confirm out --------------------------------------------------

    def ack(self, changes: Sequence[Change]) -> None:
        """Count ``changes`` as handled; :attr:`flushed` passes every transaction that is done now."""
        pending = self._pending
        last_text = ""
        txn: Transaction | None = None
        for change in changes:
            text = change.id.partition(":")[0]
            if text != last_text:  # changes of one transaction come together: look it up once
                last_text, txn = text, pending.get(text)
            if txn is not None:
                txn.acked += 1
        self._complete_prefix()

    def _complete_prefix(self) -> None:
        order, pending = self._order, self._pending
        while order:
            first = order[0]
            end = first.end_lsn
            if end is None or first.acked < first.delivered:  # not done (Transaction.done, inlined)
                return
            order.popleft()
            del pending[first.commit_text]
            self.flushed = max(self.flushed, end)

    # -- transaction handlers ------------------------------------------------------------------------------

    def dispatched(self, batch: Sequence[object]) -> None:
        """The per-change handlers of ``batch``, a batch :meth:`in_batches` gave, returned."""
        self._dispatched += sum(1 for e in batch if isinstance(e, Change) and _counted(e))

    def next_transaction(self) -> tuple[Transaction, list[Change]] | None:
        """A transaction whose changes were all dispatched, with its changes, for its transaction handlers.

        Give it back to :meth:`transaction_returned` once they returned: the slot does not pass it before.
        """
        if not self._completed or self._completed[0][0] > self._dispatched:
            return None
        txn = self._completed.popleft()[1]
        changes, txn.changes = txn.changes or [], None
        return txn, changes

    def transaction_returned(self, txn: Transaction) -> None:
        txn.acked += 1
        self._complete_prefix()


def _counted(change: Change) -> bool:
    """Whether the tracker counted ``change`` in ``_emitted`` (all it numbered, and non-transactional rows)."""
    return not change.id.startswith(_UNCOUNTED)
