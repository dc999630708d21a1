"""Subscriptions and routing: which handlers a change goes to, decided once per (table, op) and cached."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pgchanges.change import OPS, Change
from pgchanges.errors import ConfigError
from pgchanges.names import TableName, parse_table

Predicate = Callable[[Change], bool]


class AppDefault:
    def __repr__(self) -> str:
        return "the App's"


#: A batch route's ``on_error`` or ``timeout`` not given: the App's.
APP_DEFAULT = AppDefault()


@dataclass(frozen=True)
class Route:
    """One ``@app.on(...)`` subscription. ``transaction``: the handler takes the outbox transaction as its second
    argument (declared, never guessed from the signature). ``batch``: the handler is an ``async def`` that takes
    the list of a batch's changes it subscribed to, at once (sinks: they publish a window of changes and return
    when all are confirmed), and returns None or one exception-or-None per change. A batch route may bring its
    own ``on_error`` policy and ``timeout`` instead of the App's (a sink retries an absent broker itself, for as
    long as it takes, and on a source without retries stops serving rather than let a refused change pass)."""

    table: TableName
    ops: frozenset[str]
    handler: Callable[..., Any]
    where: Predicate | None = None
    transaction: bool = False
    batch: bool = False
    on_error: Any = APP_DEFAULT  # batch routes: an error policy (see pgchanges.runtime.ErrorPolicy)
    timeout: float | AppDefault | None = APP_DEFAULT  # batch routes: seconds for the whole call (None: none)
    #: batch routes: called with the route's changes of a batch read ahead, while the batch before is handled
    #: (a sink makes its messages meanwhile); it must not raise, and the handler works without it
    prepare: Callable[[Sequence[Change]], None] | None = None
    is_async: bool = field(init=False)
    name: str = field(init=False)
    _tables: dict[tuple[str | None, str | None], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.handler))
        object.__setattr__(self, "name", getattr(self.handler, "__qualname__", repr(self.handler)))
        object.__setattr__(self, "_tables", {})  # (schema, table) -> whether self.table matches it
        check_handler_arguments(self.handler, self.name, 2 if self.transaction else 1)
        if self.batch and (self.transaction or not self.is_async):
            raise ConfigError(f"batch handler {self.name} must be an async def taking the changes only")
        if not self.batch and (self.on_error is not APP_DEFAULT or self.timeout is not APP_DEFAULT):
            raise ConfigError(f"handler {self.name}: only batch routes take their own on_error and timeout")

    def accepts(self, change: Change) -> bool:
        """Whether the change is of this route's table and ops (``where`` aside). Asked for every change of a
        batch route: the answer for each table is kept (a pattern is matched once per table, not per change)."""
        if change.op not in self.ops:
            return False
        key = (change.schema, change.table)
        known = self._tables.get(key)
        if known is None:
            known = self._tables[key] = self.table.matches(change.schema, change.table)
        return known


def check_handler_arguments(handler: Callable[..., Any], name: str, given: int) -> None:
    """A handler must accept ``given`` positional arguments and require no more; the error says what to declare.

    A handler that requires two (``def h(change, tx)``) without ``transaction=True`` was once taken for a
    transaction handler by counting its parameters, which made ``def h(change, retries=3)`` one by accident:
    the second argument is now declared, and the old form is refused with a message saying how.
    """
    try:
        parameters = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: trust the caller
        return
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = sum(1 for p in parameters if p.kind in positional and p.default is p.empty)
    accepted = sum(1 for p in parameters if p.kind in positional)
    variadic = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    if required > given:
        hint = " (to get the outbox transaction as second argument, declare @app.on(..., transaction=True))"
        raise ConfigError(
            f"handler {name} requires {required} positional arguments but gets {given}{hint if given == 1 else ''}"
        )
    if accepted < given and not variadic:
        raise ConfigError(f"handler {name} must accept {given} positional arguments (the change and the transaction)")


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
        self._batch_routes: list[Route] = []
        self._cache: dict[tuple[str | None, str | None, str], tuple[Route, ...]] = {}

    def add(
        self,
        table: str | TableName,
        ops: Iterable[str] | str | None,
        handler: Callable[..., Any],
        where: Predicate | None = None,
        *,
        transaction: bool = False,
        batch: bool = False,
        on_error: Any = APP_DEFAULT,
        timeout: float | AppDefault | None = APP_DEFAULT,
        prepare: Callable[[Sequence[Change]], None] | None = None,
    ) -> Route:
        name = table if isinstance(table, TableName) else parse_table(table)
        route = Route(name, normalise_ops(ops), handler, where, transaction, batch, on_error, timeout, prepare)
        (self._batch_routes if batch else self._routes).append(route)
        self._cache.clear()
        return route

    @property
    def routes(self) -> tuple[Route, ...]:
        """Every subscription: per-change routes, then batch routes."""
        return (*self._routes, *self._batch_routes)

    @property
    def batch_routes(self) -> tuple[Route, ...]:
        return tuple(self._batch_routes)

    @property
    def tables(self) -> list[TableName]:
        return list(dict.fromkeys(route.table for route in self.routes))

    def routes_for(self, change: Change) -> tuple[Route, ...]:
        """The per-change routes of ``change`` (batch routes are asked for with :meth:`Route.accepts`)."""
        key = (change.schema, change.table, change.op)
        found = self._cache.get(key)
        if found is None:
            found = tuple(
                r for r in self._routes if change.op in r.ops and r.table.matches(change.schema, change.table)
            )
            self._cache[key] = found
        return found
