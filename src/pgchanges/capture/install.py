"""Install and remove capture for tables: triggers per source, recorded in ``pgchanges.captures``.

Everything here is idempotent: installing twice changes nothing, uninstalling removes every object pgchanges
created (the schema included when nothing is captured any more). Identifiers always go through
``psycopg.sql.Identifier``; values are always parameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from pgchanges.capture import ddl, migrations
from pgchanges.errors import CaptureError, PermissionDenied, TableNotFound
from pgchanges.names import TableName


@dataclass(frozen=True)
class TriggerDef:
    """One trigger a source puts on a captured table."""

    name: str
    events: str  # e.g. "INSERT OR UPDATE OR DELETE"
    level: str  # "ROW" or "STATEMENT"
    function: str
    channel_argument: bool = False


TRIGGERS: dict[str, tuple[TriggerDef, ...]] = {
    "notify": (
        TriggerDef("pgchanges_notify", "INSERT OR UPDATE OR DELETE", "ROW", "notify_row_v1", True),
        TriggerDef("pgchanges_notify_truncate", "TRUNCATE", "STATEMENT", "notify_row_v1", True),
    ),
    "outbox": (
        TriggerDef("pgchanges_outbox", "INSERT OR UPDATE OR DELETE", "ROW", "outbox_row_v1"),
        TriggerDef("pgchanges_outbox_truncate", "TRUNCATE", "STATEMENT", "outbox_row_v1"),
        TriggerDef("pgchanges_outbox_wake", "INSERT OR UPDATE OR DELETE OR TRUNCATE", "STATEMENT", "outbox_wake_v1"),
    ),
}

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


def install(conn: psycopg.Connection[Any], tables: Iterable[TableName], source: str = "notify") -> list[TableName]:
    """Install the schema (migrating it if needed) and ``source`` capture on ``tables``.

    Returns the tables on which capture was newly installed. ``conn`` must be in autocommit mode.
    """
    spec = TRIGGERS.get(source)
    if spec is None:
        raise CaptureError(f"source {source!r} installs no triggers; trigger sources are {', '.join(TRIGGERS)}")
    wanted = list(dict.fromkeys(tables))
    try:
        migrations.migrate(conn)
        added: list[TableName] = []
        with conn.transaction():
            for table in wanted:
                oid = table_oid(conn, table)
                if _install_triggers(conn, table, oid, spec, source):
                    added.append(table)
        return added
    except pg_errors.InsufficientPrivilege as exc:
        raise PermissionDenied(_privilege_hint(exc, wanted)) from None


def _install_triggers(
    conn: psycopg.Connection[Any], table: TableName, oid: int, spec: tuple[TriggerDef, ...], source: str
) -> bool:
    present = conn.execute(
        "SELECT 1 FROM pgchanges.captures WHERE table_oid = %s AND source = %s", (oid, source)
    ).fetchone()
    for trigger in spec:
        argument = sql.Literal(table.channel) if trigger.channel_argument else sql.SQL("")
        conn.execute(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {name} AFTER {events} ON {table} "
                "FOR EACH {level} EXECUTE FUNCTION {function}({argument})"
            ).format(
                name=sql.Identifier(trigger.name),
                events=sql.SQL(trigger.events),
                table=table.identifier,
                level=sql.SQL(trigger.level),
                function=sql.Identifier("pgchanges", trigger.function),
                argument=argument,
            )
        )
    key = conn.execute(PRIMARY_KEY_SQL, (oid,)).fetchone()
    conn.execute(
        """INSERT INTO pgchanges.captures (table_oid, schema_name, table_name, source, key_columns)
           VALUES (%s, %s, %s, %s, %s)
           ON CONFLICT (table_oid, source) DO UPDATE SET schema_name = excluded.schema_name,
               table_name = excluded.table_name, key_columns = excluded.key_columns""",
        (oid, table.schema, table.table, source, key[0] if key else None),
    )
    return present is None


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


def missing_captures(conn: psycopg.Connection[Any], tables: Iterable[TableName], source: str) -> list[TableName]:
    """The tables among ``tables`` whose ``source`` capture is not installed."""
    have = {(c.table, c.source) for c in captures(conn)}
    return [t for t in tables if (t, source) not in have]


def uninstall(conn: psycopg.Connection[Any], tables: Iterable[TableName] | None = None) -> list[TableName]:
    """Remove capture from ``tables`` (all tables when None); drop the schema when nothing is left.

    Returns the tables whose capture was removed.
    """
    if not schema_installed(conn):
        return []
    removed: list[TableName] = []
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (migrations.ADVISORY_LOCK_KEY,))
            only = None if tables is None else set(tables)
            for capture in captures(conn):
                if only is not None and capture.table not in only:
                    continue
                _drop_triggers(conn, capture)
                conn.execute(
                    "DELETE FROM pgchanges.captures WHERE table_oid = %s AND source = %s",
                    (capture.table_oid, capture.source),
                )
                removed.append(capture.table)
            left = conn.execute("SELECT count(*) FROM pgchanges.captures").fetchone()
            if tables is None or (left and left[0] == 0):
                _drop_orphan_triggers(conn)
                _drop_logical_objects(conn)
                ddl.drop_ddl(conn)
                conn.execute("DROP SCHEMA pgchanges CASCADE")
    except pg_errors.InsufficientPrivilege as exc:
        raise PermissionDenied(_privilege_hint(exc, removed)) from None
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


def _drop_triggers(conn: psycopg.Connection[Any], capture: Capture) -> None:
    if capture.source == "logical":
        _leave_publications(conn, capture)
        return
    for trigger in TRIGGERS.get(capture.source, ()):
        conn.execute(
            sql.SQL("DROP TRIGGER IF EXISTS {name} ON {table}").format(
                name=sql.Identifier(trigger.name), table=capture.table.identifier
            )
        )


def _leave_publications(conn: psycopg.Connection[Any], capture: Capture) -> None:
    """Take the table out of the publications pgchanges created."""
    rows = conn.execute(
        """SELECT p.pubname FROM pg_catalog.pg_publication_rel r JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid
           JOIN pgchanges.logical_objects o ON o.kind = 'publication' AND o.name = p.pubname
           WHERE r.prrelid = %s""",
        (capture.table_oid,),
    ).fetchall()
    for (name,) in rows:
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(sql.Identifier(name), capture.table.identifier)
        )


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
