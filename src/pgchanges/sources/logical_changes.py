"""Changes of the logical source, built from decoded pgoutput messages: pure functions, no state, no I/O.

:mod:`pgchanges.sources.logical_tracker` numbers the changes and keeps the transactions; this module only
turns one decoded message, and the relation it names, into a :class:`~pgchanges.change.Change`.
:class:`RelationInfo` is a table as a Relation message describes it, with a converter per column, which the
I/O layer (:mod:`pgchanges.sources.logical`) resolves because that may need catalog queries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pgchanges.change import EMPTY, Change, Op, freeze
from pgchanges.pgoutput import Delete, Insert, LogicalMessage, Relation, TupleData, Update, lsn_to_str
from pgchanges.rowmaps import UNCHANGED_TOAST

SOURCE = "logical"

Converter = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class RelationInfo:
    """A published table: its name, column names, a converter for each column's type, its replica identity."""

    oid: int
    schema: str
    table: str
    names: tuple[str, ...]
    converters: tuple[Converter, ...]
    replica_identity: str


def relation_info(message: Relation, converter: Callable[[int], Converter]) -> RelationInfo:
    """The :class:`RelationInfo` of ``message``; ``converter`` gives the converter of a column's type oid."""
    return RelationInfo(
        message.oid,
        message.namespace,
        message.name,
        tuple(c.name for c in message.columns),
        tuple(converter(c.type_oid) for c in message.columns),
        message.replica_identity,
    )


class Stamp(Protocol):
    """What a change takes from its transaction (the tracker's transactions have these attributes)."""

    @property
    def xid(self) -> int: ...

    @property
    def commit_time(self) -> datetime: ...

    @property
    def commit_text(self) -> str: ...


def _values(relation: RelationInfo, data: TupleData) -> dict[str, Any]:
    """Column name → Python value (None and UNCHANGED_TOAST stay as they are)."""
    return {
        name: value if value is None or value is UNCHANGED_TOAST else convert(value)
        for name, convert, value in zip(relation.names, relation.converters, data.values, strict=False)
    }


def row_change(relation: RelationInfo, message: Insert | Update | Delete, change_id: str, txn: Stamp | None) -> Change:
    """An insert, update or delete, with every value typed now (the plain-Insert path types them lazily)."""
    new = old = None
    changed = EMPTY
    op: Op
    if isinstance(message, Insert):
        op, new = "insert", _values(relation, message.new)
    elif isinstance(message, Update):
        op, new = "update", _values(relation, message.new)
        if message.old is not None:
            old = _values(relation, message.old)
            if message.old_kind == "O":
                changed = tuple(k for k, v in new.items() if v is not UNCHANGED_TOAST and old.get(k) != v)
    else:
        op, old = "delete", _values(relation, message.old)
    xid, at, position = _stamp(txn)
    return Change(
        change_id, op, relation.schema, relation.table, freeze(new), freeze(old), changed, xid, at, position, SOURCE
    )


def truncate_change(relation: RelationInfo, change_id: str, txn: Stamp | None) -> Change:
    xid, commit_time, position = _stamp(txn)
    return Change(
        change_id, "truncate", relation.schema, relation.table, None, None, EMPTY, xid, commit_time, position, SOURCE
    )


def message_change(message: LogicalMessage, change_id: str, txn: Stamp | None) -> Change:
    """``pg_logical_emit_message``: its position is the message's own LSN."""
    xid, commit_time, _ = _stamp(txn)
    extra = freeze({"prefix": message.prefix, "content": message.content, "transactional": message.transactional})
    return Change(
        change_id, "message", None, None, None, None, EMPTY, xid, commit_time, lsn_to_str(message.lsn), SOURCE, extra
    )


def _stamp(txn: Stamp | None) -> tuple[int | None, datetime | None, str | None]:
    return (txn.xid, txn.commit_time, txn.commit_text) if txn is not None else (None, None, None)
