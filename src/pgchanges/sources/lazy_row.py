"""The new row of a logical Insert, split and typed from the pgoutput bytes when first read (see pgchanges.lazy)."""

from __future__ import annotations

from typing import Any

from pgchanges.lazy import LazyMapping
from pgchanges.pgoutput import UNCHANGED_TOAST, ColumnValue, insert_tuple
from pgchanges.rowtypes import Converter


class LazyRow(LazyMapping):
    """Column name → Python value, decoded from ``payload`` (a plain pgoutput Insert) on first access."""

    __slots__ = ("_converters", "_names", "_payload")

    def __init__(self, names: tuple[str, ...], converters: tuple[Converter, ...], payload: bytes | memoryview) -> None:
        super().__init__()
        self._names = names
        self._converters = converters
        self._payload: bytes | memoryview | None = payload

    def _decode(self) -> dict[str, Any]:
        assert self._payload is not None
        data = insert_tuple(self._payload)
        self._payload = None
        return typed_values(self._names, self._converters, data.values)


def typed_values(
    names: tuple[str, ...], converters: tuple[Converter, ...], values: tuple[ColumnValue, ...]
) -> dict[str, Any]:
    """Column name → Python value of one pgoutput tuple (None and UNCHANGED_TOAST stay as they are)."""
    return {
        name: value if value is None or value is UNCHANGED_TOAST else convert(value)
        for name, convert, value in zip(names, converters, values, strict=False)
    }
