"""The one immutable change event every source hands to handlers, and its JSON form.

``Change`` is a ``NamedTuple`` rather than a frozen dataclass on purpose: it is built once per row on every hot
path (decoding, dispatch) and a NamedTuple builds in less than half the time while being just as immutable
(bench/results/design-measurements.md). Row values are exposed through read-only mappings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from pgchanges import valuecodec
from pgchanges.compiled import compiled

Op = Literal["insert", "update", "delete", "truncate", "upsert", "ddl", "message", "gap"]
OPS: frozenset[str] = frozenset(("insert", "update", "delete", "truncate", "upsert", "ddl", "message", "gap"))

Row = Mapping[str, Any]
EMPTY: tuple[str, ...] = ()


class Change(NamedTuple):
    """One change of one row (or one table, for truncate; or a DDL command, message or gap marker).

    ``id`` is stable for idempotency: a change delivered twice carries the same id. ``position`` is where the
    change sits in its source (event id for notify/outbox, LSN text for logical). ``changed`` lists the columns
    whose values differ between ``old`` and ``new`` on update. ``op == "gap"`` marks a place where changes
    may have been missed (a listener reconnected): it carries no row.
    """

    id: str
    op: Op
    schema: str | None
    table: str | None
    new: Row | None
    old: Row | None
    changed: tuple[str, ...]
    xid: int | None
    commit_time: datetime | None
    position: int | str | None
    source: str
    extra: Row | None = None

    @property
    def qualified_table(self) -> str | None:
        """``schema.table`` as PostgreSQL would print it unquoted, or None for table-less changes."""
        if self.table is None:
            return None
        return f"{self.schema}.{self.table}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (see :mod:`pgchanges.valuecodec` for how typed values are written)."""
        return self._encoded(valuecodec.encode_row)

    def to_json(self) -> str:
        """One line of JSON; :meth:`from_json` restores an equal Change (values keep their Python types)."""
        if _WRITE is not None:
            try:
                return _WRITE(self).decode()
            except (ValueError, TypeError):  # what the standard encoder refuses too: the Python path below
                pass
        return self._to_json_python()

    def to_json_bytes(self) -> bytes:
        """:meth:`to_json` as UTF-8 (what a sink sends), without a str on the way when compiled."""
        if _WRITE is not None:
            try:
                return _WRITE(self)
            except (ValueError, TypeError):
                pass
        return self._to_json_python().encode()

    def _to_json_python(self) -> str:
        try:
            return _JSON_SHALLOW(self._encoded(valuecodec.encode_row_shallow))
        except (ValueError, TypeError):  # a NaN or an odd key inside a json value: the exact walk writes them
            return _JSON(self.to_dict())

    def _encoded(self, encode_row: Callable[[Row], tuple[dict[str, Any], dict[str, str]]]) -> dict[str, Any]:
        types: dict[str, Any] = {}
        out: dict[str, Any] = {
            "id": self.id,
            "op": self.op,
            "schema": self.schema,
            "table": self.table,
            "new": _encode_row(self.new, "new", types, encode_row),
            "old": _encode_row(self.old, "old", types, encode_row),
            "changed": list(self.changed),
            "xid": self.xid,
            "commit_time": self.commit_time.isoformat() if self.commit_time else None,
            "position": self.position,
            "source": self.source,
        }
        if self.extra:
            out["extra"] = _encode_row(self.extra, "extra", types, encode_row)
        if types:
            out["types"] = types
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Change:
        types = data.get("types") or {}
        commit_time = data.get("commit_time")
        return cls(
            id=data["id"],
            op=data["op"],
            schema=data.get("schema"),
            table=data.get("table"),
            new=_decode_row(data.get("new"), types.get("new")),
            old=_decode_row(data.get("old"), types.get("old")),
            changed=tuple(data.get("changed") or ()),
            xid=data.get("xid"),
            commit_time=datetime.fromisoformat(commit_time) if commit_time else None,
            position=data.get("position"),
            source=data["source"],
            extra=_decode_row(data.get("extra"), types.get("extra")),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Change:
        return cls.from_dict(json.loads(text))


#: ``new_change(Change, fields)``: a Change from its 12 fields, for hot paths. ``Change(...)`` runs the
#: NamedTuple's generated ``__new__``, a Python frame per change; the tuple's own is C.
new_change = tuple.__new__


def _compiled_writer() -> Callable[[Change], bytes] | None:
    """``pgchanges._jsonwrite.change_json`` (the same bytes as ``_to_json_python``, from C; tested against it in
    tests/unit/test_jsonwrite.py), unless it was not built or ``PGCHANGES_PURE_PYTHON`` is set."""
    module = compiled("_jsonwrite")
    if module is None:
        return None
    module.configure(valuecodec.TAGGED_EXACT, valuecodec.encode_value, valuecodec.nested_plain)
    write: Callable[[Change], bytes] = module.change_json
    return write


def freeze(row: dict[str, Any] | None) -> Row | None:
    """A read-only view of ``row`` (no copy)."""
    return None if row is None else MappingProxyType(row)


# Built once: json.dumps with options builds an encoder per call.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_JSON_SHALLOW = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=valuecodec.nested_plain
).encode


_WRITE = _compiled_writer()


def _encode_row(
    row: Row | None,
    key: str,
    types: dict[str, Any],
    encode_row: Callable[[Row], tuple[dict[str, Any], dict[str, str]]],
) -> dict[str, Any] | None:
    if row is None:
        return None
    encoded, tags = encode_row(row)
    if tags:
        types[key] = tags
    return encoded


def _decode_row(row: Mapping[str, Any] | None, tags: Mapping[str, str] | None) -> Row | None:
    if row is None:
        return None
    return MappingProxyType(valuecodec.decode_row(row, tags or {}))
