"""Applies the versioned SQL files in ``capture/sql/`` to a database, once each, in order.

Each file ``NNNN_name.sql`` is one migration, applied in its own transaction under an advisory lock so that
concurrent installers cannot interleave. ``pgchanges.migrations`` records what has been applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

ADVISORY_LOCK_KEY = 0x7067636867  # "pgchg": serialises installers across sessions
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """The migrations shipped with this version of pgchanges, oldest first."""
    found: list[Migration] = []
    for entry in resources.files("pgchanges.capture").joinpath("sql").iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def applied_versions(conn: psycopg.Connection[Any]) -> set[int]:
    exists = conn.execute("SELECT to_regclass('pgchanges.migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return set()
    return {row[0] for row in conn.execute("SELECT version FROM pgchanges.migrations")}


def migrate(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Apply every migration not yet applied; return those applied now. ``conn`` must be in autocommit."""
    done: list[Migration] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        have = applied_versions(conn)
        for migration in available():
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
    """The shipped migrations this database has not applied yet."""
    have = applied_versions(conn)
    return [m for m in available() if m.version not in have]
