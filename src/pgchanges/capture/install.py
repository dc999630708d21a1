"""Install and remove capture: rules (a source and a table name or pattern) and the capture they make.

A rule says what to capture; ``pgchanges.follow_table_v1`` (capture/sql/0006_follow.sql) makes a table's
triggers and publication membership match the rules, recorded in ``pgchanges.captures``. The DDL event
trigger runs it for tables that are created or renamed, so capture follows the schema. Everything here is
idempotent: installing twice changes nothing, uninstalling removes every object pgchanges created (the schema
included when nothing is captured any more). Identifiers always go through ``psycopg.sql.Identifier`` (or
``format('%I')`` in SQL); values are always parameters. The statements are named queries in
``capture/sql/queries/capture.sql``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from pgchanges.capture import ddl, migrations
from pgchanges.capture.queries import fetch_all, fetch_one, query, run
from pgchanges.errors import CaptureError, NotInstalled, PermissionDenied, TableNotFound
from pgchanges.names import TableName

log = logging.getLogger("pgchanges.capture")


SOURCES = ("notify", "outbox", "logical")

#: The query ``primary_key_columns`` with the table oid as its one positional parameter, for callers that
#: run it themselves (``conn.execute(PRIMARY_KEY_SQL, (oid,))``); :func:`primary_key` runs it by name.
PRIMARY_KEY_SQL = query("primary_key_columns").replace("%(table_oid)s", "%s")


@dataclass(frozen=True)
class Rule:
    """A capture rule: ``source`` captures the table or tables ``pattern`` (a name or a pattern)."""

    source: str
    pattern: TableName
    publication: str


@dataclass(frozen=True)
class Capture:
    """A table captured now by ``source``, under its current name."""

    table: TableName
    source: str
    table_oid: int


def table_oid(conn: psycopg.Connection[Any], table: TableName) -> int:
    """The oid of ``table``; :class:`TableNotFound` when there is no such table."""
    row = fetch_one(conn, "capture_table_oid", {"schema": table.schema, "table": table.table})
    if row is None:
        raise TableNotFound(f"table {table} does not exist (or is not visible to this role)")
    return int(row.table_oid)


def primary_key(conn: psycopg.Connection[Any], oid: int) -> list[str]:
    """The primary key columns of the table ``oid``, in key order (empty when it has none)."""
    row = fetch_one(conn, "primary_key_columns", {"table_oid": oid})
    return list(row.key_columns) if row is not None and row.key_columns else []


def install(
    conn: psycopg.Connection[Any],
    tables: Iterable[TableName],
    source: str = "notify",
    *,
    publication: str = "",
    replica_identity_full: bool = False,
    progress: ProgressReport | None = None,
) -> list[TableName]:
    """Install the schema (migrating it if needed), a capture rule per name or pattern, and follow them.

    Exact names must exist now; patterns (``public.*``) also capture tables created later (at once with the
    DDL event trigger, else when a consumer next follows the schema). ``publication`` names the publication
    of a logical rule. Returns the tables whose capture was newly installed. ``conn`` must be in autocommit.
    With ``progress``, tables are followed one by one and counted there (else in one statement).
    """
    if source not in SOURCES:
        raise CaptureError(f"unknown source {source!r}; capture sources are {', '.join(SOURCES)}")
    if source == "logical" and not publication:
        raise CaptureError("a logical capture rule needs the publication its tables join")
    wanted = list(dict.fromkeys(tables))
    try:
        migrations.migrate(conn)
        with conn.transaction():
            _lock_installers(conn)
            for table in wanted:
                if not table.is_pattern:
                    table_oid(conn, table)
                _add_rule(conn, table, source, publication, replica_identity_full)
            before = {c.table_oid for c in captures(conn) if c.source == source}
            if progress is None:
                follow_all(conn)
            else:
                _follow_each(conn, progress)
            return [c.table for c in captures(conn) if c.source == source and c.table_oid not in before]
    except pg_errors.InsufficientPrivilege as exc:
        raise PermissionDenied(_privilege_hint(exc, wanted)) from None


def _add_rule(
    conn: psycopg.Connection[Any], table: TableName, source: str, publication: str, replica_identity_full: bool
) -> None:
    schema_like, table_like = table.like_patterns
    params = {
        "source": source,
        "schema_like": schema_like,
        "table_like": table_like,
        "channel": table.channel if source == "notify" else "",
        "publication": publication,
        "replica_identity_full": replica_identity_full,
    }
    run(conn, "add_capture_rule", params)


class ProgressReport(Protocol):
    """What long work reports its progress to (``pgchanges.ops.progress.Progress`` is one)."""

    def set_total(self, total: float | None) -> None: ...

    def advance(self, count: float) -> None: ...


def _follow_each(conn: psycopg.Connection[Any], progress: ProgressReport) -> None:
    """What :func:`follow_all` does, one table per statement, each counted in ``progress``."""
    candidates = [int(r.table_oid) for r in fetch_all(conn, "follow_candidates")]
    progress.set_total(len(candidates))
    for oid in candidates:
        run(conn, "follow_table", {"table_oid": oid})
        progress.advance(1)


def follow_all(conn: psycopg.Connection[Any]) -> list[int]:
    """Bring every table's capture in line with the rules; returns the oids of tables whose capture changed."""
    return [int(r.table_oid) for r in fetch_all(conn, "follow_all_tables")]


