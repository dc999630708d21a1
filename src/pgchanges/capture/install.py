"""Install and remove capture: rules (a source and a table name or pattern) and the capture they make.

A rule says what to capture; ``pgchanges.follow_table_v1`` (capture/sql/0006_follow.sql) makes a table's
triggers and publication membership match the rules, recorded in ``pgchanges.captures``. The DDL event
trigger runs it for tables that are created or renamed, so capture follows the schema. Everything here is
idempotent: installing twice changes nothing, uninstalling removes every object pgchanges created (the schema
included when nothing is captured any more). Identifiers always go through ``psycopg.sql.Identifier`` (or
``format('%I')`` in SQL); values are always parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from pgchanges.capture import ddl, migrations
from pgchanges.errors import CaptureError, NotInstalled, PermissionDenied, TableNotFound
from pgchanges.names import TableName

log = logging.getLogger("pgchanges.capture")


SOURCES = ("notify", "outbox", "logical")

PRIMARY_KEY_SQL = """
SELECT array_agg(a.attname::text ORDER BY k.ord)
FROM pg_catalog.pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisprimary
"""


def table_oid(conn: psycopg.Connection[Any], table: TableName) -> int:
    """The oid of ``table``; :class:`TableNotFound` when there is no such table."""
    row = conn.execute(
        """SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')""",
        (table.schema, table.table),
    ).fetchone()
    if row is None:
        raise TableNotFound(f"table {table} does not exist (or is not visible to this role)")
    return int(row[0])


def install(
    conn: psycopg.Connection[Any],
    tables: Iterable[TableName],
    source: str = "notify",
    *,
    publication: str = "",
    replica_identity_full: bool = False,
) -> list[TableName]:
    """Install the schema (migrating it if needed), a capture rule per name or pattern, and follow them.

    Exact names must exist now; patterns (``public.*``) also capture tables created later (at once with the
    DDL event trigger, else when a consumer next follows the schema). ``publication`` names the publication
    of a logical rule. Returns the tables whose capture was newly installed. ``conn`` must be in autocommit.
    """
    if source not in SOURCES:
        raise CaptureError(f"unknown source {source!r}; capture sources are {', '.join(SOURCES)}")
    if source == "logical" and not publication:
        raise CaptureError("a logical capture rule needs the publication its tables join")
    wanted = list(dict.fromkeys(tables))
    try:
        migrations.migrate(conn)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (migrations.ADVISORY_LOCK_KEY,))
            for table in wanted:
                if not table.is_pattern:
                    table_oid(conn, table)
                schema_like, table_like = table.like_patterns
                conn.execute(
                    """INSERT INTO pgchanges.capture_rules
                           (source, schema_like, table_like, channel, publication, replica_identity_full)
                       VALUES (%s, %s, %s, %s, %s, %s)
                       ON CONFLICT (source, schema_like, table_like, publication) DO UPDATE
                       SET replica_identity_full = pgchanges.capture_rules.replica_identity_full
                                                   OR excluded.replica_identity_full""",
                    (
                        source,
                        schema_like,
                        table_like,
                        table.channel if source == "notify" else "",
                        publication,
                        replica_identity_full,
                    ),
                )
            before = {c.table_oid for c in captures(conn) if c.source == source}
            follow_all(conn)
            return [c.table for c in captures(conn) if c.source == source and c.table_oid not in before]
    except pg_errors.InsufficientPrivilege as exc:
        raise PermissionDenied(_privilege_hint(exc, wanted)) from None


def follow_all(conn: psycopg.Connection[Any]) -> list[int]:
    """Bring every table's capture in line with the rules; returns the oids of tables whose capture changed."""
    return [int(r[0]) for r in conn.execute("SELECT table_oid FROM pgchanges.follow_all_v1()")]


@dataclass(frozen=True)
class Rule:
    source: str
    pattern: TableName
    publication: str


def rules(conn: psycopg.Connection[Any]) -> list[Rule]:
    """The capture rules: what is captured, by name or pattern (tables created later included)."""
    if not schema_installed(conn) or conn.execute("SELECT to_regclass('pgchanges.capture_rules')").fetchone() == (
        None,
    ):
        return []
    rows = conn.execute(
        "SELECT source, schema_like, table_like, publication FROM pgchanges.capture_rules ORDER BY 1, 2, 3, 4"
    ).fetchall()
    return [Rule(r[0], TableName.from_like_patterns(r[1], r[2]), r[3]) for r in rows]


def missing_rules(
    conn: psycopg.Connection[Any], tables: Iterable[TableName], source: str, publication: str = ""
) -> list[TableName]:
    """The names and patterns among ``tables`` that have no ``source`` capture rule (yet)."""
    wanted = list(tables)
    if not schema_installed(conn) or migrations.pending(conn):
        return wanted
    have = {
        (r[0], r[1])
        for r in conn.execute(
            "SELECT schema_like, table_like FROM pgchanges.capture_rules WHERE source = %s AND publication = %s",
            (source, publication),
        )
    }
    return [t for t in wanted if t.like_patterns not in have]


