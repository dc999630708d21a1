"""Named SQL: the statements pgchanges runs, loaded from ``capture/sql/queries/*.sql``.

Each file holds the queries of one part (``outbox.sql``, ``logical.sql``, …) in sections headed
``-- name: <name>``; names are unique across the files. Python code refers to a statement by name and reads
its rows by column name (:func:`fetch_one`, :func:`fetch_all`), never by position, so a query can gain a
column without breaking its callers. Statements built from identifiers (a table's own columns) are composed
with :mod:`psycopg.sql` where they are used; their fixed parts still come from here.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row

_HEADER = re.compile(r"^-- name: ([a-z0-9_]+)\s*$", re.MULTILINE)


@functools.cache
def all_queries() -> dict[str, str]:
    found: dict[str, str] = {}
    folder = resources.files("pgchanges.capture").joinpath("sql", "queries")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        parts = _HEADER.split(entry.read_text(encoding="utf-8"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in found:
                raise RuntimeError(f"query {name!r} is defined twice (second in {entry.name})")
            found[name] = body.strip()
    return found


def query(name: str) -> str:
    """The SQL text of the query ``name`` (a KeyError names a query that does not exist)."""
    return all_queries()[name]


def fetch_one(conn: psycopg.Connection[Any], name: str, params: Any = None) -> Any:
    """The first row of query ``name`` as a named tuple (columns read by name), or None."""
    with conn.cursor(row_factory=namedtuple_row) as cursor:
        return cursor.execute(query(name), params).fetchone()


def fetch_all(conn: psycopg.Connection[Any], name: str, params: Any = None) -> list[Any]:
    """Every row of query ``name`` as named tuples."""
    with conn.cursor(row_factory=namedtuple_row) as cursor:
        return cursor.execute(query(name), params).fetchall()


class Columns:
    """The positions of a result's columns, by name, read from the cursor once per statement.

    For the hot paths: rows stay the plain tuples psycopg builds in C (a named-tuple row costs a Python call
    per row) and are still read by name, as ``row[columns.event_id]``.
    """

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        for index, column in enumerate(cursor.description or ()):
            self.__dict__[column.name] = index

    def __getattr__(self, name: str) -> int:
        raise AttributeError(f"the result has no column {name!r}")


def run(conn: psycopg.Connection[Any], name: str, params: Any = None) -> None:
    """Execute query ``name`` for its effect."""
    conn.execute(query(name), params)