def _lock_installers(conn: psycopg.Connection[Any]) -> None:
    """Serialise installers to the end of the transaction (the lock migrations take)."""
    run(conn, "capture_install_lock", {"key": migrations.ADVISORY_LOCK_KEY})


def relation_exists(conn: psycopg.Connection[Any], relation: str) -> bool:
    """Whether the relation ``relation`` (schema-qualified, e.g. ``pgchanges.consumers``) exists."""
    return bool(fetch_one(conn, "pgchanges_relation_exists", {"relation": relation}).present)


def rules(conn: psycopg.Connection[Any]) -> list[Rule]:
    """The capture rules: what is captured, by name or pattern (tables created later included)."""
    if not schema_installed(conn) or not relation_exists(conn, "pgchanges.capture_rules"):
        return []
    return [
        Rule(r.source, TableName.from_like_patterns(r.schema_like, r.table_like), r.publication)
        for r in fetch_all(conn, "capture_rule_list")
    ]


def missing_rules(
    conn: psycopg.Connection[Any], tables: Iterable[TableName], source: str, publication: str = ""
) -> list[TableName]:
    """The names and patterns among ``tables`` that have no ``source`` capture rule (yet)."""
    wanted = list(tables)
    if not schema_installed(conn) or migrations.pending(conn):
        return wanted
    rows = fetch_all(conn, "capture_rule_patterns", {"source": source, "publication": publication})
    have = {(r.schema_like, r.table_like) for r in rows}
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
        for r in fetch_all(conn, "tables_matching", {"schema_like": schema_like, "table_like": table_like}):
            out.setdefault(int(r.table_oid), TableName(r.schema_name, r.table_name))
    return [(table, oid) for oid, table in out.items()]


def schema_installed(conn: psycopg.Connection[Any]) -> bool:
    return bool(fetch_one(conn, "schema_installed").installed)


def captures(conn: psycopg.Connection[Any]) -> list[Capture]:
    """What is captured now, according to the catalog (renamed tables show their current name)."""
    if not schema_installed(conn):
        return []
    return [
        Capture(TableName(r.schema_name, r.table_name), r.source, int(r.table_oid))
        for r in fetch_all(conn, "captured_tables")
    ]


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
            _lock_installers(conn)
            before = captures(conn)
            if names is None:
                run(conn, "delete_all_capture_rules")
            for name in names or ():
                schema_like, table_like = name.like_patterns
                run(conn, "delete_capture_rule", {"schema_like": schema_like, "table_like": table_like})
            follow_all(conn)
            after = {(c.table_oid, c.source) for c in captures(conn)}
            removed = [c.table for c in before if (c.table_oid, c.source) not in after]
            if names is None or fetch_one(conn, "capture_remaining").remaining == 0:
                _drop_orphan_triggers(conn)
                _drop_logical_objects(conn)
                ddl.drop_ddl(conn)
                run(conn, "uninstall_drop_schema")
    except pg_errors.InsufficientPrivilege as exc:
        raise PermissionDenied(_privilege_hint(exc, names or [])) from None
    return list(dict.fromkeys(removed))


def _drop_logical_objects(conn: psycopg.Connection[Any]) -> None:
    """Publications and slots the logical source created (a slot in use by a consumer cannot be dropped)."""
    if not relation_exists(conn, "pgchanges.logical_objects"):
        return
    for obj in fetch_all(conn, "uninstall_logical_objects"):
        if obj.kind == "publication":
            conn.execute(sql.SQL(query("uninstall_drop_publication")).format(publication=sql.Identifier(obj.name)))
        elif fetch_one(conn, "uninstall_slot_present", {"slot": obj.name}).present:
            run(conn, "uninstall_drop_slot", {"slot": obj.name})


def _drop_orphan_triggers(conn: psycopg.Connection[Any]) -> None:
    """Triggers calling pgchanges functions on tables missing from the registry (e.g. restored dumps)."""
    drop = sql.SQL(query("uninstall_drop_trigger"))
    for r in fetch_all(conn, "uninstall_orphan_triggers"):
        table = sql.Identifier(r.schema_name, r.table_name)
        conn.execute(drop.format(trigger=sql.Identifier(r.trigger_name), table=table))


def _privilege_hint(exc: pg_errors.InsufficientPrivilege, tables: list[TableName]) -> str:
    detail = " ".join(str(exc).split())
    names = ", ".join(str(t) for t in tables) or "the tables"
    return (
        f"permission denied: {detail}. Installing capture needs CREATE on the database (for schema pgchanges) "
        f"and ownership of {names} (or a superuser); run `pgchanges install` as the tables' owner."
    )
