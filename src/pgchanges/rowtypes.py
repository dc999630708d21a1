"""Typed row values: turning rows that triggers wrote with ``to_json()`` back into Python values.

``to_json`` keeps numbers, booleans, json and arrays as JSON, writes date/timestamp types as ISO 8601, and
writes every other type as its text output. Knowing each column's type (from the catalog, cached per table
oid), we convert: numeric → Decimal (the payload is parsed with ``parse_float=Decimal`` so no digit is lost),
float → float, timestamps → datetime, uuid → UUID, and anything written as text output through psycopg's own
text loader for that type (bytea, interval, inet, ranges, …). Domains use their base type, arrays convert
element-wise, unknown types stay as the string PostgreSQL wrote. A value that fails to convert stays as
written, never an exception in the listener. The catalog queries are named queries in
``capture/sql/queries/rowtypes.sql``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import adapters, pq

from pgchanges.capture.queries import fetch_all

log = logging.getLogger(__name__)

Converter = Callable[[Any], Any]

# Built-in type oids (pg_type.dat); stable across PostgreSQL versions.
INT_OIDS = frozenset({20, 21, 23})  # int8 int2 int4 (to_json writes oid, xid as strings)
PLAIN_OIDS = frozenset({16, 18, 19, 25, 114, 1042, 1043, 3802})  # bool "char" name text json bpchar varchar jsonb
NUMERIC_OID, FLOAT4_OID, FLOAT8_OID = 1700, 700, 701
DATE_OID, TIMESTAMP_OID, TIMESTAMPTZ_OID, UUID_OID = 1082, 1114, 1184, 2950


def _to_decimal(value: Any) -> Any:
    return value if type(value) is Decimal else Decimal(value)


def _to_float(value: Any) -> Any:
    return float(value)


def _iso(parse: Callable[[str], Any]) -> Converter:
    def convert(value: Any) -> Any:
        try:
            return parse(value)
        except (ValueError, TypeError):  # 'infinity', BC dates: keep PostgreSQL's text
            return value

    return convert


def _text_loader(oid: int) -> Converter | None:
    """For values that to_json wrote as the type's text output: the same loading as logical replication's."""
    if adapters.get_loader(oid, pq.Format.TEXT) is None:
        return None
    from_text = text_converter({}, oid)

    def convert(value: Any) -> Any:
        return from_text(value.encode()) if isinstance(value, str) else value

    return convert


def _array_of(element: Converter) -> Converter:
    def convert(value: Any) -> Any:
        if isinstance(value, list):
            return [None if v is None else convert(v) for v in value]
        return element(value)

    return convert


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int
    typtype: str  # b base, c composite, d domain, e enum, p pseudo, r range, m multirange
    elem: int  # element type of an array type, else 0
    base: int  # base type of a domain, else 0
    is_array: bool


class JsonConverters:
    """Builds a converter for JSON values of a type, given the types' catalog rows."""

    def __init__(self, types: Mapping[int, TypeInfo]) -> None:
        self._types = types

    def for_oid(self, oid: int) -> Converter | None:
        info = self._types.get(oid)
        if info is not None and info.typtype == "d":
            return self.for_oid(info.base)
        if info is not None and info.is_array and info.elem:
            element = self.for_oid(info.elem)
            return None if element is None else _array_of(element)
        if oid in INT_OIDS or oid in PLAIN_OIDS:
            return None
        if info is not None and info.typtype in ("e", "c"):
            return None  # enums are their label; composites stay JSON objects
        return _SIMPLE.get(oid) or _text_loader(oid)


_SIMPLE: dict[int, Converter] = {
    NUMERIC_OID: _to_decimal,
    FLOAT4_OID: _to_float,
    FLOAT8_OID: _to_float,
    DATE_OID: _iso(date.fromisoformat),
    TIMESTAMP_OID: _iso(datetime.fromisoformat),
    TIMESTAMPTZ_OID: _iso(datetime.fromisoformat),
    UUID_OID: _iso(uuid.UUID),
    1083: _iso(time.fromisoformat),
}


