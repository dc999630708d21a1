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
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pgchanges.capture import install as capture
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
        progress = conn.execute(
            "SELECT last_key, done FROM pgchanges.snapshot_progress WHERE slot = %s AND table_oid = %s", (slot, oid)
        ).fetchone()
        if progress is not None and progress[1]:
            continue
        last_key = progress[0] if progress is not None else None
        out.append(TableSnapshot(table, oid, list(key[0]) if key and key[0] else [], last_key))
    return out


def start_progress(conn: psycopg.Connection[Any], slot: str, snapshots: Sequence[TableSnapshot]) -> None:
    with conn.transaction():
        for item in snapshots:
            conn.execute(
                """INSERT INTO pgchanges.snapshot_progress (slot, table_oid) VALUES (%s, %s)
                   ON CONFLICT (slot, table_oid) DO NOTHING""",
                (slot, item.oid),
            )


def pending_slots(conn: psycopg.Connection[Any], slot: str) -> bool:
    """Whether ``slot`` has a snapshot that did not finish."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE NOT done) FROM pgchanges.snapshot_progress WHERE slot = %s", (slot,)
    ).fetchone()
    return bool(row and row[0])


def read_pages(
    conn: psycopg.Connection[Any], item: TableSnapshot, page_rows: int = PAGE_ROWS
) -> Iterator[list[dict[str, Any]]]:
    """Pages of rows of ``item.table`` after ``item.last_key``, in key order (the caller holds the snapshot)."""
    conn.row_factory = dict_row
    if not item.key_columns:  # no primary key: one pass, not resumable
        with conn.cursor(name="pgchanges_snapshot") as cursor:
            cursor.execute(sql.SQL("SELECT * FROM {}").format(item.table.identifier))
            while rows := cursor.fetchmany(page_rows):
                yield rows
        return
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in item.key_columns)
    last = item.last_key
    while True:
        if last is None:
            query = sql.SQL("SELECT * FROM {} ORDER BY {} LIMIT {}").format(
                item.table.identifier, keys, sql.Literal(page_rows)
            )
            rows = conn.execute(query).fetchall()
        else:
            query = sql.SQL("SELECT * FROM {} WHERE ({}) > ({}) ORDER BY {} LIMIT {}").format(
                item.table.identifier,
                keys,
                sql.SQL(", ").join(sql.Placeholder() * len(last)),
                keys,
                sql.Literal(page_rows),
            )
            rows = conn.execute(query, last).fetchall()
        if not rows:
            return
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
    conn.execute(
        """UPDATE pgchanges.snapshot_progress
           SET last_key = coalesce(%s::jsonb, last_key), done = %s, updated_at = now()
           WHERE slot = %s AND table_oid = %s""",
        (None if last_key is None else json.dumps(last_key, default=str), done, slot, oid),
    )
