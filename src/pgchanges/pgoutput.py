"""A decoder for PostgreSQL's ``pgoutput`` logical replication messages: bytes in, immutable messages out.

No I/O here (like h11): :class:`Decoder` takes the payload of each XLogData message and returns one of the
message classes below. Protocol versions 1 and 2 are supported; version 2 adds streamed in-progress
transactions, whose messages between Stream Start and Stream Stop carry the transaction id first, which is
the decoder's only state. The format is PostgreSQL's "Logical Replication Message Formats".

Column values stay as PostgreSQL sent them: ``bytes`` of the text (or binary) form, ``None`` for NULL, and
the :data:`UNCHANGED_TOAST` marker for a TOASTed value an UPDATE did not change (sent only as a marker,
unless the table has REPLICA IDENTITY FULL).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from pgchanges import rowmaps
from pgchanges.errors import DecodeError
from pgchanges.rowmaps import ColumnValue, split_tuple, tuple_end

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)

#: a TOASTed column value that an UPDATE left unchanged, and so did not send (one object, compared with ``is``)
UNCHANGED_TOAST: Final = rowmaps.UNCHANGED_TOAST




def lsn_to_str(lsn: int) -> str:
    """``0/16B3748`` form of an LSN."""
    return "%X/%X" % (lsn >> 32, lsn & 0xFFFFFFFF)  # noqa: UP031 - once per transaction: % is 1.6x the f-string


def str_to_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def py_pg_timestamp(micros: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=micros)


_timestamp: Callable[[int], datetime] = rowmaps.compiled_pg_timestamp or py_pg_timestamp


def pg_timestamp(micros: int) -> datetime:
    """A server timestamp (microseconds since 2000-01-01 UTC); one outside Python's range is a DecodeError."""
    try:
        return _timestamp(micros)
    except OverflowError:
        raise DecodeError(f"timestamp {micros} (microseconds since 2000-01-01) is out of range") from None


def pg_micros(moment: datetime) -> int:
    delta = moment - PG_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class TupleData:
    """The values of one row: bytes (text form, or binary where ``binary`` says so), None, UNCHANGED_TOAST."""

    values: tuple[ColumnValue, ...]
    binary: tuple[bool, ...] = ()


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Relation:
    xid: int | None
    oid: int
    namespace: str
    name: str
    replica_identity: str  # d default, n nothing, f full, i index
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Type:
    xid: int | None
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    xid: int | None
    relation_oid: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    xid: int | None
    relation_oid: int
    old_kind: str | None  # "K" key columns only, "O" whole old row, None not sent
    old: TupleData | None
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    xid: int | None
    relation_oid: int
    old_kind: str  # "K" or "O"
    old: TupleData


@dataclass(frozen=True, slots=True)
class Truncate:
    xid: int | None
    options: int  # 1 CASCADE, 2 RESTART IDENTITY
    relation_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    xid: int | None
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    pass


@dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class StreamAbort:
    xid: int
    subxid: int


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)

