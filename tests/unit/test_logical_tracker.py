"""The logical source's accounting without a server: encoded pgoutput messages in, changes and the position
to confirm out (pgchanges.sources.logical_tracker)."""

from datetime import UTC, datetime

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pgchanges import pgoutput as p
from pgchanges import rowmaps
from pgchanges.db.replication import Keepalive
from pgchanges.errors import CaptureError
from pgchanges.sources.logical_changes import relation_info
from pgchanges.sources.logical_tracker import TransactionTracker
from tests.pgoutput_encoder import encode

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ORDERS = p.Relation(
    None, 16384, "public", "orders", "f", (p.Column("id", 23, -1, True), p.Column("note", 25, -1, False))
)
CONVERTERS = {23: int, 25: lambda b: bytes(b).decode()}


XLOG_HEADER = b"w" + bytes(24)  # WAL start, WAL end, send time: the tracker reads none of them


def wire(messages):
    """Replication messages as the stream reads them: keepalives as they are, pgoutput messages encoded in an
    XLogData message."""
    return [m if isinstance(m, Keepalive) else memoryview(XLOG_HEADER + encode(m)) for m in messages]


def receive(tracker, messages):
    """The changes of one read, resolving each Relation as LogicalSource does (without the catalog)."""
    out = []
    rest = iter(wire(messages))
    while (relation := tracker.receive(rest, out)) is not None:
        tracker.add_relation(relation_info(relation, CONVERTERS.__getitem__))
    return out


def row(i, note="x"):
    return p.TupleData((str(i).encode(), note.encode()))


def insert(i, note="x"):
    return p.Insert(None, ORDERS.oid, row(i, note))


def transaction(commit_lsn, xid, *changes):
    """Begin, the changes, Commit; the commit record ends 8 bytes after it starts."""
    return [p.Begin(commit_lsn, AT, xid), *changes, p.Commit(0, commit_lsn, commit_lsn + 8, AT)]


def test_changes_carry_ids_positions_and_typed_values():
    tracker = TransactionTracker()
    got = receive(
        tracker,
        [
            ORDERS,
            *transaction(
                0x100,
                7,
                insert(1, "new"),
                p.Update(None, ORDERS.oid, "O", row(1, "new"), row(1, "paid")),
                p.Delete(None, ORDERS.oid, "O", row(1, "paid")),
                p.Truncate(None, 0, (ORDERS.oid, 99999)),  # a relation never described is left out
                p.LogicalMessage(None, True, 0x180, "audit", b"hello"),
            ),
            p.LogicalMessage(None, False, 0x200, "ping", b""),
        ],
    )
    assert [c.id for c in got] == [f"0/100:{n}" for n in range(1, 6)] + ["message:0/200"]
    assert [c.op for c in got] == ["insert", "update", "delete", "truncate", "message", "message"]
    assert all(c.position == "0/100" and c.xid == 7 and c.commit_time == AT for c in got[:4])
    assert dict(got[0].new) == {"id": 1, "note": "new"} and got[0].old is None
    assert got[1].old == {"id": 1, "note": "new"} and got[1].new == {"id": 1, "note": "paid"}
    assert got[1].changed == ("note",)
    assert got[2].old == {"id": 1, "note": "paid"} and got[2].new is None
    assert (got[3].schema, got[3].table) == ("public", "orders")
    assert got[4].position == "0/180"
    assert got[4].extra == {"prefix": "audit", "content": b"hello", "transactional": True}
    assert got[5].xid is None and got[5].extra["transactional"] is False
    assert all(c.source == "logical" for c in got)


