"""The handler runtime: every piece of user code pgchanges calls runs through here, under one set of rules.

Row handlers of every source, the App's callbacks (plain notifications, gaps, DDL), transaction handlers,
periodic tasks and sinks all run through a :class:`Runtime`, so these hold everywhere:

* **where code runs**: an ``async def`` is awaited in the event loop; a plain function runs in a worker thread
  (it may block). Consecutive changes whose handlers are all plain functions share one thread hand-off (a
  :class:`~pgchanges.plain_run.PlainRun`).
* **a raising ``where=``** is a failure of that handler for that change, like the handler raising.
* **timeouts**: with ``handler_timeout`` each change's handlers get that many seconds; a late one is a
  failure with ``TimeoutError`` (a plain function's thread is abandoned, it cannot be interrupted).
* **the error policy** says what a failure does to serving: ``"log"`` (the default) logs it with the change
  id and goes on, ``"stop"`` ends serving with :class:`~pgchanges.errors.HandlerFailed`, a callable gets
  ``(change, exception)`` and decides (raise to stop). What happens to the *change* is the source's business,
  told through the outcomes :meth:`Runtime.run_changes` returns: sources without retries acknowledge it all
  the same, the outbox parks it for a retry.
* **per-row order behind failures** (``keys=``, the outbox): a change whose row (key) failed earlier is held
  back (outcome ``SKIPPED``), as is a change of unknown row once anything failed; a change's handlers stop at
  its first failure, because the change is retried whole.
* **the transaction**: a handler declared with ``transaction=True`` gets the source's transaction as its second
  argument; the handlers of one change run in one savepoint, so a failure undoes that change's writes only.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Protocol

import anyio

from pgchanges.change import Change
from pgchanges.errors import HandlerFailed
from pgchanges.plain_run import NOT_RUN, SKIPPED, Outcome, PlainRun, held_back
from pgchanges.routing import APP_DEFAULT, AppDefault, Route, Router

log = logging.getLogger("pgchanges.app")

ErrorPolicy = Literal["log", "stop"] | Callable[[Any, BaseException], Any]
__all__ = ["NOT_RUN", "SKIPPED", "ErrorPolicy", "Outcome", "Runtime", "RuntimeObserver", "apply_error_policy"]


class RuntimeObserver(Protocol):
    """What a runtime reports when observed (``Runtime.observer``; metrics, see :mod:`pgchanges.ops`): once per
    run of changes (a batch) and per failure, never per change, so that observing costs the hot path nothing
    measurable."""

    def run_started(self) -> int: ...

    def run_finished(self, token: int, changes: Sequence[Change]) -> None: ...

    def handler_failed(self, handler: str) -> None: ...


class _HandlerError(Exception):
    """Carries a failure out of a worker thread together with the handler that raised it."""

    def __init__(self, route: Route, error: BaseException) -> None:
        super().__init__(route.name)
        self.route = route
        self.error = error


class _StopRun(Exception):
    """Ends a plain run at the first failure when the policy is "stop"."""


_Failure = tuple[int, Route, BaseException]  # (index of the change, the handler, what it raised)


def apply_error_policy(policy: ErrorPolicy, handler: str, subject: Any, exc: BaseException) -> None:
    """What a failure leads to: the policy's own callable, or a log line (and for "stop", HandlerFailed)."""
    if callable(policy):
        policy(subject, exc)
        return
    what = f"change {subject.id} ({subject.op} {subject.qualified_table})" if isinstance(subject, Change) else subject
    context = {"change_id": subject.id, "table": subject.qualified_table} if isinstance(subject, Change) else {}
    log.error(
        "handler %s failed for %s: %s: %s", handler, what, type(exc).__name__, exc, exc_info=exc,
        extra={"handler": handler, **context},
    )  # fmt: skip
    if policy == "stop":
        raise HandlerFailed(f"handler {handler} failed for {what}: {exc!r}") from exc


@dataclass
class _Batch:
    """The changes of one :meth:`Runtime.run_changes` call and what is known about them so far."""

    changes: Sequence[Change]
    tx: Any
    keys: Sequence[str | None] | None
    outcomes: list[Outcome]
    failed: set[str] = field(default_factory=set)  # keys (rows) that failed in this batch


