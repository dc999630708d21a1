"""Creates and upgrades the ``pgchanges`` schema from the versioned SQL files in ``capture/sql/``.

Two kinds of file:

* ``NNNN_name.sql`` is one **migration**: it takes a database at version NNNN-1 to NNNN.
  ``pgchanges.migrations`` records each migration a database has applied (version and name).
* ``baseline_NNNN.sql`` is a **baseline**: the schema exactly as migrations 1..NNNN, applied one by one, leave
  it, created in one go, and those migrations recorded as applied. It is named after the last migration it
  stands for, and does not match the migration pattern, so it is never taken for one.

A database without ``pgchanges.migrations`` (a fresh install) runs the newest baseline, then the migrations
numbered above it. A database that has applied any migration goes through the numbered files it has not
applied. Either way it ends at the same schema: tests/integration/test_baseline.py compares the catalog that
the baseline creates with the one that every migration applied one by one leaves.

**A landed migration is never edited, nor is a landed baseline.** Databases out there have run it; editing it
would change nothing in them and make fresh installs differ from upgraded ones. Every schema change is a new
numbered migration, written so that it applies to the schema that both the baseline and the migration before
it leave (they are the same). Functions carry a version suffix (``_v1``, ``_v2``) so that a migration can add
a new version beside the one it replaces. The numbered files stay as long as databases created before the
baseline may be upgraded; a new baseline (``baseline_NNNN.sql`` for a later NNNN) may be added in a later
release, and the older baseline removed then, as only the newest is ever run.

Everything pending runs in one transaction, under an advisory lock so that concurrent installers cannot
interleave: a failure leaves the database as it was. :func:`migrate` first checks that the server is a
PostgreSQL version pgchanges supports (:mod:`pgchanges.db.server_version`), so every install path checks it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from pgchanges.db import server_version

ADVISORY_LOCK_KEY = 0x7067636867  # "pgchg": serialises installers across sessions
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_BASELINE_RE = re.compile(r"^baseline_(\d{4})\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True)
class Baseline:
    """The schema as migrations 1..``version`` leave it, with those migrations recorded as applied."""

    version: int
    sql: str


def available() -> list[Migration]:
    """The migrations shipped with this version of pgchanges, oldest first."""
    found: list[Migration] = []
    for entry in resources.files("pgchanges.capture").joinpath("sql").iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def baseline() -> Baseline | None:
    """The newest baseline shipped with this version of pgchanges (None if there is none)."""
    found: list[Baseline] = []
    for entry in resources.files("pgchanges.capture").joinpath("sql").iterdir():
        match = _BASELINE_RE.match(entry.name)
        if match:
            found.append(Baseline(int(match.group(1)), entry.read_text(encoding="utf-8")))
    return max(found, key=lambda b: b.version, default=None)


def applied_versions(conn: psycopg.Connection[Any]) -> set[int]:
    exists = conn.execute("SELECT to_regclass('pgchanges.migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return set()
    return {row[0] for row in conn.execute("SELECT version FROM pgchanges.migrations")}


def migrate(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Bring the schema up to date; return the migrations recorded as applied now. ``conn`` must be in autocommit.

    On a fresh database that is the migrations the baseline stands for (it ran instead of them) and any
    numbered above it. Raises :class:`pgchanges.errors.ConfigError` on a server pgchanges does not support.
    """
    server_version.require_supported(conn)
    shipped = available()
    done: list[Migration] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        have = applied_versions(conn)
        base = baseline() if not have else None
        if base is not None:
            conn.execute(base.sql.encode())
            have = applied_versions(conn)
            done.extend(m for m in shipped if m.version in have)
        for migration in shipped:
            if migration.version in have:
                continue
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO pgchanges.migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            done.append(migration)
    return done


def pending(conn: psycopg.Connection[Any]) -> list[Migration]:
    """The shipped migrations this database has not applied yet (all of them before the first install)."""
    have = applied_versions(conn)
    return [m for m in available() if m.version not in have]
