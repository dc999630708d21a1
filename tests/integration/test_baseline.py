"""A fresh install runs the baseline; the schema it creates is the one every migration applied one by one leaves.

The two paths are compared by catalog (tests/schema_catalog.py) for a database of every earlier version; a
next migration (0011) must apply on top of both. tests/integration/test_server_versions.py compares them on
each PostgreSQL the suite starts, by catalog and by ``pg_dump --schema-only``.
"""

from __future__ import annotations

import psycopg
import pytest

from pgchanges.capture import migrations
from tests.schema_catalog import (
    apply_one_by_one,
    catalog,
    differences,
    scratch_database,
)

BASELINE = migrations.baseline()
assert BASELINE is not None, "capture/sql/ ships no baseline_NNNN.sql"

DROPPED_COLUMNS = """
SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE c.relnamespace = 'pgchanges'::regnamespace AND a.attisdropped
"""


@pytest.fixture(scope="module")
def baseline_catalog(cluster):
    """The catalog of a database that pgchanges installed fresh (the baseline, then anything above it)."""
    with scratch_database(cluster) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        migrations.migrate(conn)
        return catalog(conn)


def test_a_fresh_install_runs_the_baseline_and_records_what_it_stands_for(db):
    done = migrations.migrate(db)
    stands_for = [m for m in migrations.available() if m.version <= BASELINE.version]
    assert done[: len(stands_for)] == stands_for
    recorded = db.execute("SELECT version, name FROM pgchanges.migrations ORDER BY 1").fetchall()
    assert recorded == [(m.version, m.name) for m in migrations.available()]
    # the numbered files did not run: they drop columns (0008: consumers.horizon), the baseline never has any
    assert db.execute(DROPPED_COLUMNS).fetchone()[0] == 0
    assert migrations.migrate(db) == []
    assert migrations.pending(db) == []


@pytest.mark.parametrize("version", range(1, BASELINE.version + 1))
def test_a_database_of_every_earlier_version_migrates_to_the_baseline_schema(cluster, baseline_catalog, version):
    with scratch_database(cluster) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        apply_one_by_one(conn, version)
        done = migrations.migrate(conn)
        assert [m.version for m in done] == [m.version for m in migrations.available() if m.version > version]
        if version < 8:
            # evidence that these went through the numbered files, not the baseline
            assert conn.execute(DROPPED_COLUMNS).fetchone()[0] > 0
        assert differences(catalog(conn), baseline_catalog, ("migrated", "baseline")) == {}


# What a next migration typically does; it must apply the same on both paths.
NEXT_MIGRATION_SQL = """
ALTER TABLE pgchanges.consumers ADD COLUMN probe integer NOT NULL DEFAULT 0;
ALTER TABLE pgchanges.sleepers ALTER COLUMN until DROP DEFAULT;
CREATE INDEX events_probe ON pgchanges.events (table_oid, id);
CREATE FUNCTION pgchanges.probe_v1(p_consumer text) RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT probe FROM pgchanges.consumers WHERE name = p_consumer $fn$;
CREATE OR REPLACE FUNCTION pgchanges.like_escape_v1(name text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT replace(replace(replace(name, '\\', '\\\\'), '%', '\\%'), '_', '\\_') $fn$;
"""


def test_the_next_migration_applies_on_top_of_the_baseline_and_of_the_last_migration(cluster, monkeypatch):
    shipped = migrations.available()
    following = migrations.Migration(max(m.version for m in shipped) + 1, "probe", NEXT_MIGRATION_SQL)
    monkeypatch.setattr(migrations, "available", lambda: [*shipped, following])
    with (
        scratch_database(cluster) as fresh,
        scratch_database(cluster) as upgraded,
        psycopg.connect(fresh, autocommit=True) as fresh_conn,
        psycopg.connect(upgraded, autocommit=True) as upgraded_conn,
    ):
        assert migrations.migrate(fresh_conn)[-1] == following
        apply_one_by_one(upgraded_conn, BASELINE.version)
        assert migrations.migrate(upgraded_conn)[-1] == following
        after_baseline, after_migrations = catalog(fresh_conn), catalog(upgraded_conn)
    assert differences(after_baseline, after_migrations, ("baseline", "migrated")) == {}
    assert after_baseline["recorded_migrations"][-1] == (following.version, "probe")
    assert any(f[0] == "pgchanges.probe_v1(text)" for f in after_baseline["functions"])