def ensure_capture(
    conn: psycopg.Connection[Any],
    tables: Sequence[TableName],
    source: str,
    *,
    auto_install: bool,
    publication: str = "",
    replica_identity_full: bool = False,
) -> None:
    """What a consumer does on start: install missing rules (or say how), then follow the schema once.

    Following repairs capture of tables created, renamed or recreated while no event trigger watched. A role
    that may not change capture gets a warning; the rules installed earlier keep working.
    """
    missing = missing_rules(conn, tables, source, publication)
    if missing and not auto_install:
        names = " ".join(f"'{t}'" if t.is_pattern else str(t) for t in missing)
        raise NotInstalled(
            f"{source} capture is not installed on {names}; run `pgchanges install {names} --source {source}`"
        )
    if missing or replica_identity_full:
        added = install(conn, tables, source, publication=publication, replica_identity_full=replica_identity_full)
        if added:
            log.info("installed %s capture on %s", source, ", ".join(str(t) for t in added))
        return
    if not auto_install:
        return
    try:
        with conn.transaction():
            changed = follow_all(conn)
    except pg_errors.InsufficientPrivilege as exc:
        log.warning("could not bring capture up to date with the schema: %s", " ".join(str(exc).split()))
        return
    if changed:
        log.info("capture followed schema changes of %d table(s)", len(changed))


def resolve(conn: psycopg.Connection[Any], tables: Iterable[TableName]) -> list[tuple[TableName, int]]:
    """The existing tables that ``tables`` (names and patterns) stand for now, with their oids."""
    out: dict[int, TableName] = {}
    for name in tables:
        if not name.is_pattern:
            out[table_oid(conn, name)] = name
            continue
        schema_like, table_like = name.like_patterns
        rows = conn.execute(
            """SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence <> 't'
                 AND n.nspname NOT IN ('pgchanges', 'pg_catalog', 'information_schema')
                 AND n.nspname LIKE %s AND c.relname LIKE %s
               ORDER BY 2, 3""",
            (schema_like, table_like),
        )
        for oid, schema, table in rows:
            out.setdefault(int(oid), TableName(schema, table))
    return [(table, oid) for oid, table in out.items()]


def schema_installed(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regnamespace('pgchanges') IS NOT NULL").fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class Capture:
    table: TableName
    source: str
    table_oid: int


def captures(conn: psycopg.Connection[Any]) -> list[Capture]:
    """What is captured now, according to the catalog (renamed tables show their current name)."""
    if not schema_installed(conn):
        return []
    rows = conn.execute(
        """SELECT n.nspname, c.relname, k.source, k.table_oid
           FROM pgchanges.captures k
           JOIN pg_catalog.pg_class c ON c.oid = k.table_oid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           ORDER BY 1, 2, 3"""
    ).fetchall()
    return [Capture(TableName(r[0], r[1]), r[2], int(r[3])) for r in rows]


def uninstall(conn: psycopg.Connection[Any], tables: Iterable[TableName] | None = None) -> list[TableName]:
    """Remove the capture rules of ``tables`` (names or patterns; all when None) and the capture they made.

    A table still matched by another rule stays captured. The schema is dropped when nothing is left.
    Returns the tables whose capture was removed.
    """
    if not schema_installed(conn):
        return []
    names = None if tables is None else list(tables)
    try:
        migrations.migrate(conn)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (migrations.ADVISORY_LOCK_KEY,))
            before = captures(conn)
            if names is None:
                conn.execute("DELETE FROM pgchanges.capture_rules")
            for name in names or ():
                schema_like, table_like = name.like_patterns
                conn.execute(
                    "DELETE FROM pgchanges.capture_rules WHERE schema_like = %s AND table_like = %s",
                    (schema_like, table_like),
                )
            follow_all(conn)
            after = {(c.table_oid, c.source) for c in captures(conn)}
            removed = [c.table for c in before if (c.table_oid, c.source) not in after]
            left = conn.execute(
                "SELECT (SELECT count(*) FROM pgchanges.captures) + (SELECT count(*) FROM pgchanges.capture_rules)"
            ).fetchone()
            if names is None or (left and left[0] == 0):
                _drop_orphan_triggers(conn)
                _drop_logical_objects(conn)
                ddl.drop_ddl(conn)
                conn.execute("DROP SCHEMA pgchanges CASCADE")
    except pg_errors.InsufficientPrivilege as exc:
        raise PermissionDenied(_privilege_hint(exc, names or [])) from None
    return list(dict.fromkeys(removed))


def _drop_logical_objects(conn: psycopg.Connection[Any]) -> None:
    """Publications and slots the logical source created (a slot in use by a consumer cannot be dropped)."""
    if conn.execute("SELECT to_regclass('pgchanges.logical_objects')").fetchone() == (None,):
        return
    for kind, name in conn.execute("SELECT kind, name FROM pgchanges.logical_objects ORDER BY kind").fetchall():
        if kind == "publication":
            conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
        elif conn.execute("SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", (name,)).fetchone():
            conn.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (name,))


def _drop_orphan_triggers(conn: psycopg.Connection[Any]) -> None:
    """Triggers calling pgchanges functions on tables missing from the registry (e.g. restored dumps)."""
    rows = conn.execute(
        """SELECT t.tgname, n.nspname, c.relname FROM pg_catalog.pg_trigger t
           JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
           JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE p.pronamespace = 'pgchanges'::regnamespace AND NOT t.tgisinternal"""
    ).fetchall()
    for name, schema, table in rows:
        conn.execute(
            sql.SQL("DROP TRIGGER IF EXISTS {name} ON {table}").format(
                name=sql.Identifier(name), table=sql.Identifier(schema, table)
            )
        )


def _privilege_hint(exc: pg_errors.InsufficientPrivilege, tables: list[TableName]) -> str:
    detail = " ".join(str(exc).split())
    names = ", ".join(str(t) for t in tables) or "the tables"
    return (
        f"permission denied: {detail}. Installing capture needs CREATE on the database (for schema pgchanges) "
        f"and ownership of {names} (or a superuser); run `pgchanges install` as the tables' owner."
    )
