"""Install, migrate and capture on the oldest and the newest PostgreSQL the suite can start.

The oldest is the default cluster (the system's PostgreSQL 15: initdb on PATH); the newest is PostgreSQL 16
from the ``pgserver`` wheel. Together they are the range that pgchanges.db.server_version states.
"""

from __future__ import annotations

import contextlib
import difflib

import psycopg
import pytest

import pgchanges
from pgchanges.capture import migrations
from pgchanges.db import server_version
from pgchanges.embedded import LocalCluster, pgserver_bindir
from pgchanges.errors import ConfigError
from tests.conftest import take
from tests.schema_catalog import (
    apply_one_by_one,
    catalog,
    differences,
    pg_dump_binary,
    pg_dump_schema,
    scratch_database,
)


@pytest.fixture(scope="module")
def pgserver_cluster():
    bindir = pgserver_bindir()
    if bindir is None:
        pytest.skip("pgserver is not installed (pip install pgchanges[embedded]): no PostgreSQL 16 binaries")
    own = LocalCluster(bindir=bindir)
    try:
        own.start()
    except ConfigError as exc:
        # as root, the server runs as the postgres OS user, which cannot run binaries below a directory closed
        # to it; embedded.py copies them where it can (until then: "Permission denied" from runuser)
        if "Permission denied" not in str(exc) and "cannot run the binaries" not in str(exc):
            raise
        with contextlib.suppress(ConfigError):
            own.stop()
        pytest.skip(f"the postgres OS user cannot run pgserver's PostgreSQL 16 binaries: {exc}")
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture(params=["default", "pgserver"])
def server(request, cluster) -> LocalCluster:
    """The default cluster of the suite, and the one of pgserver's binaries."""
    if request.param == "default":
        return cluster
    return request.getfixturevalue("pgserver_cluster")


def test_the_server_is_in_the_supported_range(server):
    with scratch_database(server) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        version = server_version.require_supported(conn)
    assert server_version.major(version) == server.version
    # the suite's servers are the tested range: a newer one here means MAX_TESTED_MAJOR is out of date
    assert version >= server_version.MIN_SERVER_VERSION
    assert server_version.major(version) <= server_version.MAX_TESTED_MAJOR


def test_the_baseline_and_every_migration_one_by_one_leave_the_same_schema(server):
    """By catalog, and by pg_dump as a second opinion (the cluster's own pg_dump when it has one)."""
    with (
        scratch_database(server) as fresh,
        scratch_database(server) as stepped,
        psycopg.connect(fresh, autocommit=True) as fresh_conn,
        psycopg.connect(stepped, autocommit=True) as stepped_conn,
    ):
        migrations.migrate(fresh_conn)
        apply_one_by_one(stepped_conn, max(m.version for m in migrations.available()))
        assert differences(catalog(stepped_conn), catalog(fresh_conn), ("migrated", "baseline")) == {}
        pg_dump, why_not = pg_dump_binary(fresh_conn, server.bindir)
        if pg_dump is None:
            pytest.skip(f"the catalogs agree; no pg_dump to compare with: {why_not}")
        from_baseline, from_migrations = pg_dump_schema(pg_dump, fresh), pg_dump_schema(pg_dump, stepped)
    assert any(line.startswith("CREATE TABLE pgchanges.consumers") for line in from_baseline)
    diff = "\n".join(difflib.unified_diff(from_migrations, from_baseline, "migrations", "baseline", lineterm=""))
    assert from_baseline == from_migrations, diff


@pytest.mark.anyio
async def test_capture_round_trip_of_every_trigger_and_logical_source(server):
    with scratch_database(server) as dsn, psycopg.connect(dsn, autocommit=True) as db:
        db.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
        db.execute("INSERT INTO orders VALUES (1, 'before')")  # for the logical snapshot

        async with pgchanges.stream(dsn, tables=["orders"]) as changes:  # installs: the baseline runs here
            db.execute("UPDATE orders SET status = 'notify' WHERE id = 1")
            [notified] = await take(changes, 1)
        assert (notified.source, notified.op, notified.new) == ("notify", "update", {"id": 1, "status": "notify"})

        async with pgchanges.stream(dsn, tables=["orders"], source="outbox", consumer="versions") as changes:
            db.execute("INSERT INTO orders VALUES (2, 'outbox')")
            [boxed] = await take(changes, 1)
            await changes.ack(boxed)
        assert (boxed.source, boxed.op, boxed.new) == ("outbox", "insert", {"id": 2, "status": "outbox"})

        # an exported snapshot (CREATE_REPLICATION_SLOT with options: the reason the floor is 15), then the stream
        async with pgchanges.stream(dsn, tables=["orders"], source="logical", snapshot=True) as changes:
            db.execute("DELETE FROM orders WHERE id = 2")
            got = await take(changes, 3)
            await changes.ack(*got)
        assert [(c.op, (c.new or c.old)["id"], bool((c.extra or {}).get("snapshot"))) for c in got] == [
            ("insert", 1, True),
            ("insert", 2, True),
            ("delete", 2, False),
        ]
        assert db.execute("SELECT max(version) FROM pgchanges.migrations").fetchone()[0] == max(
            m.version for m in migrations.available()
        )
