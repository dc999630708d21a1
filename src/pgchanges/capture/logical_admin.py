"""Operating logical capture from outside a consumer: install (publication, slot), and replication slots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from pgchanges.errors import CaptureError
from pgchanges.names import TableName


@dataclass(frozen=True)
class SlotInfo:
    name: str
    plugin: str | None
    active: bool
    retained_bytes: int | None
    lag_bytes: int | None
    temporary: bool


SLOTS_SQL = """
SELECT slot_name, plugin, active,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
       temporary
FROM pg_catalog.pg_replication_slots
WHERE slot_type = 'logical' AND database = current_database()
ORDER BY slot_name
"""


def install_logical(
    conn: psycopg.Connection[Any], tables: Sequence[TableName], slot: str | None, replica_identity_full: bool
) -> str:
    """Create (or extend) the publication for ``tables`` and the slot; returns the publication name."""
    from pgchanges.sources.logical import ensure_publication, ensure_slot, publication_name  # noqa: PLC0415

    name = publication_name(tables)
    ensure_publication(conn, name, tables, replica_identity_full)
    if slot:
        ensure_slot(conn, slot)
    return name


def list_slots(conn: psycopg.Connection[Any]) -> list[SlotInfo]:
    return [SlotInfo(r[0], r[1], bool(r[2]), r[3], r[4], bool(r[5])) for r in conn.execute(SLOTS_SQL)]


def drop_slot(conn: psycopg.Connection[Any], name: str) -> None:
    row = conn.execute("SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", (name,)).fetchone()
    if row is None:
        raise CaptureError(f"no replication slot named {name!r}")
    if row[0]:
        raise CaptureError(f"replication slot {name!r} is in use by a consumer; stop it first")
    conn.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (name,))


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
