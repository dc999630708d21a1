"""Hot standby for a forwarder: one process holds a slot (or polling consumer), the others wait to take over.

``pgchanges forward … --slot NAME`` run twice: each first takes a session-level advisory lock on a dedicated
connection, keyed by pgchanges' namespace and ``hashtext('slot:NAME')`` (``consumer:NAME`` for polling). The
first gets it and forwards; the second waits in ``pg_advisory_lock``. When the holder dies, its connection
drops and the server releases the lock at once (a SIGKILLed process's sockets are closed by the kernel; a
vanished machine, or a partition, by the server's TCP keepalives and user timeout, which the lock session sets
to about 25 s: the server's defaults wait two hours); the waiter gets the lock, waits (bounded) until the dead
holder's walsender let go of the slot, and goes on from the slot's confirmed position: nothing is lost, and
what was in flight is published again under the same ids (NATS and Redis store it once).

The holder watches its lock connection; if it breaks (the server restarted), the lock is gone and another
process may take it, so the holder stops serving (without acknowledging the batch in hand) and exits with an
error. ``pgchanges status`` lists holders and waiters (pg_locks with pg_stat_activity).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Any

import anyio
import psycopg

from pgchanges.capture.queries import fetch_all, fetch_one, query
from pgchanges.db.connect import close_async, connect_async
from pgchanges.errors import ConnectionLost

log = logging.getLogger("pgchanges.forward")

#: The first key of every forwarder lock ('pgch'): pg_locks shows it as classid, with objsubid 2.
LOCK_NAMESPACE = 0x70676368
SLOT_RELEASE_SECONDS = 30.0


def lock_name(*, slot: str | None = None, consumer: str | None = None) -> str:
    return f"slot:{slot}" if slot else f"consumer:{consumer}"


def holder_application_name(name: str) -> str:
    """What pg_stat_activity shows for a lock holder: the lock, this host and process (≤ 63 bytes)."""
    text = f"pgchanges forward {name} {socket.gethostname()}:{os.getpid()}"
    return text.encode()[:63].decode(errors="ignore")


class SlotLock:
    """The advisory lock on ``name`` (see the module docstring), on a connection of its own."""

    def __init__(self, conninfo: str, name: str, *, slot: str | None = None) -> None:
        self._conninfo = conninfo
        self.name = name
        self._slot = slot
        self._conn: psycopg.Connection[Any] | None = None
        self._params = {"namespace": LOCK_NAMESPACE, "name": name}
        self._watching: anyio.CancelScope | None = None
        self._watched: anyio.Event | None = None

    async def acquire(self) -> None:
        """Wait until this process holds the lock (and the slot is free); cancellable."""
        conn = await connect_async(self._conninfo, application_name=holder_application_name(self.name))
        self._conn = conn
        # The server must notice a vanished holder too, or the lock stays taken: an idle session has nothing in
        # flight to time out, and the server's own keepalives default to the system's two hours (issue 16).
        await anyio.to_thread.run_sync(conn.execute, query("forward_lock_keepalives"))
        holder = await anyio.to_thread.run_sync(fetch_one, conn, "forward_lock_holder", self._params)
        if holder is not None:
            log.warning(
                "standby: %s is held by %s (backend pid %s, %s); waiting to take over",
                self.name, holder.application_name, holder.pid, holder.client,
            )  # fmt: skip
        try:
            await anyio.to_thread.run_sync(conn.execute, query("forward_lock"), self._params, abandon_on_cancel=True)
        except BaseException:
            conn.cancel_safe()
            with anyio.CancelScope(shield=True):
                await close_async(conn)
            self._conn = None
            raise
        log.warning("standby: this process holds %s and forwards", self.name)
        if self._slot is not None:
            await self._wait_for_slot()

    async def _wait_for_slot(self) -> None:
        """The previous holder's walsender may hold the slot a moment longer than its lock: wait (bounded)."""
        assert self._conn is not None
        with anyio.move_on_after(SLOT_RELEASE_SECONDS):
            while await anyio.to_thread.run_sync(fetch_one, self._conn, "forward_slot_active", {"slot": self._slot}):
                await anyio.sleep(0.05)  # the server has no event for a slot becoming free
            return
        log.warning("slot %s is still active after %.0fs; starting anyway", self._slot, SLOT_RELEASE_SECONDS)

    async def watch(self) -> None:
        """Return never while the lock connection lives; raise ConnectionLost once it broke.

        ``release()`` ends the watch first and waits for it: closing the connection under a watch would read
        as a broken lock (and wait on a closed socket), which once made a clean SIGTERM exit with an error.
        """
        conn = self._conn
        if conn is None:  # released before the watch began
            return
        pgconn = conn.pgconn
        self._watched = watched = anyio.Event()
        try:
            with anyio.CancelScope() as self._watching:
                while True:
                    try:
                        await anyio.wait_readable(pgconn.socket)
                        pgconn.consume_input()
                    except (OSError, psycopg.OperationalError):
                        pass
                    if pgconn.status != psycopg.pq.ConnStatus.OK or conn.broken:
                        raise ConnectionLost(f"lost the lock on {self.name} (its connection broke); stopping")
                    await anyio.sleep(0.1)  # readable without breaking: a notice; look again shortly
        finally:
            watched.set()

    async def release(self) -> None:
        if self._watching is not None and self._watched is not None:
            self._watching.cancel()
            await self._watched.wait()
        conn, self._conn = self._conn, None
        await close_async(conn)  # the session ends: the server releases the lock


async def serve_holding(app: Any, lock: SlotLock | None, *, shutdown_timeout: float = 10.0) -> None:
    """Serve ``app`` (once it holds ``lock``) until SIGINT/SIGTERM; a second signal or ``shutdown_timeout``
    cancels the batch in hand (unacknowledged). Losing the lock ends serving with ConnectionLost."""
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    if app.server is None:  # still waiting for the lock
                        tg.cancel_scope.cancel()
                        return
                    app.stop()
                    with anyio.move_on_after(shutdown_timeout):
                        async for _ in signals:
                            break
                    tg.cancel_scope.cancel()

        tg.start_soon(on_signals)
        try:
            if lock is not None:
                await lock.acquire()
                tg.start_soon(lock.watch)
            await app.serve()
        finally:
            if lock is not None:
                with anyio.CancelScope(shield=True):
                    await lock.release()
        tg.cancel_scope.cancel()


def holders(conn: psycopg.Connection[Any]) -> list[Any]:
    """Every forwarder lock of the database: who holds it, who waits (for ``pgchanges status``)."""
    return fetch_all(conn, "forward_holders", {"namespace": LOCK_NAMESPACE})


def format_holders(rows: list[Any]) -> str:
    lines = [f"{'forwarder lock':<28} {'state':<8} {'backend pid':>11}  {'client':<16} application_name"]
    for row in rows:
        what = f"slot {row.slot_name}" if row.slot_name else f"lock {row.lock_key}"
        state = "holds" if row.granted else "waits"
        lines.append(f"{what:<28} {state:<8} {row.pid:>11}  {row.client:<16} {row.application_name}")
    return "\n".join(lines)