def test_the_fast_paths_make_the_changes_the_decoder_makes():
    """Rows of a transaction that is not collected are read in place (inserts, updates without a whole old
    row, deletes); a collected one goes through the Decoder. Both give equal changes."""
    fast, decoded = TransactionTracker(), TransactionTracker(collect=True)  # collected: never the fast path
    key_only = p.TupleData((b"2", None))
    messages = [
        ORDERS,
        *transaction(
            0x100,
            7,
            insert(1, "a"),
            insert(2, "b"),
            p.Update(None, ORDERS.oid, None, None, row(1, "c")),
            p.Update(None, ORDERS.oid, "K", key_only, row(3, "d")),
            p.Delete(None, ORDERS.oid, "K", key_only),
            p.Delete(None, ORDERS.oid, "O", row(1, "c")),
        ),
    ]

    def plain(changes):
        return [c._replace(new=c.new and dict(c.new), old=c.old and dict(c.old)) for c in changes]

    lazy, typed = receive(fast, messages), receive(decoded, messages)
    assert [c.op for c in lazy] == ["insert", "insert", "update", "update", "delete", "delete"]
    assert plain(lazy) == plain(typed)
    assert {type(c.new or c.old) for c in lazy} == {rowmaps.Row}  # typed when first read
    assert lazy[3].old == {"id": 2, "note": None} and lazy[3].new == {"id": 3, "note": "d"}


def test_an_update_with_the_whole_old_row_gets_its_changed_columns():
    tracker = TransactionTracker()
    update = p.Update(None, ORDERS.oid, "O", row(1, "a"), row(1, "b"))
    (change,) = receive(tracker, [ORDERS, *transaction(0x100, 7, update)])
    assert change.changed == ("note",) and change.old == {"id": 1, "note": "a"}


def test_the_slot_waits_for_every_change_and_every_transaction_before():
    tracker = TransactionTracker()
    first = receive(tracker, [ORDERS, *transaction(0x100, 1, insert(1), insert(2))])
    second = receive(tracker, transaction(0x200, 2, insert(3)))
    tracker.ack(second)
    assert tracker.flushed == 0  # the first transaction is not acknowledged yet
    tracker.ack(first[:1])
    assert tracker.flushed == 0
    tracker.ack(first[1:])
    assert tracker.flushed == 0x208 and not tracker.in_flight


def test_changes_of_the_open_transaction_can_be_acknowledged_before_its_commit():
    tracker = TransactionTracker()
    begun = receive(tracker, [ORDERS, p.Begin(0x100, AT, 1), insert(1), insert(2)])
    tracker.ack(begun)
    assert tracker.flushed == 0 and tracker.in_flight
    rest = receive(tracker, [insert(3), p.Commit(0, 0x100, 0x108, AT)])
    assert tracker.flushed == 0
    tracker.ack(rest)
    assert tracker.flushed == 0x108


def test_a_transaction_without_changes_does_not_pass_an_unacknowledged_one():
    tracker = TransactionTracker()
    first = receive(tracker, [ORDERS, *transaction(0x100, 1, insert(1))])
    receive(tracker, transaction(0x200, 2))  # e.g. a transaction on other tables, before PostgreSQL 15
    assert tracker.flushed == 0
    tracker.ack(first)
    assert tracker.flushed == 0x208


def test_keepalives_follow_the_wal_end_only_with_nothing_in_flight():
    tracker = TransactionTracker()
    receive(tracker, [Keepalive(0x50, False)])
    assert tracker.flushed == 0x50  # nothing in flight: the slot follows the server
    changes = receive(tracker, [ORDERS, p.Begin(0x100, AT, 1), insert(1), Keepalive(0x90, False)])
    assert tracker.flushed == 0x50  # a transaction is open
    receive(tracker, [p.Commit(0, 0x100, 0x108, AT), Keepalive(0x120, False)])
    assert tracker.flushed == 0x50  # committed, not acknowledged
    tracker.ack(changes)
    assert tracker.flushed == 0x108
    receive(tracker, [Keepalive(0x100, False)])
    assert tracker.flushed == 0x108  # never back
    receive(tracker, [Keepalive(0x300, True)])
    assert tracker.flushed == 0x300 and tracker.reply_requested


