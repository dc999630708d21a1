"""Read-only row mappings decoded on first access, and pgoutput tuple splitting: C when built, else Python.

Every row a handler sees (``change.new``, ``change.old``) is one of these :class:`Row` objects:

* ``Row(names, converters, data, offset, whole)``: a pgoutput TupleData at ``offset`` of the buffer ``data``,
  split and typed (``converters[i](bytes)`` per non-null column) when first read;
* ``Row.deferred(load, arg)``: any other lazily decoded row (trigger-written JSON), ``load(arg)`` → dict;
* ``Row.loaded(values)``: a row over a dict that is already decoded (the dict is taken over, not copied).

Reading values is the cost a handler pays per change, so it must not run Python per key: the compiled
``pgchanges._speedups.Row`` answers ``dict(row)``, ``row[k]``, iteration and ``==`` with dict operations, and
splits and types a tuple in one C loop (bench/results/peers.md has the before/after). This module holds the
pure-Python implementation of the same behaviour, used when the extension is not built (``IMPLEMENTATION``
says which is in use; ``PGCHANGES_PURE_PYTHON=1`` forces Python) and run against the C one by
tests/unit/test_rowmaps.py. A malformed tuple raises :class:`~pgchanges.errors.DecodeError` when its values
are first read. A row pickles as a plain dict.

Two converters (value bytes → Python) live here for the same reason, a Python frame per value:
:func:`json_from_text` for json, :func:`jsonb_from_text` for jsonb (orjson, when installed, for text it reads
exactly as ``json.loads`` does) and :class:`Guarded` for loaders that can refuse a value.
"""

from __future__ import annotations

import importlib
import json
import re
import struct
from collections.abc import Callable, Mapping
from typing import Any, Final

from pgchanges.compiled import compiled
from pgchanges.errors import DecodeError
from pgchanges.lazy import LazyMapping

Converter = Callable[[Any], Any]


class _UnchangedToast:
    """Marks a TOASTed column value that an UPDATE left unchanged (and so was not sent)."""

    _instance: _UnchangedToast | None = None

    def __new__(cls) -> _UnchangedToast:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


#: a pgoutput column value that was not sent (re-exported by pgchanges.pgoutput, where it is documented)
UNCHANGED_TOAST: Final = _UnchangedToast()

ColumnValue = bytes | None | _UnchangedToast

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")


def py_split_tuple(data: bytes | memoryview, pos: int) -> tuple[tuple[ColumnValue, ...], tuple[bool, ...], int]:
    """The values of the TupleData at ``pos`` (bytes, None, UNCHANGED_TOAST), which are binary (``()`` when
    none is), and where the tuple ends."""
    size = len(data)
    values: list[ColumnValue] = []
    append, length_at = values.append, _I32.unpack_from
    binary: list[bool] | None = None
    try:
        (count,) = _I16.unpack_from(data, pos)
        pos += 2
        if count < 0:
            raise DecodeError(f"negative column count {count}")
        for index in range(count):
            kind = data[pos]
            pos += 1
            if kind == 116 or kind == 98:  # noqa: PLR1714 - "t" text, "b" binary
                (length,) = length_at(data, pos)
                start, pos = pos + 4, pos + 4 + length
                if length < 0 or pos > size:
                    raise DecodeError(f"column {index} of {length} bytes does not fit the message")
                append(bytes(data[start:pos]))
                if kind == 98:
                    binary = binary or [False] * count
                    binary[index] = True
            elif kind == 110:  # "n" null
                append(None)
            elif kind == 117:  # "u" unchanged TOAST
                append(UNCHANGED_TOAST)
            else:
                raise DecodeError(f"unknown tuple value kind {chr(kind)!r}")
    except (struct.error, IndexError):
        raise DecodeError(f"message ends after {size} bytes inside a row") from None
    return tuple(values), tuple(binary) if binary else (), pos


def py_tuple_end(data: bytes | memoryview, pos: int) -> int:
    """Where the TupleData at ``pos`` ends."""
    return py_split_tuple(data, pos)[2]