class RowType:
    """The columns of one table and how to type each column's JSON value."""

    __slots__ = ("converters", "names", "relid")

    def __init__(self, relid: int, names: Iterable[str], converters: list[tuple[str, Converter]]) -> None:
        self.relid = relid
        self.names = frozenset(names)
        self.converters = converters

    def matches(self, row: Mapping[str, Any]) -> bool:
        return row.keys() == self.names

    def convert(self, row: dict[str, Any]) -> dict[str, Any]:
        """Convert ``row`` (fresh from ``json.loads``) in place and return it."""
        for name, convert in self.converters:
            value = row.get(name)
            if value is not None:
                row[name] = convert(value)
        return row


def fetch_row_types(conn: psycopg.Connection[Any], relids: Iterable[int]) -> dict[int, RowType]:
    """Read the column types of the tables ``relids`` (one round trip each for columns and types)."""
    wanted = sorted(set(relids))
    columns = fetch_all(conn, "table_column_types", {"table_oids": wanted})
    types = _fetch_types(conn, {int(c.type_oid) for c in columns})
    builder = JsonConverters(types)
    grouped: dict[int, list[tuple[str, int]]] = {relid: [] for relid in wanted}
    for c in columns:
        grouped[int(c.table_oid)].append((c.column_name, int(c.type_oid)))
    result: dict[int, RowType] = {}
    for relid, cols in grouped.items():
        converters = [(name, conv) for name, oid in cols if (conv := builder.for_oid(oid)) is not None]
        result[relid] = RowType(relid, (name for name, _ in cols), converters)
    return result


def fetch_type_info(conn: psycopg.Connection[Any], oids: set[int]) -> dict[int, TypeInfo]:
    """Catalog rows of the types ``oids``, following domains and array elements to their bases."""
    return _fetch_types(conn, oids)


def text_converter(types: Mapping[int, TypeInfo], oid: int) -> Converter:
    """Turns a value's text form (bytes, as logical replication sends it) into Python, by type oid.

    Domains use their base type; types without a psycopg loader (enums, composites, unknown) stay text.
    """
    info = types.get(oid)
    if info is not None and info.typtype == "d":
        return text_converter(types, info.base)
    loader_cls = adapters.get_loader(oid, pq.Format.TEXT)
    if loader_cls is None or (info is not None and info.typtype in ("e", "c")):
        return _decode_text
    loader = loader_cls(oid)
    if oid in _LOADERS_THAT_CANNOT_FAIL:
        direct: Converter = loader.load  # no wrapper frame per value: the decode hot path (profiled)
        return direct

    def convert(value: Any) -> Any:
        try:
            return loader.load(value)
        except (psycopg.DataError, ValueError, TypeError):
            return _decode_text(value)

    return convert


# Types whose text form from the server always loads (unlike dates and times, where 'infinity' raises).
_LOADERS_THAT_CANNOT_FAIL = frozenset({16, 17, 19, 20, 21, 23, 25, 26, 114, 700, 701, 1042, 1043, 1700, 2950, 3802})


def _decode_text(value: Any) -> Any:
    return bytes(value).decode("utf-8", errors="replace")


def _fetch_types(conn: psycopg.Connection[Any], oids: set[int]) -> dict[int, TypeInfo]:
    found: dict[int, TypeInfo] = {}
    pending = set(oids)
    while pending:  # follow domains and array elements to their bases
        rows = fetch_all(conn, "type_info", {"type_oids": sorted(pending)})
        pending = set()
        for r in rows:
            info = TypeInfo(int(r.type_oid), str(r.typtype), int(r.typelem), int(r.typbasetype), bool(r.is_array))
            found[info.oid] = info
            for ref in (info.elem, info.base):
                if ref and ref not in found:
                    pending.add(ref)
    return found