def test_transaction_handlers_get_a_whole_transaction_once_its_changes_were_dispatched():
    tracker = TransactionTracker(collect=True)
    changes = receive(tracker, [ORDERS, *transaction(0x100, 1, insert(1), insert(2), insert(3))])
    first, second = tracker.in_batches(changes, 2)
    assert [len(first), len(second)] == [2, 1]
    tracker.dispatched(first)
    assert tracker.next_transaction() is None  # its last change was not dispatched yet
    tracker.dispatched(second)
    txn, whole = tracker.next_transaction()
    assert whole == changes and tracker.next_transaction() is None
    tracker.ack(changes)
    assert tracker.flushed == 0  # its handlers are one more thing to acknowledge
    tracker.transaction_returned(txn)
    assert tracker.flushed == 0x108


def test_a_commit_in_a_read_of_its_own_yields_an_empty_batch_when_handlers_are_due():
    for collect, expected in ((True, [[]]), (False, [])):
        tracker = TransactionTracker(collect=collect)
        receive(tracker, [ORDERS, p.Begin(0x100, AT, 1), insert(1)])
        assert tracker.in_batches(receive(tracker, [p.Commit(0, 0x100, 0x108, AT)]), 10) == expected


def test_snapshot_rows_and_gaps_do_not_count_as_dispatched_changes():
    tracker = TransactionTracker(collect=True)
    changes = receive(tracker, [ORDERS, *transaction(0x100, 1, insert(1), insert(2))])
    others = [changes[0]._replace(id=f"snapshot:slot:16384:[{i}]") for i in range(5)]
    tracker.dispatched([*others, changes[0]._replace(id="gap:x"), changes[0]])
    assert tracker.next_transaction() is None
    tracker.dispatched(changes[1:])
    assert tracker.next_transaction() is not None


def test_a_restart_forgets_what_was_in_flight():
    tracker = TransactionTracker()
    receive(tracker, [ORDERS, p.Begin(0x100, AT, 1), insert(1)])
    tracker.restart()
    assert not tracker.in_flight
    again = receive(tracker, transaction(0x100, 1, insert(1)))  # the server sends it again, whole
    assert [c.id for c in again] == ["0/100:1"]
    tracker.ack(again)
    assert tracker.flushed == 0x108


def test_streamed_transactions_are_refused():
    with pytest.raises(CaptureError, match="streamed"):
        receive(TransactionTracker(), [p.StreamStart(5, True)])


def test_many_pending_transactions_are_acknowledged_in_any_order():
    tracker = TransactionTracker()
    changes = receive(tracker, [ORDERS] + [m for i in range(2000) for m in transaction(0x100 * (i + 1), i, insert(i))])
    tracker.ack(changes[1:][::-1])
    assert tracker.flushed == 0
    tracker.ack(changes[:1])
    assert tracker.flushed == 0x100 * 2000 + 8


KINDS = st.sampled_from(["insert", "update", "delete", "message"])


def change_message(kind, i, lsn):
    if kind == "insert":
        return insert(i)
    if kind == "update":
        return p.Update(None, ORDERS.oid, None, None, row(i, "u"))
    if kind == "delete":
        return p.Delete(None, ORDERS.oid, "K", p.TupleData((str(i).encode(), None)))
    return p.LogicalMessage(None, True, lsn, "m", b"")


