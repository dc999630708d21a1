"""A row of a logical Insert whose values are decoded from the pgoutput bytes when first read.

Profiling the logical source with a no-op handler (cProfile, 100,000 inserts) put a third of the time per
change into splitting the tuple and converting its values, work a handler that routes on ``op`` and table,
counts, or forwards only some changes never needs. :class:`LazyRow` keeps the message bytes and does that work
on first access, once; afterwards it is a plain read-only mapping. A malformed message therefore raises
:class:`~pgchanges.pgoutput.DecodeError` when its values are first read instead of when it arrives.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pgchanges.pgoutput import UNCHANGED_TOAST, insert_tuple
from pgchanges.rowtypes import Converter


class LazyRow(Mapping[str, Any]):
    """Column name → Python value, decoded from ``payload`` (a plain pgoutput Insert) on first access."""

    __slots__ = ("_converters", "_names", "_payload", "_values")

    def __init__(self, names: tuple[str, ...], converters: tuple[Converter, ...], payload: bytes) -> None:
        self._names = names
        self._converters = converters
        self._payload: bytes | None = payload
        self._values: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        values = self._values
        if values is None:
            assert self._payload is not None
            data = insert_tuple(self._payload)
            values = {
                name: value if value is None or value is UNCHANGED_TOAST else convert(value)
                for name, convert, value in zip(self._names, self._converters, data.values, strict=False)
            }
            self._values, self._payload = values, None
        return values

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, key: object) -> bool:
        return key in self._load()

    def __repr__(self) -> str:
        return repr(self._load())