class Runtime:
    """Runs an App's handlers (``router``) under one error ``policy`` and ``handler_timeout``."""

    def __init__(self, router: Router, policy: ErrorPolicy = "log", handler_timeout: float | None = None) -> None:
        self.router = router
        self.policy = policy
        self.handler_timeout = handler_timeout
        self.failures = 0
        self.observer: RuntimeObserver | None = None
        # id of a routes tuple -> (the tuple, kept so that its id stays its own; whether all are plain functions;
        # whether one takes the transaction)
        self._plain: dict[int, tuple[tuple[Route, ...], bool, bool]] = {}

    # -- single calls: callbacks, transaction handlers, periodic tasks -----------------------------------

    async def call(
        self, func: Callable[..., Any], *args: Any, subject: Any, name: str | None = None
    ) -> BaseException | None:
        """Run one callback (async awaited, plain in a worker thread) under the policy; what it raised, if anything.

        ``subject`` is what the policy is told the failure was about (a change, or a description)."""
        try:
            if _is_async(func):
                await func(*args)
            else:
                await anyio.to_thread.run_sync(partial(func, *args), abandon_on_cancel=True)
        except Exception as exc:
            self._failed(name or _name_of(func), subject, exc)
            return exc
        return None

    # -- changes -----------------------------------------------------------------------------------------

    def prepare(self, changes: Sequence[Change]) -> None:
        """A batch read ahead (see :mod:`pgchanges.serving`): the batch routes that can prepare their part of it
        (a forwarder makes its messages) do so now, while the batch before is in flight. ``where`` is not asked
        here (it runs once, when the batch is handled); what a route prepares for nothing is only lost work."""
        for route in self.router.batch_routes:
            if route.prepare is None:
                continue
            mine = [change for change in changes if route.accepts(change)]
            if not mine:
                continue
            try:
                route.prepare(mine)
            except Exception:  # a bug of the route's: the handler makes what it needs itself
                log.exception("preparing a batch for %s failed", route.name)

    async def run_changes(
        self, changes: Sequence[Change], *, tx: Any = None, keys: Sequence[str | None] | None = None
    ) -> list[Outcome]:
        """Every change's handlers, in order; one outcome per change: None (handled), the exception, or SKIPPED
        (held back behind a failure of its row; only with ``keys``)."""
        observer = self.observer
        if observer is None:
            return await self._run_changes(changes, tx, keys)
        token = observer.run_started()
        try:
            return await self._run_changes(changes, tx, keys)
        finally:
            observer.run_finished(token, changes)

    async def _run_changes(
        self, changes: Sequence[Change], tx: Any, keys: Sequence[str | None] | None
    ) -> list[Outcome]:
        batch = _Batch(changes, tx, keys, [None] * len(changes))
        position = 0
        routes_for = self.router.routes_for
        while position < len(changes):
            if not routes_for(changes[position]):  # no per-change handler (batch routes only): nothing to run
                if keys is not None and held_back(keys[position], batch.failed):
                    batch.outcomes[position] = SKIPPED
                position += 1
                continue
            sink: list[_Failure] = []
            calls = self._plain_calls(batch, position, sink)
            if calls:
                position = await self._run_plain(batch, position, calls, sink)
            else:
                position = await self._run_one_by_one(batch, position)
        if self.router.batch_routes:
            await self._run_batch_routes(batch)
        return batch.outcomes

    def _routes_if_plain(self, change: Change, tx: Any) -> tuple[Route, ...] | None:
        """The change's routes when every one is a plain function that can run in a thread run, else None."""
        routes = self.router.routes_for(change)
        known = self._plain.get(id(routes))  # asked for every change: the router hands out cached tuples
        if known is None or known[0] is not routes:
            plain = not any(r.is_async or r.transaction for r in routes)
            known = self._plain[id(routes)] = (routes, plain, any(r.transaction for r in routes))
        return routes if known[1] else None

    def _plain_calls(self, batch: _Batch, position: int, sink: list[_Failure]) -> list[Callable[[], None]]:
        """The calls of the consecutive changes from ``position`` that one plain run can take. Unkeyed calls
        report their failures into ``sink`` (each handler runs regardless); keyed ones raise at the first."""
        calls: list[Callable[[], None]] = []
        stop = self.policy == "stop"
        keyed = batch.keys is not None
        changes, tx = batch.changes, batch.tx
        for index in range(position, len(changes)):
            change = changes[index]
            routes = self._routes_if_plain(change, tx)
            if routes is None:
                break
            if keyed:
                calls.append(partial(_call_until_failure, routes, change))
            else:
                calls.append(partial(_call_each, routes, change, index, sink, stop))
        return calls

    async def _run_plain(
        self, batch: _Batch, position: int, calls: list[Callable[[], None]], sink: list[_Failure]
    ) -> int:
        """One plain run from ``position``; the position after the calls that ran (a timeout ends the run)."""
        changes, keys, outcomes = batch.changes, batch.keys, batch.outcomes
        if keys is None:
            run = PlainRun(calls)
            with contextlib.suppress(_StopRun):  # the policy is "stop": it raises just below
                await run.run(self.handler_timeout)
            for index, route, error in sink:
                if outcomes[index] is None:
                    outcomes[index] = error
                self._failed(route.name, changes[index], error)
        else:
            run = PlainRun(calls, keys=keys[position : position + len(calls)], failed=batch.failed)
            await run.run(self.handler_timeout)
        for offset, result in enumerate(run.outcomes):
            index = position + offset
            if result is NOT_RUN:
                return index
            if isinstance(result, _HandlerError):
                self._failed(result.route.name, changes[index], result.error)
                outcomes[index] = result.error
            elif isinstance(result, BaseException):  # the timeout of the call in hand
                self._failed("of this App", changes[index], result)
                outcomes[index] = result
            elif result is SKIPPED:
                outcomes[index] = SKIPPED
        return position + len(calls)

    async def _run_one_by_one(self, batch: _Batch, position: int) -> int:
        """Changes from ``position`` on, each awaited in the event loop, until the next that a plain run can
        take; the position to go on from."""
        changes, tx, outcomes = batch.changes, batch.tx, batch.outcomes
        timeout = self.handler_timeout
        if timeout is None and batch.keys is None and tx is None:
            return await self._run_async_plainly(batch, position)
        if timeout is None:
            while position < len(changes):
                change = changes[position]
                if self._routes_if_plain(change, tx) is not None:
                    return position
                outcomes[position] = await self._handle_one(batch, position)
                position += 1
            return position
        # One cancel scope serves the changes. Its deadline is moved forward only when a tenth of the timeout
        # has passed, so each change gets between 0.9 and 1 times handler_timeout: a scope, or a timer
        # reschedule, per change costs more than a short handler. A timed-out scope is spent, so the caller
        # comes back with a fresh one. The loop's clock is read as time.monotonic() plus an offset taken once.
        slack = timeout / 10
        offset = anyio.current_time() - time.monotonic()
        with anyio.CancelScope() as scope:
            while position < len(changes):
                change = changes[position]
                if self._routes_if_plain(change, tx) is not None:
                    return position
                now = time.monotonic() + offset
                remaining = scope.deadline - now
                if remaining > timeout or remaining < timeout - slack:
                    scope.deadline = now + timeout
                position += 1
                outcomes[position - 1] = await self._handle_one(batch, position - 1)
        if scope.cancelled_caught:
            late = TimeoutError(f"handler did not finish within {timeout}s")
            self._failed("of this App", changes[position - 1], late)
            outcomes[position - 1] = late
            if batch.keys is not None:
                batch.failed.add(batch.keys[position - 1] or "")
        return position

    async def _run_async_plainly(self, batch: _Batch, position: int) -> int:
        """:meth:`_run_one_by_one` without a timeout, keys or a transaction (notify, logical, polling): the same
        rules, written out in one loop, because these calls happen once per change on the hottest path."""
        changes, outcomes = batch.changes, batch.outcomes
        routes_for, plain = self.router.routes_for, self._plain
        while position < len(changes):
            change = changes[position]
            routes = routes_for(change)
            known = plain.get(id(routes))
            if known is None or known[0] is not routes:
                self._routes_if_plain(change, None)
                known = plain[id(routes)]
            if known[1]:
                return position  # every handler is a plain function: a plain run takes it
            for route in routes:
                try:
                    if route.where is None or route.where(change):
                        await _handler_call(route, change, None)
                except Exception as exc:
                    if outcomes[position] is None:
                        outcomes[position] = exc
                    self._failed(route.name, change, exc)
            position += 1
        return position

    async def _handle_one(self, batch: _Batch, index: int) -> Outcome:
        """One change's handlers in the event loop; its outcome."""
        change, tx, keys, failed = batch.changes[index], batch.tx, batch.keys, batch.failed
        if keys is None:
            return await self._each_route(change, tx)
        key = keys[index]
        if held_back(key, failed):
            return SKIPPED
        routes = self.router.routes_for(change)
        try:
            if tx is not None and self._plain[id(routes)][2]:  # known: _routes_if_plain saw these routes
                async with tx.savepoint():
                    await _routes_until_failure(routes, change, tx)
            else:
                await _routes_until_failure(routes, change, tx)
        except _HandlerError as failure:
            failed.add(key or "")
            self._failed(failure.route.name, change, failure.error)
            return failure.error
        return None

    async def _run_batch_routes(self, batch: _Batch) -> None:
        """Each batch route gets, at once, the changes it subscribed to that were not held back; the timeout
        (if any) is for the whole call. A change it reports failed (or every change, when it raises) gets that
        outcome unless an earlier handler failed it already."""
        changes = batch.changes
        for route in self.router.batch_routes:
            picked: list[int] = []
            for index, change in enumerate(changes):
                if batch.outcomes[index] is SKIPPED or not route.accepts(change):
                    continue
                try:
                    if route.where is None or route.where(change):
                        picked.append(index)
                except Exception as exc:
                    self._record(batch, index, route, exc)
            if not picked:
                continue
            results: Sequence[Outcome] | None
            try:
                timeout = self.handler_timeout if isinstance(route.timeout, AppDefault) else route.timeout
                with anyio.fail_after(timeout):
                    results = await route.handler([changes[i] for i in picked])
            except Exception as exc:
                results = [exc] * len(picked)
            for index, result in zip(picked, results or (), strict=False):
                if isinstance(result, BaseException):
                    self._record(batch, index, route, result)
                elif result is SKIPPED and batch.outcomes[index] is None:
                    batch.outcomes[index] = SKIPPED

    def _record(self, batch: _Batch, index: int, route: Route, exc: BaseException) -> None:
        if batch.outcomes[index] is None:
            batch.outcomes[index] = exc
        if batch.keys is not None:
            batch.failed.add(batch.keys[index] or "")
        self._failed(route.name, batch.changes[index], exc, route.on_error)

    async def _each_route(self, change: Change, tx: Any) -> BaseException | None:
        """Every matching handler; each failure goes to the policy on its own. The first failure, if any."""
        first: BaseException | None = None
        for route in self.router.routes_for(change):
            try:
                await _run_route(route, change, tx)
            except Exception as exc:
                first = first or exc
                self._failed(route.name, change, exc)
        return first

    def _failed(self, handler: str, subject: Any, exc: BaseException, policy: Any = APP_DEFAULT) -> None:
        self.failures += 1
        if self.observer is not None:
            self.observer.handler_failed(handler)
        apply_error_policy(self.policy if policy is APP_DEFAULT else policy, handler, subject, exc)