class Accounting(RuleBasedStateMachine):
    """Any sequence of transactions, read in any grouping with keepalives between, acknowledged in any order
    and grouping, with transaction handlers returning at any time: the position to confirm never passes a
    transaction that is not done, never goes back, and reaches the last commit's end once all is done."""

    @initialize(shapes=st.lists(st.lists(KINDS, max_size=4), min_size=1, max_size=6), collect=st.booleans())
    def start(self, shapes, collect):
        self.tracker = TransactionTracker(collect=collect)
        self.txns = []
        self.script = [(None, ORDERS)]
        for n, kinds in enumerate(shapes):
            commit = 0x1000 * (n + 1)
            self.txns.append({"commit": commit, "end": commit + 8, "size": len(kinds), "handler": collect and kinds})
            self.script.append((n, p.Begin(commit, AT, n + 1)))
            self.script += [(n, change_message(k, i, commit - 0x100 + i)) for i, k in enumerate(kinds)]
            self.script.append((n, p.Commit(0, commit, commit + 8, AT)))
        self.by_text = {p.lsn_to_str(t["commit"]): t for t in self.txns}
        for t in self.txns:
            t.update(begun=False, committed=False, delivered=[], acked=0, returned=False)
        self.sent = 0
        self.unacked = []
        self.running = []
        self.last_flushed = 0

    def done(self, t):
        return t["committed"] and t["acked"] == t["size"] and (t["returned"] or not t["handler"])

    def wal_end_limit(self):
        """A keepalive carries how far the server decoded: no transaction it has not begun to send lies before."""
        waiting = [t["commit"] for t in self.txns if not t["begun"]]
        return waiting[0] if waiting else self.txns[-1]["end"] + 0x100

    def note_sent(self, index, message):
        if index is not None:
            t = self.txns[index]
            t["begun"] = True
            t["committed"] = t["committed"] or isinstance(message, p.Commit)

    @precondition(lambda self: self.sent < len(self.script))
    @rule(data=st.data())
    def read(self, data):
        messages = []
        for _ in range(data.draw(st.integers(1, 5))):
            if data.draw(st.booleans()):
                messages.append(Keepalive(data.draw(st.integers(0, self.wal_end_limit())), False))
            elif self.sent < len(self.script):
                index, message = self.script[self.sent]
                self.sent += 1
                self.note_sent(index, message)
                messages.append(message)
        changes = receive(self.tracker, messages)
        for change in changes:
            self.by_text[change.id.partition(":")[0]]["delivered"].append(change)
        self.unacked += changes
        for batch in self.tracker.in_batches(changes, data.draw(st.integers(1, 3))):
            self.tracker.dispatched(batch)
            while (due := self.tracker.next_transaction()) is not None:
                t = self.by_text[due[0].commit_text]
                assert t["committed"] and due[1] == t["delivered"] and len(due[1]) == t["size"]
                self.running.append((t, due[0]))

    @precondition(lambda self: self.unacked)
    @rule(data=st.data())
    def ack(self, data):
        picked = data.draw(st.lists(st.sampled_from(range(len(self.unacked))), min_size=1, unique=True))
        group = [self.unacked[i] for i in picked]
        self.unacked = [c for i, c in enumerate(self.unacked) if i not in set(picked)]
        self.tracker.ack(group)
        for change in group:
            self.by_text[change.id.partition(":")[0]]["acked"] += 1

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def handler_returns(self, data):
        t, handle = self.running.pop(data.draw(st.integers(0, len(self.running) - 1)))
        t["returned"] = True
        self.tracker.transaction_returned(handle)

    @rule(data=st.data())
    def keepalive_alone(self, data):
        before = self.tracker.flushed
        in_flight = any(t["begun"] and not self.done(t) for t in self.txns)
        wal_end = data.draw(st.integers(0, self.wal_end_limit()))
        receive(self.tracker, [Keepalive(wal_end, False)])
        assert self.tracker.flushed == (before if in_flight else max(before, wal_end))

    @invariant()
    def never_passes_a_transaction_that_is_not_done(self):
        flushed = self.tracker.flushed
        for t in self.txns:
            if not self.done(t):
                assert flushed <= t["commit"]

    @invariant()
    def never_goes_back(self):
        assert self.tracker.flushed >= self.last_flushed
        self.last_flushed = self.tracker.flushed

    @invariant()
    def reaches_the_last_end_once_all_is_done(self):
        if all(self.done(t) for t in self.txns):
            assert self.tracker.flushed >= self.txns[-1]["end"]
            assert not self.tracker.in_flight


Accounting.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestAccounting = Accounting.TestCase
