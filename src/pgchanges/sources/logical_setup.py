"""What the logical source needs on the server before it streams: wal_level, a publication, a slot, a snapshot plan.

Synchronous functions on a control connection in autocommit (:class:`~pgchanges.sources.logical.LogicalSource`
runs them in a worker thread). ``pgchanges install --source logical`` (:mod:`pgchanges.capture.logical_admin`)
and the benchmarks create publications and slots with the same functions, which live there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from pgchanges.capture.logical_admin import ensure_publication, ensure_slot, slot_exists
from pgchanges.capture.queries import fetch_one
from pgchanges.errors import CaptureError, PermissionDenied
from pgchanges.names import TableName
from pgchanges.sources import snapshot as snapshot_mod

log = logging.getLogger("pgchanges.sources.logical")  # the source's logger: what it logs while it sets up


@dataclass(frozen=True)
class Setup:
    """What one logical source streams from, as LogicalSource was configured."""

    slot: str
    temporary: bool
    publication: str
    tables: Sequence[TableName]
    replica_identity_full: bool
    auto_install: bool
    snapshot: bool
    retained_warning_bytes: int


def prepare(conn: psycopg.Connection[Any], setup: Setup) -> list[snapshot_mod.TableSnapshot]:
    """Check wal_level, create what is missing; returns what the initial snapshot still has to read."""
    level = fetch_one(conn, "wal_level")
    if not level or level.wal_level != "logical":
        raise CaptureError(
            f"wal_level is {level.wal_level if level else '?'}; logical capture needs wal_level = logical "
            "(ALTER SYSTEM SET wal_level = logical, then restart the server)"
        )
    try:
        ensure_publication(
            conn, setup.publication, setup.tables, setup.replica_identity_full, auto_install=setup.auto_install
        )
        plan = _snapshot_plan(conn, setup)
        if not setup.temporary and not plan:
            ensure_slot(conn, setup.slot)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PermissionDenied(
            f"permission denied: {' '.join(str(exc).split())}. Logical capture needs the REPLICATION "
            "attribute (ALTER ROLE … REPLICATION) and ownership of the tables for the publication."
        ) from None
    if not setup.temporary:
        _warn_if_retaining(conn, setup)
    return plan


def _snapshot_plan(conn: psycopg.Connection[Any], setup: Setup) -> list[snapshot_mod.TableSnapshot]:
    if not setup.snapshot:
        return []
    if not setup.temporary and slot_exists(conn, setup.slot):
        if snapshot_mod.pending_slots(conn, setup.slot):
            log.info("resuming the interrupted snapshot of slot %s", setup.slot)
            return snapshot_mod.plan(conn, setup.slot, setup.tables)
        log.info("slot %s exists; its snapshot is done (or was never taken)", setup.slot)
        return []
    snapshot_mod.forget_progress(conn, setup.slot)
    plan = snapshot_mod.plan(conn, setup.slot, setup.tables)
    if not setup.temporary:
        snapshot_mod.start_progress(conn, setup.slot, plan)
    return plan


def _warn_if_retaining(conn: psycopg.Connection[Any], setup: Setup) -> None:
    row = fetch_one(conn, "replication_slot_retained", {"slot": setup.slot})
    if row and row.retained_bytes is not None and row.retained_bytes > setup.retained_warning_bytes:
        log.warning(
            "replication slot %s retains %.1f MB of WAL; it advances only while a consumer acknowledges",
            setup.slot,
            float(row.retained_bytes) / 1e6,
        )
