"""Test fixtures: a real PostgreSQL cluster started by the suite, a fresh database per test, both runtimes.

The cluster comes from :class:`pgchanges.embedded.LocalCluster` (system binaries, else pgserver's), lives in a
temporary directory, runs with ``wal_level=logical`` on a free port, and is removed at the end of the session.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql

from pgchanges.embedded import LocalCluster

_db_counter = itertools.count()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster() as started:
        yield started


@pytest.fixture
def dsn(cluster: LocalCluster) -> Iterator[str]:
    """A DSN for a database created for this test alone (dropped afterwards)."""
    name = f"t{os.getpid()}_{next(_db_counter)}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield cluster.dsn(name)
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        _drop_database(admin, name)


def _drop_database(admin: psycopg.Connection[Any], name: str) -> None:
    """Drop a test database. A walsender of a just-closed stream may still hold its slot for a moment: end it
    and wait (bounded) for the slot to be released, which DROP DATABASE requires."""
    deadline = time.monotonic() + 10
    while True:
        active = admin.execute(
            """SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
               WHERE database = %s AND active AND active_pid IS NOT NULL""",
            (name,),
        ).fetchall()
        if not active:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"replication slots of {name} stayed active for 10 s")
        time.sleep(0.05)  # the terminated walsender releases its slot asynchronously; nothing to await
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's database, for setting up tables and writing rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


async def wait_until(predicate: Callable[[], bool], what: str | Callable[[], str], timeout: float = 10.0) -> None:
    """Poll ``predicate`` (cheap, in-memory checks only) until true; fail with ``what`` after ``timeout``.

    ``what`` may be a function, called at the failure, to say what was seen by then.
    """
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)
        return
    pytest.fail(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll a condition 5 times a second without an event loop (cheap, so worker processes keep the CPU)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


async def take(changes: Any, count: int, timeout: float = 15.0) -> list[Any]:
    """The next ``count`` items of an async iterator, or a clear failure after ``timeout`` seconds."""
    got: list[Any] = []
    iterator: AsyncIterator[Any] = changes.__aiter__()
    with anyio.move_on_after(timeout):
        while len(got) < count:
            got.append(await iterator.__anext__())
        return got
    pytest.fail(f"timed out after {timeout}s with {len(got)} of {count} changes: {got[-3:]!r}")


def outbox_pending(db: psycopg.Connection[Any]) -> int:
    """Outbox events cut into batches or parked, not yet acknowledged (every consumer)."""
    row = db.execute(
        """SELECT (SELECT coalesce(sum(cardinality(event_ids)), 0) FROM pgchanges.batches)
                  + (SELECT count(*) FROM pgchanges.parked)"""
    ).fetchone()
    assert row is not None
    return int(row[0])
