"""Many plain-function calls in one worker thread, each with its own timeout (a :class:`PlainRun`).

A handler that is a plain function runs in a worker thread, so that it cannot block the event loop. Handing
each change to a thread of its own costs more than a short handler, so the runtime hands consecutive changes
whose handlers are all plain functions to one thread, as one run (the profile is in bench/results/).

A run still gives each call its own timeout: the event loop wakes at the deadline of the call in hand; if that
call is still running, the run is told to stop before its next call and the thread is abandoned, as a
timed-out single call would be.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

import anyio


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
            self.outcomes[self._current] = TimeoutError(f"handler did not finish within {timeout}s")
            if self._keys is not None:
                self.failed.add(self._keys[self._current] or "")
            return True
