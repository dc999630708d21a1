"""The forwarder's standby lock (pgchanges.standby.SlotLock), in process: what a clean stop does to it."""

from __future__ import annotations

import anyio
import pytest

from pgchanges.standby import SlotLock, lock_name

pytestmark = pytest.mark.anyio


async def test_releasing_the_lock_ends_its_watch_without_an_error(dsn: str) -> None:
    # A SIGTERMed forwarder releases its lock while the watch still waits on the lock connection; closing the
    # connection under the watch once read as a lost lock, and the clean stop exited with an error.
    lock = SlotLock(dsn, lock_name(slot="quiet"))
    await lock.acquire()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lock.watch)
            await anyio.wait_all_tasks_blocked()
            await lock.release()
    successor = SlotLock(dsn, lock_name(slot="quiet"))
    with anyio.fail_after(10):  # released: the next process takes it at once
        await successor.acquire()
    await successor.release()


async def test_a_lock_released_before_its_watch_began_is_not_watched(dsn: str) -> None:
    lock = SlotLock(dsn, lock_name(slot="brief"))
    await lock.acquire()
    await lock.release()
    with anyio.fail_after(10):
        await lock.watch()
