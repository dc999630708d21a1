"""The least privileges a consuming role needs, per source: what ``pgchanges grant ROLE --source …`` prints.

Capture is installed by a table's owner (or a superuser); the role that *consumes* needs much less, and this
module says exactly what. Per source (docs/privileges.md explains each line):

- every source: ``CONNECT`` on the database;
- **notify**: read the schema's bookkeeping (``migrations``, ``captures``, ``capture_rules``) and the
  spilled payloads (``spill``: read, and delete the expired ones);
- **outbox**: the same bookkeeping, and the worker's own tables (consumers, batches, parked events, cut
  marks, lanes, dead letters: read and write; events: read and delete what was delivered), the functions a
  worker calls (claim floor, lanes, row keys, sleep and wake-up);
- **logical**: the ``REPLICATION`` attribute (only a superuser may give it on PostgreSQL ≤ 15), ``SELECT``
  on the tables (the initial snapshot and type lookups), the schema's logical bookkeeping;
- **polling**: ``SELECT`` on the tables and ``USAGE`` on their schemas, nothing else; where schema pgchanges
  exists, also ``pgchanges.poll_state`` (read and write) so the watermark is kept in the database rather
  than a local file.

Only objects that exist are named (a database where only polling was ever used has no schema pgchanges).
Role and table names are identifiers composed with :mod:`psycopg.sql`; the privilege keywords are fixed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from pgchanges.capture.install import resolve
from pgchanges.capture.queries import fetch_all, fetch_one
from pgchanges.errors import ConfigError, PermissionDenied
from pgchanges.names import TableName

SOURCES = ("notify", "outbox", "logical", "polling")

READ = "SELECT"
READ_WRITE = "SELECT, INSERT, UPDATE, DELETE"


@dataclass(frozen=True)
class Need:
    """One privilege on one pgchanges object: ``what`` is a table or view name, or a function signature."""

    privileges: str
    what: str
    function: bool = False


#: What every source that uses schema pgchanges reads: the schema version and what is captured.
_BOOKKEEPING = (
    Need(READ, "pgchanges.migrations"),
    Need(READ, "pgchanges.captures"),
    Need(READ, "pgchanges.capture_rules"),
)

NEEDS: dict[str, tuple[Need, ...]] = {
    "notify": (
        *_BOOKKEEPING,
        Need("SELECT, DELETE", "pgchanges.spill"),
        Need("EXECUTE", "pgchanges.follow_all_v1()", True),
    ),
    "outbox": (
        *_BOOKKEEPING,
        Need("SELECT, DELETE", "pgchanges.events"),
        Need(READ, "pgchanges.events_named"),
        Need(READ, "pgchanges.table_names"),
        Need(READ, "pgchanges.sleepers"),
        Need(READ, "pgchanges.event_seq"),
        *(
            Need(READ_WRITE, f"pgchanges.{name}")
            for name in ("consumers", "consumer_rules", "batches", "parked", "cut_marks", "lanes", "dead_letters")
        ),
        *(
            Need("EXECUTE", signature, True)
            for signature in (
                "pgchanges.follow_all_v1()",
                "pgchanges.cut_floor_v1(text, pg_snapshot)",
                "pgchanges.lane_v1(text, integer)",
                "pgchanges.row_key_v2(oid, text[], json)",
                "pgchanges.sleep_v1(text, text, double precision)",
                "pgchanges.wake_v1(text, text)",
            )
        ),
    ),
    "logical": (
        *_BOOKKEEPING,
        Need("SELECT, INSERT", "pgchanges.logical_objects"),
        Need(READ_WRITE, "pgchanges.snapshot_progress"),
        Need("EXECUTE", "pgchanges.follow_all_v1()", True),
    ),
    "polling": (Need("SELECT, INSERT, UPDATE", "pgchanges.poll_state"),),
}


def statements(
    conn: psycopg.Connection[Any], role: str, source: str, tables: Sequence[TableName] = ()
) -> list[sql.Composed]:
    """The GRANT (and ALTER ROLE) statements that let ``role`` consume ``tables`` with ``source``."""
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}; one of {', '.join(SOURCES)}")
    context = fetch_one(conn, "grant_context", {"role": role})
    if not context.role_exists:
        raise ConfigError(f"role {role!r} does not exist (CREATE ROLE {role} LOGIN first)")
    grantee = sql.Identifier(role)
    out = [sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(context.database_name), grantee)]
    if source == "logical":
        out.append(sql.SQL("ALTER ROLE {} REPLICATION").format(grantee))
    if source in ("logical", "polling"):
        out.extend(_table_grants(conn, grantee, tables))
    out.extend(_schema_grants(conn, grantee, NEEDS[source]))
    return out


def _table_grants(
    conn: psycopg.Connection[Any], grantee: sql.Identifier, tables: Sequence[TableName]
) -> list[sql.Composed]:
    if not tables:
        raise ConfigError("name the TABLEs the role reads (polling and logical need SELECT on them)")
    found = resolve(conn, tables)
    schemas = [r.schema_name for r in fetch_all(conn, "grant_table_schemas", {"oids": [oid for _, oid in found]})]
    out = [sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(s), grantee) for s in schemas]
    out.extend(sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(t.identifier, grantee) for t, _ in found)
    return out


def _schema_grants(conn: psycopg.Connection[Any], grantee: sql.Identifier, needs: Sequence[Need]) -> list[sql.Composed]:
    relations = {
        r.name
        for r in fetch_all(conn, "grant_existing_relations", {"names": [n.what for n in needs if not n.function]})
    }
    functions = {
        r.signature
        for r in fetch_all(conn, "grant_existing_functions", {"signatures": [n.what for n in needs if n.function]})
    }
    present = [n for n in needs if n.what in (functions if n.function else relations)]
    if not present:
        return []
    out = [sql.SQL("GRANT USAGE ON SCHEMA pgchanges TO {}").format(grantee)]
    for need in present:
        if need.function:
            name, _, args = need.what.partition("(")
            target = sql.SQL("FUNCTION {}({}").format(_qualified(name), sql.SQL(args))
        else:
            target = sql.SQL("TABLE {}").format(_qualified(need.what))
        out.append(sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(need.privileges), target, grantee))
    return out


def _qualified(name: str) -> sql.Identifier:
    schema, _, relation = name.partition(".")
    return sql.Identifier(schema, relation)


def apply(conn: psycopg.Connection[Any], grants: Sequence[sql.Composed]) -> None:
    """Run ``grants`` in one transaction: all of them, or none."""
    try:
        with conn.transaction():
            for statement in grants:
                conn.execute(statement)
    except pg_errors.InsufficientPrivilege as exc:
        first = str(exc).strip().splitlines()[0]
        raise PermissionDenied(
            f"{first}; grant as the owner of schema pgchanges and of the tables, or as a superuser"
        ) from None