async def _routes_until_failure(routes: Sequence[Route], change: Change, tx: Any) -> None:
    """The change's handlers in the event loop until the first failure (the change is retried whole)."""
    for route in routes:
        try:
            if route.where is None or route.where(change):
                await _handler_call(route, change, tx)
        except Exception as exc:
            raise _HandlerError(route, exc) from exc


async def _run_route(route: Route, change: Change, tx: Any) -> None:
    if route.where is None or route.where(change):
        await _call_route(route, change, tx)


def _handler_call(route: Route, change: Change, tx: Any) -> Awaitable[None]:
    """What to await to run the route's handler (its ``where`` already said yes): an async handler's own
    coroutine, without a frame of ours around it; anything else through :func:`_call_route`."""
    if route.is_async and not route.transaction:
        return route.handler(change)  # type: ignore[no-any-return]
    return _call_route(route, change, tx)


async def _call_route(route: Route, change: Change, tx: Any) -> None:
    """The handler of ``route`` for ``change`` (its ``where`` already said yes)."""
    args = (change, tx) if route.transaction else (change,)
    if route.is_async:
        await route.handler(*args)
    else:
        await anyio.to_thread.run_sync(partial(route.handler, *args), abandon_on_cancel=True)


def _call_until_failure(routes: Sequence[Route], change: Change) -> None:
    """In a worker thread: the change's handlers until the first failure (the change is retried whole)."""
    for route in routes:
        try:
            if route.where is None or route.where(change):
                route.handler(change)
        except Exception as exc:
            raise _HandlerError(route, exc) from exc


def _call_each(routes: Sequence[Route], change: Change, index: int, sink: list[_Failure], stop: bool) -> None:
    """In a worker thread: every handler of the change; failures go into ``sink`` for the event loop to report.
    With the "stop" policy the run ends after the first failing change."""
    failing = False
    for route in routes:
        try:
            if route.where is None or route.where(change):
                route.handler(change)
        except Exception as exc:
            sink.append((index, route, exc))
            failing = True
    if failing and stop:
        raise _StopRun


def _is_async(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func)


def _name_of(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", repr(func))
