"""Subscriptions and routing: which handlers a change goes to, decided once per (table, op) and cached."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pgchanges.change import OPS, Change
from pgchanges.errors import ConfigError
from pgchanges.names import TableName, parse_table

Predicate = Callable[[Change], bool]


@dataclass(frozen=True)
class Route:
    """One ``@app.on(...)`` subscription."""

    table: TableName
    ops: frozenset[str]
    handler: Callable[..., Any]
    where: Predicate | None = None
    is_async: bool = field(init=False)
    wants_transaction: bool = field(init=False)
    name: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.handler))
        object.__setattr__(self, "wants_transaction", _positional_parameters(self.handler) >= 2)
        object.__setattr__(self, "name", getattr(self.handler, "__qualname__", repr(self.handler)))


def _positional_parameters(handler: Callable[..., Any]) -> int:
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature take the change only
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in parameters if p.kind in kinds)


def normalise_ops(ops: Iterable[str] | str | None) -> frozenset[str]:
    if ops is None:
        return frozenset(("insert", "update", "delete", "truncate", "upsert"))
    chosen = frozenset([ops] if isinstance(ops, str) else ops)
    unknown = chosen - OPS
    if unknown:
        raise ConfigError(f"unknown op(s) {sorted(unknown)}; choose from {sorted(OPS - {'gap'})}")
    return chosen


class Router:
    """Holds routes and answers "which routes get this change" quickly."""

    def __init__(self) -> None:
        self._routes: list[Route] = []
        self._cache: dict[tuple[str | None, str | None, str], tuple[Route, ...]] = {}

    def add(
        self,
        table: str | TableName,
        ops: Iterable[str] | str | None,
        handler: Callable[..., Any],
        where: Predicate | None = None,
    ) -> Route:
        name = table if isinstance(table, TableName) else parse_table(table)
        route = Route(name, normalise_ops(ops), handler, where)
        self._routes.append(route)
        self._cache.clear()
        return route

    @property
    def tables(self) -> list[TableName]:
        return list(dict.fromkeys(route.table for route in self._routes))

    def routes_for(self, change: Change) -> tuple[Route, ...]:
        key = (change.schema, change.table, change.op)
        found = self._cache.get(key)
        if found is None:
            found = tuple(
                r for r in self._routes if change.op in r.ops and r.table.matches(change.schema, change.table)
            )
            self._cache[key] = found
        return found
