"""What a client asks the feed for: tables and row filters, parsed once per request and compared as keys.

``?table=public.orders&table=public.items&where=status.eq.paid&where=total.gte.100`` selects the changes of
those tables whose row (``new``, or ``old`` for a delete) passes every ``where``, in PostgREST's syntax
``column.op.value``: ``eq``, ``neq``, ``lt``, ``lte``, ``gt``, ``gte``, ``in.(a,b,c)``, ``is.null``,
``is.notnull``, ``is.true``, ``is.false``. A truncate passes every filter (every row is gone). The value is
read as the type of the row's value (a number, a boolean, a date or time in ISO 8601, else text); a value
that cannot be read so matches nothing but ``neq``.

A :class:`Selection` is hashable and equal for equal requests, so that clients who ask the same thing share
one view (:mod:`pgchanges.feed.fanout`) and each filter runs once per change for all of them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from pgchanges.change import Change
from pgchanges.errors import ConfigError
from pgchanges.names import TableName, parse_table

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}
_IS = {"null", "notnull", "true", "false"}
MAX_FILTERS = 20


class BadRequest(ValueError):
    """A request the feed cannot answer as asked (the message says why; answered 400)."""


@dataclass(frozen=True, slots=True)
class Condition:
    column: str
    op: str
    values: tuple[str, ...]

    def __call__(self, change: Change) -> bool:
        if change.op == "truncate":
            return True
        row = change.old if change.op == "delete" else change.new
        value = None if row is None else row.get(self.column)
        if self.op == "is":
            wanted = self.values[0]
            return {"null": value is None, "notnull": value is not None}.get(wanted, value is (wanted == "true"))
        if value is None:
            return False  # as SQL: a comparison with NULL is not true
        if self.op == "in":
            return any(_read(text, value) == value for text in self.values)
        given = _read(self.values[0], value)
        if given is _UNREADABLE:
            return self.op == "neq"
        try:
            return _COMPARE[self.op](value, given)
        except TypeError:
            return False


@dataclass(frozen=True, slots=True)
class Selection:
    """The tables and row conditions of one request."""

    tables: tuple[TableName, ...]
    conditions: tuple[Condition, ...] = ()

    def accepts(self, change: Change) -> bool:
        if not any(t.matches(change.schema, change.table) for t in self.tables):
            return False
        return all(condition(change) for condition in self.conditions)


def parse_selection(tables: Sequence[str], wheres: Sequence[str], served: Iterable[TableName]) -> Selection:
    """The selection of a request; :class:`BadRequest` for a malformed one or a table the feed does not serve."""
    if not tables:
        raise BadRequest("name at least one table: ?table=public.orders")
    offered = list(served)
    chosen: list[TableName] = []
    for text in tables:
        try:
            name = parse_table(text)
        except ConfigError as exc:
            raise BadRequest(str(exc)) from None
        if not any(_within(name, o) for o in offered):
            raise BadRequest(f"this feed does not serve {name}; it serves {', '.join(map(str, offered))}")
        chosen.append(name)
    if len(wheres) > MAX_FILTERS:
        raise BadRequest(f"at most {MAX_FILTERS} where= filters")
    return Selection(tuple(sorted(set(chosen))), tuple(sorted({parse_condition(w) for w in wheres}, key=repr)))


def _within(name: TableName, offered: TableName) -> bool:
    return offered == name or (not name.is_pattern and offered.matches(name.schema, name.table))


def parse_condition(text: str) -> Condition:
    column, _, rest = text.partition(".")
    op, _, value = rest.partition(".")
    if not column or not op:
        raise BadRequest(f"where={text!r}: expected column.op.value, e.g. status.eq.paid")
    if op == "is":
        if value not in _IS:
            raise BadRequest(f"where={text!r}: is. takes null, notnull, true or false")
        return Condition(column, op, (value,))
    if op == "in":
        if not (value.startswith("(") and value.endswith(")")):
            raise BadRequest(f"where={text!r}: in. takes a list in parentheses, e.g. status.in.(paid,sent)")
        return Condition(column, op, tuple(v.strip() for v in value[1:-1].split(",")))
    if op not in _COMPARE:
        raise BadRequest(f"where={text!r}: unknown op {op!r}; use one of {', '.join([*_COMPARE, 'in', 'is'])}")
    return Condition(column, op, (value,))


_UNREADABLE: Any = object()


def _read(text: str, like: Any) -> Any:
    """``text`` as a value of the type of ``like`` (the row's value), or _UNREADABLE."""
    try:
        if isinstance(like, bool):
            return {"true": True, "false": False}.get(text.lower(), _UNREADABLE)
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
        if isinstance(like, Decimal):
            return Decimal(text)
        if isinstance(like, datetime):
            return datetime.fromisoformat(text)
        if isinstance(like, date):
            return date.fromisoformat(text)
        if isinstance(like, time):
            return time.fromisoformat(text)
    except (ValueError, InvalidOperation):
        return _UNREADABLE
    return text if isinstance(like, str) else (like if str(like) == text else _UNREADABLE)
