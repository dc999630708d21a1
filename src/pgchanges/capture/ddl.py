"""DDL capture: event triggers that report CREATE/ALTER/DROP as ``op="ddl"`` changes (channel pgchanges:ddl).

The event triggers call functions of migration 0005; the statements that create, drop and find them are named
queries in ``capture/sql/queries/ddl.sql``.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql

from pgchanges.capture import migrations
from pgchanges.capture.queries import fetch_one, query
from pgchanges.change import EMPTY, Change, freeze
from pgchanges.errors import PermissionDenied

DDL_CHANNEL = "pgchanges:ddl"
EVENT_TRIGGERS = {
    "pgchanges_ddl_end": ("ddl_command_end", "ddl_end_v1"),
    "pgchanges_ddl_drop": ("sql_drop", "ddl_drop_v1"),
}


def install_ddl(conn: psycopg.Connection[Any]) -> bool:
    """Create the event triggers (idempotent); returns whether they were newly created."""
    role = fetch_one(conn, "current_role_superuser")
    if not role or not role.superuser:
        name = role.role_name if role else "this role"
        raise PermissionDenied(
            f"event triggers need a superuser: run `pgchanges install --ddl` as one (e.g. postgres), "
            f"or ALTER ROLE {name} SUPERUSER"
        )
    migrations.migrate(conn)
    created = False
    create = sql.SQL(query("create_event_trigger"))
    with conn.transaction():
        for name, (event, function) in EVENT_TRIGGERS.items():
            if fetch_one(conn, "event_trigger_exists", {"name": name}).present:
                continue
            conn.execute(
                create.format(
                    name=sql.Identifier(name), event=sql.SQL(event), function=sql.Identifier("pgchanges", function)
                )
            )
            created = True
    return created


def drop_ddl(conn: psycopg.Connection[Any]) -> None:
    drop = sql.SQL(query("drop_event_trigger"))
    for name in EVENT_TRIGGERS:
        conn.execute(drop.format(name=sql.Identifier(name)))


def ddl_installed(conn: psycopg.Connection[Any]) -> bool:
    row = fetch_one(conn, "event_triggers_present", {"names": list(EVENT_TRIGGERS)})
    return bool(row.present == len(EVENT_TRIGGERS))


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
