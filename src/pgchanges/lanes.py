"""Per-table lanes for a source that does not wait for its handlers (notify): tables are handled side by side.

The notify source is at-most-once and acknowledges nothing, so it reads on while handlers run. Each table's
changes go, in commit order, to a lane of their own: a bounded queue and a task that runs them through the
runtime. A slow table delays only itself; a full lane makes the reader wait (back-pressure, bounded memory).
"""

from __future__ import annotations

from operator import attrgetter

from anyio import create_memory_object_stream, create_task_group
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from pgchanges.change import Change
from pgchanges.runtime import Runtime

#: Batches a lane holds before its reader waits.
LANE_DEPTH = 64

_TABLE_OF = attrgetter("schema", "table")
_Key = tuple[str | None, str | None]


class TableLanes:
    """Use as ``async with TableLanes(runtime) as lanes: await lanes.dispatch(changes)``."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._lanes: dict[_Key, MemoryObjectSendStream[list[Change]]] = {}
        self._task_group: TaskGroup | None = None

    async def __aenter__(self) -> TableLanes:
        self._task_group = create_task_group()
        await self._task_group.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        for lane in self._lanes.values():
            lane.close()  # each lane finishes what it holds, then ends
        assert self._task_group is not None
        return await self._task_group.__aexit__(*exc)  # type: ignore[arg-type]

    async def dispatch(self, changes: list[Change]) -> None:
        """Queue ``changes`` (in commit order) to their tables' lanes."""
        if not changes:
            return
        keys = list(map(_TABLE_OF, changes))  # in C: a generator over the changes was a twentieth of notify's time
        if keys.count(keys[0]) == len(keys):
            await self._lane(keys[0]).send(changes)
            return
        grouped: dict[_Key, list[Change]] = {}
        for key, change in zip(keys, changes, strict=True):
            grouped.setdefault(key, []).append(change)
        for lane_key, group in grouped.items():
            await self._lane(lane_key).send(group)

    def _lane(self, key: _Key) -> MemoryObjectSendStream[list[Change]]:
        lane = self._lanes.get(key)
        if lane is None:
            assert self._task_group is not None, "use TableLanes as an async context manager"
            lane, receive = create_memory_object_stream[list[Change]](LANE_DEPTH)
            self._lanes[key] = lane
            self._task_group.start_soon(self._run_lane, receive)
        return lane

    async def _run_lane(self, receive: MemoryObjectReceiveStream[list[Change]]) -> None:
        async with receive:
            async for batch in receive:
                await self._runtime.run_changes(batch)
