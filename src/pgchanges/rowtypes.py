"""Typed row values: turning rows that triggers wrote with ``to_json()`` back into Python values.

``to_json`` keeps numbers, booleans, json and arrays as JSON, writes date/timestamp types as ISO 8601, and
writes every other type as its text output. Knowing each column's type (from the catalog, cached per table
oid), we convert: numeric → Decimal, float → float, timestamps → datetime, uuid → UUID, and anything written
as text output through psycopg's own text loader for that type (bytea, interval, inet, ranges, …). Domains
use their base type, arrays convert element-wise, unknown types stay as the string PostgreSQL wrote. A value
that fails to convert stays as written, never an exception in the listener. The catalog queries are named
queries in ``capture/sql/queries/rowtypes.sql``.

Rows are parsed twice only when they must be (see :mod:`pgchanges.sources.rows`): the fast parse gives every
JSON fraction as a float, as psycopg's json loader does, which is what json and jsonb values must be; a
numeric column needs every digit, so a row whose numeric value came back as a float (:meth:`RowType.inexact`)
is parsed again with fractions as Decimal, and typed by the *exact* converters, its json and jsonb values
taken from the fast parse. Narrow numeric columns (``numeric(p, s)`` with p <= 15, whose every value a float
holds exactly) need no second parse: the float printed with the column's scale is the text PostgreSQL wrote.
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
from pgchanges.rowmaps import Guarded, json_from_text, jsonb_from_text

log = logging.getLogger(__name__)

Converter = Callable[[Any], Any]

# Built-in type oids (pg_type.dat); stable across PostgreSQL versions.
INT_OIDS = frozenset({20, 21, 23})  # int8 int2 int4 (to_json writes oid, xid as strings)
PLAIN_OIDS = frozenset({16, 18, 19, 25, 114, 1042, 1043, 3802})  # bool "char" name text json bpchar varchar jsonb
JSON_OIDS = frozenset({114, 3802})  # json jsonb
NUMERIC_OID, FLOAT4_OID, FLOAT8_OID = 1700, 700, 701
DATE_OID, TIMESTAMP_OID, TIMESTAMPTZ_OID, UUID_OID = 1082, 1114, 1184, 2950


def _to_decimal(value: Any) -> Any:
    return value if type(value) is Decimal else Decimal(value)


def _to_float(value: Any) -> Any:
    return float(value)


#: Significant digits that any decimal keeps through a float and back (DBL_DIG).
FLOAT_DIGITS = 15


def numeric_scale(type_mod: int) -> int | None:
    """The scale of a ``numeric(p, s)`` column whose every value a float holds exactly (0 <= s <= p <= 15),
    from its ``atttypmod``; None for any other numeric (unconstrained, wider, or a negative scale)."""
    if type_mod < 4:
        return None
    precision = ((type_mod - 4) >> 16) & 0xFFFF
    scale = (((type_mod - 4) & 0x7FF) ^ 1024) - 1024  # PostgreSQL's NUMERIC_TYPMOD_SCALE
    return scale if 0 <= scale <= precision <= FLOAT_DIGITS else None


def _scaled_decimal(scale: int) -> Converter:
    """numeric(p, s) with p <= 15, from the fast parse: a fraction came as the float nearest to its text, and
    that float printed with the column's ``s`` decimals is the text again (its error, below 10**-s / 8, cannot
    move the last decimal), trailing zeros included: ``1.10`` → 1.1 → ``Decimal('1.10')``, as psycopg reads it."""
    spec = f".{scale}f"

    def convert(value: Any) -> Any:
        if type(value) is float:
            return Decimal(value.__format__(spec))
        return _to_decimal(value)

    return convert


def _has_float(value: Any) -> bool:
    """Whether a value of the fast parse holds a float anywhere (a numeric whose digits it may have lost)."""
    kind = type(value)
    if kind is float:
        return True
    if kind is list:
        return any(_has_float(v) for v in value)
    if kind is dict:
        return any(_has_float(v) for v in value.values())
    return False


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
    """Builds the converters for JSON values of a type, given the types' catalog rows."""

    def __init__(self, types: Mapping[int, TypeInfo]) -> None:
        self._types = types

    def _base(self, oid: int) -> tuple[int, TypeInfo | None]:
        """The type itself, or the base type of a domain."""
        info = self._types.get(oid)
        while info is not None and info.typtype == "d":
            oid = info.base
            info = self._types.get(oid)
        return oid, info

    def for_oid(self, oid: int, type_mod: int = -1) -> Converter | None:
        """For values parsed with fractions as floats; None when they need no conversion. ``type_mod``: the
        column's ``atttypmod`` (a numeric's precision and scale, which apply to an array's elements too)."""
        if (scale := self._float_safe_scale(oid, type_mod)) is not None:
            return _scaled_decimal(scale) if not self._is_array(oid) else _array_of(_scaled_decimal(scale))
        oid, info = self._base(oid)
        if info is not None and info.is_array and info.elem:
            element = self.for_oid(info.elem)
            return None if element is None else _array_of(element)
        if oid in INT_OIDS or oid in PLAIN_OIDS:
            return None
        if info is not None and info.typtype in ("e", "c"):
            return None  # enums are their label; composites stay JSON objects
        return _SIMPLE.get(oid) or _text_loader(oid)

    def is_json(self, oid: int) -> bool:
        """Whether values of the type are json or jsonb (in domains, arrays): fractions in them are floats."""
        oid, info = self._base(oid)
        if info is not None and info.is_array and info.elem:
            return self.is_json(info.elem)
        return oid in JSON_OIDS

    def needs_digits(self, oid: int, type_mod: int = -1) -> bool:
        """Whether JSON numbers of the type must keep every digit that a float may lose: numeric (in domains,
        arrays) other than the narrow ones that :func:`numeric_scale` accepts, and composites."""
        if self._float_safe_scale(oid, type_mod) is not None:
            return False
        oid, info = self._base(oid)
        if info is not None and info.is_array and info.elem:
            return self.needs_digits(info.elem)
        return oid == NUMERIC_OID or (info is not None and info.typtype == "c")

    def _is_array(self, oid: int) -> bool:
        info = self._types.get(oid)
        return info is not None and info.is_array

    def _float_safe_scale(self, oid: int, type_mod: int) -> int | None:
        """The scale of a numeric or numeric[] column (not a domain) that floats hold exactly, else None."""
        info = self._types.get(oid)
        element = info.elem if info is not None and info.is_array else oid
        return numeric_scale(type_mod) if element == NUMERIC_OID and type_mod >= 0 else None


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
    """The columns of one table and how to type each column's JSON value.

    ``converters`` type a row of the fast parse (fractions as floats), ``exact_converters`` a row parsed with
    fractions as Decimal; ``digits`` are the columns whose numbers need every digit (numeric ones), ``json``
    the json and jsonb columns, whose values an exact parse must take from the fast one.
    """

    __slots__ = ("converters", "digits", "exact_converters", "json", "names", "relid")

    def __init__(
        self,
        relid: int,
        names: Iterable[str],
        converters: list[tuple[str, Converter]],
        *,
        exact_converters: list[tuple[str, Converter]] | None = None,
        digits: Iterable[str] = (),
        json: Iterable[str] = (),
    ) -> None:
        self.relid = relid
        self.names = frozenset(names)
        self.converters = converters
        self.exact_converters = converters if exact_converters is None else exact_converters
        self.digits = tuple(digits)
        self.json = tuple(json)

    def matches(self, row: Mapping[str, Any]) -> bool:
        return row.keys() == self.names

    def inexact(self, row: Mapping[str, Any]) -> bool:
        """Whether ``row``, parsed with fractions as floats, has a numeric value that may have lost digits."""
        return any(_has_float(row.get(name)) for name in self.digits)

    def convert(self, row: dict[str, Any]) -> dict[str, Any]:
        """Convert ``row`` (fresh from the fast parse, fractions as floats) in place and return it."""
        for name, convert in self.converters:
            value = row.get(name)
            if value is not None:
                row[name] = convert(value)
        return row

    def converted(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A typed copy of ``row`` (as :meth:`convert` types it), ``row`` left as it is: the load of a row typed on
        first read, which two threads may run at once (each then types its own copy, never the other's values)."""
        return self.convert(dict(row))

    def converted_exact(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A typed copy of ``row`` as :meth:`convert_exact` types it (see :meth:`converted`)."""
        return self.convert_exact(dict(row))

    def take_json(self, row: dict[str, Any], fast: Mapping[str, Any]) -> None:
        """Give ``row`` (parsed with fractions as Decimal) the json and jsonb values of ``fast``, the same row
        from the fast parse, whose fractions are floats as psycopg's json loader gives them."""
        for name in self.json:
            if name in row:
                row[name] = fast.get(name)

    def convert_exact(self, row: dict[str, Any]) -> dict[str, Any]:
        """Convert ``row`` (parsed with fractions as Decimal, after :meth:`take_json`) in place and return it."""
        for name, convert in self.exact_converters:
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
    grouped: dict[int, list[tuple[str, int, int]]] = {relid: [] for relid in wanted}
    for c in columns:
        # type_mod (atttypmod) lets narrow numeric columns skip the exact parse; -1 where the query has none
        grouped[int(c.table_oid)].append((c.column_name, int(c.type_oid), int(c.type_mod)))
    return {relid: _row_type(relid, cols, builder) for relid, cols in grouped.items()}


def _row_type(relid: int, columns: list[tuple[str, int, int]], builder: JsonConverters) -> RowType:
    converters = [(name, conv) for name, oid, mod in columns if (conv := builder.for_oid(oid, mod)) is not None]
    json = [name for name, oid, _ in columns if builder.is_json(oid)]
    exact = [(name, conv) for name, oid, _ in columns if name not in json and (conv := builder.for_oid(oid))]
    digits = [name for name, oid, mod in columns if builder.needs_digits(oid, mod)]
    names = (name for name, _, _ in columns)
    return RowType(relid, names, converters, exact_converters=exact, digits=digits, json=json)


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
    if oid in JSON_OIDS:  # jsonb's canonical text may take orjson; json keeps what was written, spaces and all
        return jsonb_from_text if oid == 3802 else json_from_text
    loader_cls = adapters.get_loader(oid, pq.Format.TEXT)
    if loader_cls is None or (info is not None and info.typtype in ("e", "c")):
        return _decode_text
    loader = loader_cls(oid)
    if oid in _LOADERS_THAT_CANNOT_FAIL:
        direct: Converter = loader.load  # no wrapper frame per value: the decode hot path (profiled)
        return direct
    guarded: Converter = Guarded(loader.load, _decode_text, (psycopg.DataError, ValueError, TypeError))
    return guarded


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
