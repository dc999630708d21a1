"""Runs handlers: changes of one table in commit order, different tables side by side.

Each table gets a *lane*: a task fed through a bounded memory stream, one send per batch (not per change).
Within a lane, calls to synchronous handlers that follow each other are run together in one worker thread,
so the thread hop is paid per run of calls, not per change; async handlers are awaited in the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from pgchanges.change import Change
from pgchanges.errors import HandlerFailed
from pgchanges.routing import Route, Router

log = logging.getLogger("pgchanges.app")

ErrorPolicy = Literal["log", "stop"] | Callable[[Change, BaseException], Any]
LANE_DEPTH = 64


@dataclass
class _Call:
    route: Route
    change: Change


class Dispatcher:
    """Feeds batches of changes to the routes' handlers, one lane per table."""

    def __init__(self, router: Router, on_error: ErrorPolicy = "log") -> None:
        self._router = router
        self._on_error = on_error
        self._lanes: dict[tuple[str | None, str | None], MemoryObjectSendStream[list[Change]]] = {}
        self._task_group: TaskGroup | None = None
        self.failed = 0

    async def __aenter__(self) -> Dispatcher:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        for lane in self._lanes.values():
            lane.close()
        assert self._task_group is not None
        return await self._task_group.__aexit__(*exc)  # type: ignore[arg-type]

    async def dispatch(self, changes: list[Change]) -> None:
        """Queue ``changes`` (in commit order) to their tables' lanes."""
        if not changes:
            return
        first = changes[0]
        key = (first.schema, first.table)
        if all((c.schema, c.table) == key for c in changes):
            await self._lane(key).send(changes)
            return
        grouped: dict[tuple[str | None, str | None], list[Change]] = {}
        for change in changes:
            grouped.setdefault((change.schema, change.table), []).append(change)
        for lane_key, group in grouped.items():
            await self._lane(lane_key).send(group)

    def _lane(self, key: tuple[str | None, str | None]) -> MemoryObjectSendStream[list[Change]]:
        lane = self._lanes.get(key)
        if lane is None:
            assert self._task_group is not None, "use the Dispatcher as an async context manager"
            lane, receive = anyio.create_memory_object_stream[list[Change]](LANE_DEPTH)
            self._lanes[key] = lane
            self._task_group.start_soon(self._run_lane, receive)
        return lane

    async def _run_lane(self, receive: MemoryObjectReceiveStream[list[Change]]) -> None:
        async with receive:
            async for batch in receive:
                await self.run_batch(batch)

    async def run_batch(self, batch: list[Change]) -> None:
        """Call every matching handler for every change of ``batch``, in order."""
        sync_run: list[_Call] = []
        for change in batch:
            for route in self._router.routes_for(change):
                if route.where is not None and not self._matches(route, change):
                    continue
                if route.is_async:
                    if sync_run:
                        await self._run_sync(sync_run)
                        sync_run = []
                    await self._call_async(route, change)
                else:
                    sync_run.append(_Call(route, change))
        if sync_run:
            await self._run_sync(sync_run)

    def _matches(self, route: Route, change: Change) -> bool:
        assert route.where is not None
        try:
            return bool(route.where(change))
        except Exception as exc:  # a broken filter is a handler failure, not a crash
            self._failed(route, change, exc)
            return False

    async def _call_async(self, route: Route, change: Change) -> None:
        try:
            await route.handler(change)
        except Exception as exc:
            self._failed(route, change, exc)

    async def _run_sync(self, calls: list[_Call]) -> None:
        failures = await anyio.to_thread.run_sync(self._call_all_sync, calls)
        for call, exc in failures:
            self._failed(call.route, call.change, exc)

    def _call_all_sync(self, calls: list[_Call]) -> list[tuple[_Call, BaseException]]:
        failures: list[tuple[_Call, BaseException]] = []
        for call in calls:
            try:
                call.route.handler(call.change)
            except Exception as exc:
                failures.append((call, exc))
                if self._on_error == "stop":
                    break
        return failures

    def _failed(self, route: Route, change: Change, exc: BaseException) -> None:
        self.failed += 1
        apply_error_policy(self._on_error, route.name, change, exc)


def apply_error_policy(policy: ErrorPolicy, handler: str, change: Change, exc: BaseException) -> None:
    """What a failed handler leads to: the policy's own callable, or a log line (and for "stop", HandlerFailed)."""
    if callable(policy):
        policy(change, exc)
        return
    log.error(
        "handler %s failed for change %s (%s %s): %s: %s",
        handler,
        change.id,
        change.op,
        change.qualified_table,
        type(exc).__name__,
        exc,
        exc_info=exc,
    )
    if policy == "stop":
        raise HandlerFailed(f"handler {handler} failed for change {change.id}: {exc!r}") from exc
