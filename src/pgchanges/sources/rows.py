"""Turning a row event written by a trigger (JSON rows, table oid) into a typed, immutable Change."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from pgchanges.change import EMPTY, Change, Op, Row, freeze
from pgchanges.lazy import LazyMapping
from pgchanges.rowtypes import RowType

# One decoder for every payload: json.loads(..., parse_float=Decimal) would build a new decoder per call
# (see bench/results/design-measurements.md), and raw_decode skips the whitespace regex.
_decode_json = json.JSONDecoder(parse_float=Decimal).raw_decode
_MISSING = object()


def parse_json(text: str) -> Any:
    """JSON written by PostgreSQL, numbers with a fraction as Decimal (no digit lost)."""
    return _decode_json(text)[0]


def row_change(
    *,
    change_id: str,
    op: Op,
    schema: str,
    table: str,
    new: dict[str, Any] | None,
    old: dict[str, Any] | None,
    xid: int | None,
    position: int | str | None,
    source: str,
    row_type: RowType | None,
    extra: Row | None = None,
    on_stale: Callable[[], None] | None = None,
) -> Change:
    """A Change with ``changed`` computed from the raw JSON rows, then values typed by ``row_type`` (see
    :func:`fitting` for a ``row_type`` that no longer fits the rows)."""
    changed = EMPTY
    if new is not None and old is not None:
        changed = tuple(key for key, value in new.items() if old.get(key, _MISSING) != value)
    if on_stale is not None:
        row_type = fitting(row_type, on_stale, new, old)
    if row_type is not None:
        if new is not None:
            row_type.convert(new)
        if old is not None:
            row_type.convert(old)
    return Change(change_id, op, schema, table, freeze(new), freeze(old), changed, xid, None, position, source, extra)


def fitting(row_type: RowType | None, on_stale: Callable[[], None], *rows: dict[str, Any] | None) -> RowType | None:
    """``row_type`` if every row has its columns; otherwise None (values stay as JSON gave them) and
    ``on_stale()`` is called, so that the caller reads the table's types again: its columns changed."""
    if row_type is None or all(row is None or row_type.matches(row) for row in rows):
        return row_type
    on_stale()
    return None


class LazyJsonRow(LazyMapping):
    """A row as PostgreSQL's ``to_json`` wrote it, parsed and typed by ``row_type`` on first access.

    When the row no longer has the columns of ``row_type`` (the table changed since the types were read), its
    values stay as JSON gave them and ``on_stale`` is called so that the caller reads the types again.
    """

    __slots__ = ("_on_stale", "_row_type", "_text")

    def __init__(self, text: str, row_type: RowType | None, on_stale: Callable[[], None]) -> None:
        super().__init__()
        self._text: str | None = text
        self._row_type = row_type
        self._on_stale = on_stale

    def _decode(self) -> dict[str, Any]:
        assert self._text is not None
        values: dict[str, Any] = parse_json(self._text)
        self._text = None
        row_type = fitting(self._row_type, self._on_stale, values)
        if row_type is not None:
            row_type.convert(values)
        return values
