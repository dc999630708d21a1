"""Turning a row event written by a trigger (JSON rows, table oid) into a typed, immutable Change.

Parsing is the largest part of a JSON source's work per change (profiled: ``json`` with ``parse_float=Decimal``
was a quarter to a third of the notify source's time), so rows are parsed as the logical source parses jsonb
(:func:`pgchanges.rowmaps.jsonb_from_text`: orjson where it reads what ``json.loads`` reads), fractions as
floats: what psycopg's json loader gives for json and jsonb values. Numeric columns need every digit, and a
float keeps only about 16: a row whose numeric value came back as a float is parsed again with fractions as
Decimal (:func:`parse_exact`) and typed by the row type's exact converters, its json and
jsonb values taken from the first parse. Rows of tables without numeric columns, with narrow ones (see
:mod:`pgchanges.rowtypes`), or whose numerics are integers, are parsed once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any

from pgchanges.change import EMPTY, Change, Op, Row, freeze, new_change
from pgchanges.rowmaps import Row as LazyRow
from pgchanges.rowmaps import jsonb_from_text
from pgchanges.rowtypes import RowType

# One decoder for every exact parse: json.loads(..., parse_float=Decimal) would build a new decoder per call
# (see bench/results/design-measurements.md), and raw_decode skips the whitespace regex.
_decode_exact = json.JSONDecoder(parse_float=Decimal).raw_decode
_MISSING = object()


def parse_json(text: str | bytes) -> Any:
    """JSON as psycopg's json loader reads it: fractions as float, integers as int (of any size). The rows'
    jsonb loader does it (orjson where orjson reads what ``json.loads`` reads, the standard scanner for the
    rest: integers beyond 64 bits, numbers beyond a double, lone surrogate escapes)."""
    return jsonb_from_text(text.encode() if isinstance(text, str) else text)


def parse_exact(text: str | bytes) -> Any:
    """JSON written by PostgreSQL, numbers with a fraction as Decimal (no digit lost)."""
    return _decode_exact(text if isinstance(text, str) else text.decode())[0]


ParsedRows = tuple[dict[str, Any] | None, ...]


def exact_if_needed(
    row_type: RowType | None, rows: ParsedRows, exact: Callable[[], ParsedRows]
) -> tuple[ParsedRows, bool]:
    """``rows`` (from :func:`parse_json`), or ``exact()`` (the same parsed with fractions as Decimal) when the
    types are unknown or a numeric value of one of them came back as a float; and whether they are exact. Exact
    rows get their json and jsonb values from ``rows`` (floats there, as psycopg gives them)."""
    if row_type is None:
        return exact(), True  # types unknown: keep every digit of what may be a numeric
    if not row_type.digits or not any(row is not None and row_type.inexact(row) for row in rows):
        return rows, False
    exact_rows = exact()
    if row_type.json:
        for row, fast in zip(exact_rows, rows, strict=True):
            if row is not None and fast is not None:
                row_type.take_json(row, fast)
    return exact_rows, True


def convert(row_type: RowType | None, rows: ParsedRows, exact: bool) -> None:
    """Type ``rows`` in place by ``row_type`` (parsed as :func:`exact_if_needed` says)."""
    if row_type is None:
        return
    for row in rows:
        if row is not None:
            if exact:
                row_type.convert_exact(row)
            else:
                row_type.convert(row)


def typed_lazily(row_type: RowType | None, row: dict[str, Any] | None, exact: bool) -> Row | None:
    """``row`` as a handler gets it: typed by ``row_type`` (as :func:`convert` does) when first read, so that a
    handler that reads no value pays for no conversion (the compiled :class:`pgchanges.rowmaps.Row`)."""
    if row is None:
        return None
    if row_type is None:
        return freeze(row)
    return LazyRow.deferred(row_type.converted_exact if exact else row_type.converted, row)  # type: ignore[no-any-return]


def row_change(
    *,
    change_id: str,
    op: Op,
    schema: str,
    table: str,
    new: dict[str, Any] | None,
    old: dict[str, Any] | None,
    exact: Callable[[], ParsedRows],
    xid: int | None,
    position: int | str | None,
    source: str,
    row_type: RowType | None,
    extra: Row | None = None,
    on_stale: Callable[[], None] | None = None,
) -> Change:
    """A Change with ``changed`` computed from the parsed rows, its values typed by ``row_type`` when first read.

    ``exact()`` gives ``new`` and ``old`` parsed again with fractions as Decimal (see :func:`exact_if_needed`);
    rows that ``row_type`` no longer fits (see :func:`fitting`) stay as that exact parse gave them.
    """
    if on_stale is not None:
        row_type = fitting(row_type, on_stale, new, old)
    (new, old), is_exact = exact_if_needed(row_type, (new, old), exact)
    changed = EMPTY
    if new is not None and old is not None:
        changed = tuple(key for key, value in new.items() if old.get(key, _MISSING) != value)
    fields = (
        change_id, op, schema, table, typed_lazily(row_type, new, is_exact), typed_lazily(row_type, old, is_exact),
        changed, xid, None, position, source, extra,
    )  # fmt: skip
    return new_change(Change, fields)


def fitting(row_type: RowType | None, on_stale: Callable[[], None], *rows: dict[str, Any] | None) -> RowType | None:
    """``row_type`` if every row has its columns; otherwise None (values stay as JSON gave them) and
    ``on_stale()`` is called, so that the caller reads the table's types again: its columns changed."""
    if row_type is None or all(row is None or row_type.matches(row) for row in rows):
        return row_type
    on_stale()
    return None


def decode_row(text: str, row_type: RowType | None, on_stale: Callable[[], None]) -> dict[str, Any]:
    """One row as ``to_json`` wrote it, parsed and typed by ``row_type`` (see :func:`exact_if_needed` and
    :func:`fitting`)."""
    values: dict[str, Any] = parse_json(text)
    row_type = fitting(row_type, on_stale, values)
    rows, is_exact = exact_if_needed(row_type, (values,), lambda: (parse_exact(text),))
    convert(row_type, rows, is_exact)
    row = rows[0]
    assert row is not None
    return row


def lazy_json_row(text: str, row_type: RowType | None, on_stale: Callable[[], None]) -> Row:
    """A row as PostgreSQL's ``to_json`` wrote it, parsed and typed by ``row_type`` when first read
    (:func:`decode_row`, in a :class:`pgchanges.rowmaps.Row`, as :func:`typed_lazily` makes for parsed rows).

    When the row no longer has the columns of ``row_type`` (the table changed since the types were read), its
    values stay as JSON gave them and ``on_stale`` is called so that the caller reads the types again.
    """
    return LazyRow.deferred(partial(decode_row, row_type=row_type, on_stale=on_stale), text)  # type: ignore[no-any-return]
