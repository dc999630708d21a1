"""Running an App's handlers for the durable sources: one change at a time, or many in one worker thread.

A handler that is a plain function runs in a worker thread, so that it cannot block the event loop. Handing
each change to a thread of its own cost more than the handler: an outbox worker given 3,800 changes/s with
a no-op plain handler used 0.47 of a core, most of it in thread hand-offs (py-spy). So sources hand
consecutive changes whose handlers are all plain functions to one thread, as a :class:`PlainRun`. Async
handlers, and handlers that take the transaction, run one change at a time in the event loop.

A :class:`PlainRun` still gives each change its own handler timeout: the event loop wakes at the deadline of
the change in hand; if that change is still running, the run is told to stop before its next change and the
thread is abandoned, as a timed-out single call would be.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final

import anyio

from pgchanges.change import Change
from pgchanges.dispatch import ErrorPolicy, apply_error_policy
from pgchanges.routing import Route, Router


class _Mark:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


SKIPPED: Final = _Mark("SKIPPED")  # not run: an earlier change of its key failed in this run or before
NOT_RUN: Final = _Mark("NOT_RUN")  # not reached: the run stopped at a timeout
Outcome = BaseException | _Mark | None  # None: the handlers returned


def held_back(key: str | None, failed: set[str]) -> bool:
    """Whether a change must wait behind a failed one: its key failed, or its key is unknown (None) and anything
    failed. A failure of an unknown key is recorded as ``""``."""
    return bool(failed) and (key is None or key in failed)


class PlainRun:
    """Calls run one after another in one worker thread, each with the handler timeout.

    With ``keys``, a failing call's key goes into ``failed`` and later calls of a failed key are skipped, as
    are calls whose key is unknown (None) once anything failed (the outbox keeps each row's changes in order);
    without ``keys``, the first exception ends the run and propagates.
    """

    def __init__(
        self,
        calls: Sequence[Callable[[], object]],
        keys: Sequence[str | None] | None = None,
        failed: set[str] | None = None,
    ) -> None:
        self._calls = calls
        self._keys = keys
        self.failed = failed if failed is not None else set()
        self.outcomes: list[Outcome] = [NOT_RUN] * len(calls)
        self._lock = threading.Lock()
        self._current = -1
        self._started = 0.0
        self._abandoned = False

    def execute(self) -> None:
        """The thread's side: run the calls in order until done, or until abandoned."""
        keyed = self._keys is not None
        for index, call in enumerate(self._calls):
            key = self._keys[index] if self._keys is not None else None
            with self._lock:
                if self._abandoned:
                    return
                if keyed and held_back(key, self.failed):
                    self.outcomes[index] = SKIPPED
                    continue
                self._current, self._started = index, time.monotonic()
            try:
                call()
            except Exception as exc:
                if not keyed:
                    raise
                with self._lock:
                    if not self._abandoned:
                        self.outcomes[index] = exc
                        self.failed.add(key or "")
            else:
                with self._lock:
                    if not self._abandoned:
                        self.outcomes[index] = None

    async def run(self, timeout: float | None = None) -> None:
        """Run the calls in a worker thread; a call still running ``timeout`` seconds after it started gets a
        ``TimeoutError`` outcome, and the calls after it stay ``NOT_RUN``."""
        if timeout is None:
            await anyio.to_thread.run_sync(self.execute)
            return
        finished = anyio.Event()

        async def execute() -> None:
            try:
                await anyio.to_thread.run_sync(self.execute, abandon_on_cancel=True)
            finally:
                finished.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(execute)
            while not finished.is_set():
                with anyio.move_on_after(self._time_left(timeout)):
                    await finished.wait()
                if not finished.is_set() and self._abandon_if_late(timeout):
                    tg.cancel_scope.cancel()

    def _time_left(self, timeout: float) -> float:
        with self._lock:
            started = self._started or time.monotonic()
        return max(0.0, started + timeout - time.monotonic())

    def _abandon_if_late(self, timeout: float) -> bool:
        with self._lock:
            if self._current < 0 or time.monotonic() - self._started < timeout:
                return False
            self._abandoned = True
            self.outcomes[self._current] = TimeoutError()
            if self._keys is not None:
                self.failed.add(self._keys[self._current] or "")
            return True


class Handling:
    """An App's handlers for one change (``await handling(change, tx)``) or a sequence of changes.

    With an error ``policy`` (logical, polling) a failing handler is logged, or handed to the policy, and the
    next change goes on; without one (outbox) the exception reaches the source, which retries the change.
    """

    def __init__(self, router: Router, policy: ErrorPolicy | None = None) -> None:
        self._router = router
        self._policy = policy
        # id of a routes tuple -> (the tuple, kept so that its id stays its own; whether all are plain functions)
        self._plain: dict[int, tuple[tuple[Route, ...], bool]] = {}

    async def __call__(self, change: Change, tx: Any) -> None:
        if self._policy is None:
            await self._run_routes(change, tx)
            return
        try:
            await self._run_routes(change, tx)
        except Exception as exc:
            apply_error_policy(self._policy, "of this App", change, exc)

    async def _run_routes(self, change: Change, tx: Any) -> None:
        for route in self._router.routes_for(change):
            if route.where is not None and not route.where(change):
                continue
            if route.wants_transaction:
                if tx is None:
                    await _run_handler(route, (change, None))
                    continue
                async with tx.savepoint():
                    await _run_handler(route, (change, tx))
            elif route.is_async:
                await route.handler(change)
            else:
                await anyio.to_thread.run_sync(route.handler, change, abandon_on_cancel=True)

    def plain_call(self, change: Change) -> Callable[[], None] | None:
        """The change's handling as one call to run in a worker thread, when every route matching it is a
        plain function that does not take the transaction; otherwise None."""
        routes = self._router.routes_for(change)
        known = self._plain.get(id(routes))  # asked for every change: the router hands out cached tuples
        if known is None or known[0] is not routes:
            known = self._plain[id(routes)] = (routes, not any(r.is_async or r.wants_transaction for r in routes))
        if not known[1]:
            return None
        if self._policy is None:
            return lambda: _call_routes(routes, change)
        return lambda: self._call_with_policy(routes, change)

    def _call_with_policy(self, routes: Sequence[Route], change: Change) -> None:
        assert self._policy is not None
        try:
            _call_routes(routes, change)
        except Exception as exc:
            apply_error_policy(self._policy, "of this App", change, exc)

    async def handle_all(self, changes: Sequence[Change]) -> None:
        """Every change in order: each run of changes with only plain handlers in one worker thread."""
        run: list[Callable[[], None]] = []
        for change in changes:
            call = self.plain_call(change)
            if call is not None:
                run.append(call)
                continue
            if run:
                await PlainRun(run).run()
                run = []
            await self(change, None)
        if run:
            await PlainRun(run).run()


async def _run_handler(route: Route, args: tuple[Any, ...]) -> None:
    if route.is_async:
        await route.handler(*args)
    else:
        await anyio.to_thread.run_sync(partial(route.handler, *args), abandon_on_cancel=True)


def _call_routes(routes: Sequence[Route], change: Change) -> None:
    for route in routes:
        if route.where is None or route.where(change):
            route.handler(change)