class PyRow(LazyMapping):
    """The pure-Python :class:`Row`."""

    __slots__ = ("_converters", "_data", "_names", "_offset", "_whole")

    def __init__(
        self,
        names: tuple[str, ...],
        converters: tuple[Converter, ...],
        data: Any,
        offset: int,
        whole: bool = False,
    ) -> None:
        super().__init__()
        self._names: tuple[str, ...] | None = names
        self._converters: Any = converters
        self._data: Any = data
        self._offset = offset
        self._whole = whole

    @classmethod
    def deferred(cls, load: Callable[[Any], dict[str, Any]], arg: Any) -> PyRow:
        row = cls((), (), arg, 0)
        row._names, row._converters = None, load
        return row

    @classmethod
    def loaded(cls, values: dict[str, Any]) -> PyRow:
        row = cls((), (), None, 0)
        row._values = values
        return row

    def _decode(self) -> dict[str, Any]:
        names, converters, data = self._names, self._converters, self._data
        if converters is None:  # another thread decoded this row meanwhile (see the compiled row_load)
            assert self._values is not None
            return self._values
        if names is None:
            values = converters(data)
            if type(values) is not dict:
                raise TypeError(f"a deferred row's load() returned {type(values).__name__}, not a dict")
        else:
            raw, _, end = py_split_tuple(data, self._offset)
            if self._whole and end != len(data):
                raise DecodeError(f"{len(data) - end} unexpected trailing bytes")
            values = {
                name: value if value is None or value is UNCHANGED_TOAST else convert(value)
                for name, convert, value in zip(names, converters, raw, strict=False)
            }
        self._values = values  # before the raw form goes: a thread that finds it gone finds these
        self._data = self._converters = None
        return values

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PyRow):
            return self._load() == other._load()
        if isinstance(other, Mapping):
            return self._load() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return dict, (self._load(),)

    def keys(self) -> Any:
        return self._load().keys()

    def items(self) -> Any:
        return self._load().items()

    def values(self) -> Any:
        return self._load().values()


# -- converters ------------------------------------------------------------------------------------------

# the decoder's scanner (the C one): json.loads without its encoding detection and whitespace regex
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def py_json_from_text(value: bytes | memoryview) -> Any:
    """A json/jsonb value's text form as psycopg's loader reads it (``json.loads``), at a third of its cost.

    ``json.loads(bytes)`` detects the encoding, decodes, matches whitespace with a regex, then scans; jsonb's
    text form is UTF-8 with no whitespace around it, so the scanner is called directly. Text it does not take
    whole (a json value with whitespace around it, malformed text) goes to ``json.loads``: same value or error.
    """
    text = bytes(value).decode()
    try:
        result, end = _scan_json(text, 0)
    except StopIteration:
        return json.loads(text)
    return result if end == len(text) else json.loads(text)


def _orjson_loads() -> Callable[[Any], Any] | None:
    try:
        return importlib.import_module("orjson").loads  # type: ignore[no-any-return]
    except ImportError:
        return None


_fast_loads = _orjson_loads()
_LONG_DIGIT_RUN = re.compile(rb"\d{19}")


def py_jsonb_from_text(value: bytes | memoryview) -> Any:
    """:func:`json_from_text` for jsonb, whose text PostgreSQL writes canonically, through orjson when it is
    installed. orjson reads integers beyond 64 bits as floats, so text with a run of 19 digits, or text orjson
    refuses (1e400), goes to :func:`json_from_text`: the value is always what ``json.loads`` gives."""
    if _fast_loads is not None and not _LONG_DIGIT_RUN.search(value):
        try:
            return _fast_loads(value)
        except ValueError:
            pass
    return py_json_from_text(value)


class PyGuarded:
    """``load(value)``, or ``fallback(value)`` when ``load`` raises one of ``errors`` (the pure-Python
    ``Guarded``: a converter for loaders that can refuse a server's text, such as 'infinity' timestamps)."""

    __slots__ = ("errors", "fallback", "load")

    def __init__(self, load: Converter, fallback: Converter, errors: tuple[type[BaseException], ...]) -> None:
        self.load, self.fallback, self.errors = load, fallback, errors

    def __call__(self, value: Any) -> Any:
        try:
            return self.load(value)
        except self.errors:
            return self.fallback(value)


def _compiled() -> Any:
    speedups = compiled("_speedups")
    if speedups is None:
        return None
    speedups.configure(DecodeError, UNCHANGED_TOAST, Mapping, _scan_json, json.loads, _fast_loads)
    Mapping.register(speedups.Row)
    return speedups


_C = _compiled()
IMPLEMENTATION = "c" if _C is not None else "python"

#: the row mapping every source hands to handlers (see the module docstring for its three constructors)
Row: Any = _C.Row if _C is not None else PyRow
split_tuple: Callable[[bytes | memoryview, int], tuple[tuple[ColumnValue, ...], tuple[bool, ...], int]] = (
    _C.split_tuple if _C is not None else py_split_tuple
)
tuple_end: Callable[[bytes | memoryview, int], int] = _C.tuple_end if _C is not None else py_tuple_end
json_from_text: Converter = _C.json_from_text if _C is not None else py_json_from_text
jsonb_from_text: Converter = _C.jsonb_from_text if _C is not None else py_jsonb_from_text
Guarded: Any = _C.Guarded if _C is not None else PyGuarded
#: microseconds since 2000-01-01 UTC → aware datetime, compiled (pgchanges.pgoutput.pg_timestamp uses it)
compiled_pg_timestamp: Callable[[int], Any] | None = _C.pg_timestamp if _C is not None else None
