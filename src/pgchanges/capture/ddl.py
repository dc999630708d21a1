"""DDL capture: event triggers that report CREATE/ALTER/DROP as ``op="ddl"`` changes (channel pgchanges:ddl)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql

from pgchanges.capture import migrations
from pgchanges.change import EMPTY, Change, freeze
from pgchanges.errors import PermissionDenied

DDL_CHANNEL = "pgchanges:ddl"
EVENT_TRIGGERS = {
    "pgchanges_ddl_end": ("ddl_command_end", "ddl_end_v1"),
    "pgchanges_ddl_drop": ("sql_drop", "ddl_drop_v1"),
}


def install_ddl(conn: psycopg.Connection[Any]) -> bool:
    """Create the event triggers (idempotent); returns whether they were newly created."""
    role = conn.execute(
        "SELECT current_user, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"
    ).fetchone()
    if not role or not role[1]:
        name = role[0] if role else "this role"
        raise PermissionDenied(
            f"event triggers need a superuser: run `pgchanges install --ddl` as one (e.g. postgres), "
            f"or ALTER ROLE {name} SUPERUSER"
        )
    migrations.migrate(conn)
    created = False
    with conn.transaction():
        for name, (event, function) in EVENT_TRIGGERS.items():
            exists = conn.execute("SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = %s", (name,)).fetchone()
            if exists:
                continue
            conn.execute(
                sql.SQL("CREATE EVENT TRIGGER {} ON {} EXECUTE FUNCTION {}()").format(
                    sql.Identifier(name), sql.SQL(event), sql.Identifier("pgchanges", function)
                )
            )
            created = True
    return created


def drop_ddl(conn: psycopg.Connection[Any]) -> None:
    for name in EVENT_TRIGGERS:
        conn.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(name)))


def ddl_installed(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_catalog.pg_event_trigger WHERE evtname = ANY(%s)", (list(EVENT_TRIGGERS),)
    ).fetchone()
    return bool(row and row[0] == len(EVENT_TRIGGERS))


def to_change(payload: str, pid: int) -> Change:
    """The ``op="ddl"`` change for one NOTIFY payload of the event triggers."""
    data = json.loads(payload)
    identity = str(data.get("object_identity") or "")
    table = None
    if data.get("object_type") in ("table", "table column", "index") and data.get("schema"):
        table = data.get("object_name") or identity.split(".", 1)[-1].split(".", maxsplit=1)[0].strip('"')
    return Change(
        f"ddl:{data.get('xid')}:{pid}:{data.get('object_oid')}:{data.get('command_tag')}",
        "ddl",
        data.get("schema"),
        table,
        None,
        None,
        EMPTY,
        data.get("xid"),
        None,
        None,
        "notify",
        freeze(data),
    )
