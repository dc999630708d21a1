"""Running an asyncio-only client (nats-py, redis-py, aio-pika) from trio as well as from asyncio.

On asyncio the sink's coroutines run in the caller's own event loop: no thread, no hand-off. Under trio a
:class:`Bridge` starts one asyncio event loop in a thread of its own for the sink's whole life: the client is
created, used and closed there, and each call (a window of publishes, never a single message) is handed over
with :func:`asyncio.run_coroutine_threadsafe`; the trio side waits for it without a thread of its own (the
loop thread wakes trio through its token). Cancelling the trio side cancels the coroutine in the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


def running_asyncio() -> bool:
    """Whether the calling code runs in an asyncio event loop (else: trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Bridge:
    """Calls coroutine functions in an asyncio event loop: the caller's, or (under trio) one in a thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def threaded(self) -> bool:
        return self._thread is not None

    async def start(self) -> None:
        if self._thread is not None or running_asyncio():
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"pgchanges-{self._name}", daemon=True)
        self._thread.start()
        await anyio.to_thread.run_sync(ready.wait)

    async def run(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await func(*args)`` in the sink's event loop."""
        loop = self._loop
        if loop is None:
            return await func(*args)
        future = asyncio.run_coroutine_threadsafe(_call(func, *args), loop)
        return await _wait(future)

    async def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        await anyio.to_thread.run_sync(thread.join)


async def _call(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    return await func(*args)


async def _wait(future: concurrent.futures.Future[T]) -> T:
    """The result of ``future`` (completed in the loop thread), waited for in trio without blocking a thread."""
    import trio  # noqa: PLC0415 - only under trio, where it is installed

    token = trio.lowlevel.current_trio_token()
    done = anyio.Event()

    def wake(_: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # trio ended meanwhile: nobody is waiting
            token.run_sync_soon(done.set)

    future.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        future.cancel()
        raise
    return future.result()
