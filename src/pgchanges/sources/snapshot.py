"""The initial snapshot of the logical source: the tables' rows as they were when the slot was created.

The slot is created with an exported snapshot; a second connection reads each table in that snapshot
(``SET TRANSACTION SNAPSHOT``), in primary-key order and in pages, so the rows are exactly consistent with the
slot's start point: every later change arrives through the stream. Rows arrive as ``op="insert"`` changes
with ``extra["snapshot"] = True``.

Progress is recorded per slot and table as rows are acknowledged. An interrupted snapshot resumes after the
last acknowledged key, reading the rest from a fresh snapshot: rows changed in the meantime may then arrive
both from the snapshot and from the stream (at-least-once); the stream replays every change since the slot's
start point, so a consumer that applies changes in order ends with the table's true state.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pgchanges.capture import install as capture
from pgchanges.capture.queries import fetch_one, query, run
from pgchanges.change import EMPTY, Change, freeze
from pgchanges.names import TableName

PAGE_ROWS = 1000


@dataclass
class TableSnapshot:
    table: TableName
    oid: int
    key_columns: list[str]
    last_key: list[Any] | None
    done: bool = False


def plan(conn: psycopg.Connection[Any], slot: str, tables: Sequence[TableName]) -> list[TableSnapshot]:
    """What remains to be read for ``slot`` (all tables when it has no recorded progress)."""
    out: list[TableSnapshot] = []
    for table, oid in capture.resolve(conn, tables):
        key = conn.execute(capture.PRIMARY_KEY_SQL, (oid,)).fetchone()
        progress = fetch_one(conn, "snapshot_progress", {"slot": slot, "table_oid": oid})
        if progress is not None and progress.done:
            continue
        last_key = progress.last_key if progress is not None else None
        out.append(TableSnapshot(table, oid, list(key[0]) if key and key[0] else [], last_key))
    return out


def forget_progress(conn: psycopg.Connection[Any], slot: str) -> None:
    """A new slot: progress left by an earlier slot of the same name means nothing now."""
    run(conn, "snapshot_forget", {"slot": slot})


def start_progress(conn: psycopg.Connection[Any], slot: str, snapshots: Sequence[TableSnapshot]) -> None:
    with conn.transaction():
        for item in snapshots:
            run(conn, "snapshot_start", {"slot": slot, "table_oid": item.oid})


def pending_slots(conn: psycopg.Connection[Any], slot: str) -> bool:
    """Whether ``slot`` has a snapshot that did not finish."""
    row = fetch_one(conn, "snapshot_unfinished", {"slot": slot})
    return bool(row and row.unfinished)


def begin(conn: psycopg.Connection[Any], exported: str | None) -> None:
    """Open the reading transaction, in the snapshot ``exported`` with the slot (None: a fresh one)."""
    run(conn, "snapshot_begin")
    if exported:
        conn.execute(sql.SQL(query("snapshot_import")).format(snapshot=sql.Literal(exported)))


def current_position(conn: psycopg.Connection[Any]) -> str:
    """The server's WAL position now, as text: the position of the rows of a fresh snapshot."""
    row = fetch_one(conn, "current_wal_lsn")
    return str(row.lsn) if row else ""


def read_pages(
    conn: psycopg.Connection[Any], item: TableSnapshot, page_rows: int = PAGE_ROWS
) -> Iterator[list[dict[str, Any]]]:
    """Pages of rows of ``item.table`` after ``item.last_key``, in key order (the caller holds the snapshot)."""
    conn.row_factory = dict_row
    if not item.key_columns:  # no primary key: one pass, not resumable
        with conn.cursor(name="pgchanges_snapshot") as cursor:
            cursor.execute(sql.SQL(query("snapshot_all_rows")).format(table=item.table.identifier))
            while rows := cursor.fetchmany(page_rows):
                yield rows
        return
    parts = {
        "table": item.table.identifier,
        "keys": sql.SQL(", ").join(sql.Identifier(k) for k in item.key_columns),
        "after": sql.SQL(", ").join(sql.Placeholder() * len(item.key_columns)),
        "limit": sql.Literal(page_rows),
    }
    first = sql.SQL(query("snapshot_first_page")).format(**parts)
    after = sql.SQL(query("snapshot_next_page")).format(**parts)
    last = item.last_key
    while rows := (conn.execute(first) if last is None else conn.execute(after, last)).fetchall():
        yield rows
        last = [rows[-1][k] for k in item.key_columns]


def key_of(item: TableSnapshot, row: dict[str, Any]) -> list[Any] | None:
    return [row[k] for k in item.key_columns] if item.key_columns else None


def to_change(slot: str, item: TableSnapshot, row: dict[str, Any], position: str) -> Change:
    key = key_of(item, row)
    key_text = json.dumps(key, default=str, separators=(",", ":")) if key is not None else "?"
    return Change(
        f"snapshot:{slot}:{item.oid}:{key_text}",
        "insert",
        item.table.schema,
        item.table.table,
        freeze(row),
        None,
        EMPTY,
        None,
        None,
        position,
        "logical",
        freeze({"snapshot": True, "key": key}),
    )


def record(conn: psycopg.Connection[Any], slot: str, oid: int, last_key: list[Any] | None, done: bool) -> None:
    encoded = None if last_key is None else json.dumps(last_key, default=str)
    run(conn, "snapshot_record", {"last_key": encoded, "done": done, "slot": slot, "table_oid": oid})


@dataclass
class SnapshotTally:
    """Snapshot rows handed on and acknowledged, per table oid: pure state, no I/O.

    A table's snapshot is done once it was read to its end and every row of it was acknowledged.
    """

    counts: dict[int, list[int]] = field(default_factory=dict)  # oid -> [handed on, acknowledged]
    reading: set[int] = field(default_factory=set)
    outstanding: int = 0  # rows handed on and not acknowledged yet

    def start(self, oid: int) -> None:
        self.counts[oid] = [0, 0]
        self.reading.add(oid)

    def handed_on(self, oid: int, rows: int) -> None:
        self.counts[oid][0] += rows
        self.outstanding += rows

    def read_to_the_end(self, oid: int) -> None:
        self.reading.discard(oid)

    def ack(self, changes: Sequence[Change]) -> dict[int, list[Any] | None]:
        """Count the snapshot rows among ``changes``; returns the last acknowledged key of each table."""
        if self.outstanding <= 0:
            return {}
        keys: dict[int, list[Any] | None] = {}
        for change in changes:
            if change.id.startswith("snapshot:"):
                oid = int(change.id.split(":")[2])
                self.counts.setdefault(oid, [0, 0])[1] += 1
                self.outstanding -= 1
                keys[oid] = (change.extra or {}).get("key")
        return keys

    def done(self, oid: int) -> bool:
        handed_on, acked = self.counts.get(oid, [0, 0])
        return oid not in self.reading and acked >= handed_on
