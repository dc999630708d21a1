"""Read-only row mappings whose values are decoded on first access, then kept.

Profiling the logical and outbox sources with a no-op handler (cProfile and py-spy) put a third to a half of the
time per change into splitting rows and typing their values: work that a handler which routes on ``op`` and
table, counts, or forwards only some changes never needs. A :class:`LazyMapping` keeps the raw form and decodes
it once, when a value is first read; afterwards it is a plain read-only mapping. A malformed row therefore
raises when its values are first read instead of when it arrives.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


class LazyMapping(Mapping[str, Any]):
    """Column name → Python value; subclasses say how to decode the raw row in :meth:`_decode`."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[str, Any] | None = None

    def _decode(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self) -> dict[str, Any]:
        values = self._values
        if values is None:
            values = self._values = self._decode()
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
