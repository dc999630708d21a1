"""Operating logical capture from outside a consumer: install (publication, slot), and replication slots."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pgchanges.capture import install as capture
from pgchanges.capture import migrations
from pgchanges.capture.queries import fetch_all, fetch_one, query, run
from pgchanges.errors import CaptureError, NotInstalled
from pgchanges.names import TableName

log = logging.getLogger("pgchanges.sources.logical")  # what the logical source logs while it sets up
#: A walsender whose consumer has not replied for this long serves no one: twice the status interval (10 s).
SILENT_WALSENDER_SECONDS = 20.0


def publication_name(tables: Sequence[TableName]) -> str:
    """A stable publication name for a set of tables."""
    key = ",".join(sorted(f"{t.schema}.{t.table}" for t in tables))
    return "pgchanges_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def ensure_publication(
    conn: psycopg.Connection[Any],
    name: str,
    tables: Sequence[TableName],
    full: bool,
    *,
    auto_install: bool = True,
) -> None:
    """Create the publication when missing and the capture rules that fill it (optionally REPLICA IDENTITY FULL).

    The publication is created empty and filled by the rules, so a pattern that matches no table yet still
    gives a publication to stream from; tables created later join it (capture/sql/0006_follow.sql).
    """
    if fetch_one(conn, "publication_exists", {"publication": name}) is None:
        if not auto_install:
            names = " ".join(f"'{t}'" if t.is_pattern else str(t) for t in tables)
            raise NotInstalled(f"logical capture is not installed; run `pgchanges install {names} --source logical`")
        migrations.migrate(conn)
        with conn.transaction():
            conn.execute(sql.SQL(query("create_publication")).format(publication=sql.Identifier(name)))
            remember(conn, "publication", name)
    capture.ensure_capture(
        conn, tables, "logical", auto_install=auto_install, publication=name, replica_identity_full=full
    )


def ensure_slot(conn: psycopg.Connection[Any], slot: str) -> None:
    """Create the replication slot ``slot`` (pgoutput) when missing; a slot of another plugin is an error."""
    row = fetch_one(conn, "replication_slot", {"slot": slot})
    if row is None:
        run(conn, "create_replication_slot", {"slot": slot})
        remember(conn, "slot", slot)
        log.info("created replication slot %s", slot)
    elif row.plugin != "pgoutput":
        raise CaptureError(f"replication slot {slot} uses plugin {row.plugin}, not pgoutput")


def slot_exists(conn: psycopg.Connection[Any], slot: str) -> bool:
    return fetch_one(conn, "replication_slot", {"slot": slot}) is not None


def end_silent_walsender(conn: psycopg.Connection[Any], slot: str) -> bool:
    """End the walsender holding ``slot`` if its consumer has not answered for a while (it lost its connection
    without the server noticing: a partition); whether one was ended. A live consumer answers at least every
    status interval, so this never ends a reader that is alive, a hot standby's included."""
    row = fetch_one(conn, "end_silent_walsender", {"slot": slot, "silent_seconds": SILENT_WALSENDER_SECONDS})
    ended = bool(row and row.ended)
    if ended:
        log.warning("ended the silent walsender that still held slot %s", slot)
    return ended


def remember(conn: psycopg.Connection[Any], kind: str, name: str) -> None:
    """Record a publication or slot pgchanges created, for ``pgchanges uninstall``."""
    run(conn, "remember_logical_object", {"kind": kind, "name": name})


@dataclass(frozen=True)
class SlotInfo:
    name: str
    plugin: str | None
    active: bool
    retained_bytes: int | None
    lag_bytes: int | None
    temporary: bool


def install_logical(
    conn: psycopg.Connection[Any], tables: Sequence[TableName], slot: str | None, replica_identity_full: bool
) -> str:
    """Create (or extend) the publication for ``tables`` and the slot; returns the publication name."""
    name = publication_name(tables)
    ensure_publication(conn, name, tables, replica_identity_full)
    if slot:
        ensure_slot(conn, slot)
    return name


def list_slots(conn: psycopg.Connection[Any]) -> list[SlotInfo]:
    """The database's logical replication slots, by name."""
    return [
        SlotInfo(r.name, r.plugin, bool(r.active), r.retained_bytes, r.lag_bytes, bool(r.temporary))
        for r in fetch_all(conn, "logical_slots")
    ]


def drop_slot(conn: psycopg.Connection[Any], name: str) -> None:
    row = fetch_one(conn, "replication_slot", {"slot": name})
    if row is None:
        raise CaptureError(f"no replication slot named {name!r}")
    if row.active:
        raise CaptureError(f"replication slot {name!r} is in use by a consumer; stop it first")
    run(conn, "drop_replication_slot", {"slot": name})


def format_slots(slots: list[SlotInfo]) -> str:
    if not slots:
        return "no logical replication slots in this database"
    lines = [f"{'slot':<32} {'active':<6} {'retained':>12} {'lag':>12}"]
    for s in slots:
        retained = "-" if s.retained_bytes is None else _size(s.retained_bytes)
        lag = "-" if s.lag_bytes is None else _size(s.lag_bytes)
        name = s.name + (" (temporary)" if s.temporary else "")
        lines.append(f"{name:<32} {'yes' if s.active else 'no':<6} {retained:>12} {lag:>12}")
    return "\n".join(lines)


def _size(value: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)