_I8 = struct.Struct("!B")
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_U64 = struct.Struct("!Q")


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = bytes(data)
        self.pos = 0

    def _take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise DecodeError(f"message ends after {len(self.data)} bytes; needed {end}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def byte(self) -> int:
        value: int = _I8.unpack(self._take(1))[0]
        return value

    def char(self) -> str:
        return chr(self.byte())

    def int16(self) -> int:
        value: int = _I16.unpack(self._take(2))[0]
        return value

    def int32(self) -> int:
        value: int = _I32.unpack(self._take(4))[0]
        return value

    def uint32(self) -> int:
        value: int = _U32.unpack(self._take(4))[0]
        return value

    def uint64(self) -> int:
        value: int = _U64.unpack(self._take(8))[0]
        return value

    def int64(self) -> int:
        value: int = _I64.unpack(self._take(8))[0]
        return value

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise DecodeError("string is not NUL-terminated")
        try:
            text = self.data[self.pos : end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"string is not valid UTF-8: {exc}") from None
        self.pos = end + 1
        return text

    def raw(self, size: int) -> bytes:
        if size < 0:
            raise DecodeError(f"negative length {size}")
        return self._take(size)

    def done(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError(f"{len(self.data) - self.pos} unexpected trailing bytes")

    def tuple_data(self) -> TupleData:
        """Column values of one row (split by :func:`pgchanges.rowmaps.split_tuple`, compiled when built)."""
        values, binary, self.pos = split_tuple(self.data, self.pos)
        return TupleData(values, binary)


# -- fast paths: the messages of every transaction, read without a Reader or a message object ----------------
#
# The tracker reads these in place (logical_tracker.TransactionTracker.receive); each returns None, or raises
# struct.error, where the message is not the plain case, and the caller falls back to Decoder.decode, which
# gives the proper error. Rows are split when first read (pgchanges.rowmaps.Row), so a malformed row raises
# then, as for a plain Insert.

#: Begin: tag, final LSN, commit time, xid
BEGIN = struct.Struct("!xQqI")
#: Commit: tag, flags, commit LSN, end LSN, commit time
COMMIT = struct.Struct("!xBQQq")


def is_plain_insert(data: bytes | memoryview) -> bool:
    """Whether ``data`` is an Insert outside a streamed transaction (tag, relation oid, "N", tuple)."""
    return len(data) > 6 and data[0] == 73 and data[5] == 78


def insert_relation(data: bytes | memoryview, at: int = 0) -> int:
    """The relation oid of a plain Insert, Update or Delete that starts at ``at`` of ``data``."""
    oid: int = _U32.unpack_from(data, at + 1)[0]
    return oid


def insert_tuple(data: bytes | memoryview) -> TupleData:
    """The new row of a plain Insert, checked like :meth:`Decoder.decode` checks it."""
    reader = _Reader(data)
    reader.pos = 6
    new = reader.tuple_data()
    reader.done()
    return new


def plain_update(data: bytes | memoryview, at: int = 0) -> tuple[int, int] | None:
    """(old row start or -1, new row start) in ``data`` of an Update outside a stream, starting at ``at``, whose
    old row is absent or key only ("K"); None for any other Update (a whole old row, "O", needs ``changed``
    computed from typed values)."""
    kind = data[at + 5]
    if kind == 78:  # "N": no old row
        return -1, at + 6
    if kind != 75:  # not "K"
        return None
    end = tuple_end(data, at + 6)
    if end >= len(data) or data[end] != 78:
        return None
    return at + 6, end + 1


def plain_delete(data: bytes | memoryview, at: int = 0) -> bool:
    """Whether ``data`` holds, at ``at``, a Delete outside a stream (its old row, key or whole, at ``at + 6``)."""
    return len(data) > at + 6 and data[at + 5] in (75, 79)


class Decoder:
    """Decodes one pgoutput message at a time; knows whether it is inside a streamed transaction."""

    def __init__(self) -> None:
        self.in_stream = False

    def decode(self, data: bytes | memoryview) -> Message:
        if not data:
            raise DecodeError("empty message")
        if not self.in_stream and is_plain_insert(data):
            # Insert outside a stream (the bulk of any workload): fields read in place (profiled hot path)
            return Insert(None, insert_relation(data), insert_tuple(data))
        reader = _Reader(data)
        tag = reader.char()
        handler = _DECODERS.get(tag)
        if handler is None:
            raise DecodeError(f"unknown pgoutput message type {tag!r}")
        message = handler(self, reader)
        reader.done()
        return message

    def _xid(self, reader: _Reader) -> int | None:
        return reader.uint32() if self.in_stream else None

    def _begin(self, r: _Reader) -> Begin:
        return Begin(r.uint64(), pg_timestamp(r.int64()), r.uint32())

    def _commit(self, r: _Reader) -> Commit:
        return Commit(r.byte(), r.uint64(), r.uint64(), pg_timestamp(r.int64()))

    def _origin(self, r: _Reader) -> Origin:
        return Origin(r.uint64(), r.string())

    def _relation(self, r: _Reader) -> Relation:
        xid = self._xid(r)
        oid, namespace, name, identity = r.uint32(), r.string(), r.string(), r.char()
        count = r.int16()
        columns = tuple(
            Column(is_key=bool(r.byte() & 1), name=r.string(), type_oid=r.uint32(), type_modifier=r.int32())
            for _ in range(count)
        )
        return Relation(xid, oid, namespace, name, identity, columns)

    def _type(self, r: _Reader) -> Type:
        return Type(self._xid(r), r.uint32(), r.string(), r.string())

    def _insert(self, r: _Reader) -> Insert:
        xid, oid = self._xid(r), r.uint32()
        if r.char() != "N":
            raise DecodeError("insert without new tuple")
        return Insert(xid, oid, r.tuple_data())

    def _update(self, r: _Reader) -> Update:
        xid, oid = self._xid(r), r.uint32()
        kind = r.char()
        old_kind: str | None = None
        old: TupleData | None = None
        if kind in ("K", "O"):
            old_kind, old = kind, r.tuple_data()
            kind = r.char()
        if kind != "N":
            raise DecodeError(f"update without new tuple (got {kind!r})")
        return Update(xid, oid, old_kind, old, r.tuple_data())

    def _delete(self, r: _Reader) -> Delete:
        xid, oid = self._xid(r), r.uint32()
        kind = r.char()
        if kind not in ("K", "O"):
            raise DecodeError(f"delete without old tuple (got {kind!r})")
        return Delete(xid, oid, kind, r.tuple_data())

    def _truncate(self, r: _Reader) -> Truncate:
        xid = self._xid(r)
        count, options = r.int32(), r.byte()
        return Truncate(xid, options, tuple(r.uint32() for _ in range(count)))

    def _message(self, r: _Reader) -> LogicalMessage:
        xid = self._xid(r)
        flags, lsn, prefix = r.byte(), r.uint64(), r.string()
        return LogicalMessage(xid, bool(flags & 1), lsn, prefix, r.raw(r.int32()))

    def _stream_start(self, r: _Reader) -> StreamStart:
        self.in_stream = True
        return StreamStart(r.uint32(), r.byte() == 1)

    def _stream_stop(self, r: _Reader) -> StreamStop:
        self.in_stream = False
        return StreamStop()

    def _stream_commit(self, r: _Reader) -> StreamCommit:
        return StreamCommit(r.uint32(), r.byte(), r.uint64(), r.uint64(), pg_timestamp(r.int64()))

    def _stream_abort(self, r: _Reader) -> StreamAbort:
        xid, subxid = r.uint32(), r.uint32()
        if r.pos < len(r.data):  # protocol version 4 adds the abort LSN and time (parallel apply)
            r.uint64()
            r.int64()
        return StreamAbort(xid, subxid)


_DECODERS: dict[str, Callable[[Decoder, _Reader], Message]] = {
    "B": Decoder._begin,
    "C": Decoder._commit,
    "O": Decoder._origin,
    "R": Decoder._relation,
    "Y": Decoder._type,
    "I": Decoder._insert,
    "U": Decoder._update,
    "D": Decoder._delete,
    "T": Decoder._truncate,
    "M": Decoder._message,
    "S": Decoder._stream_start,
    "E": Decoder._stream_stop,
    "c": Decoder._stream_commit,
    "A": Decoder._stream_abort,
}
