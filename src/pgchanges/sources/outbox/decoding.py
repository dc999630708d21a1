"""Outbox event rows (as the claim queries return them, read by column name) → typed, immutable Changes.

Inserts and deletes carry one row, parsed and typed when a handler first reads it
(:func:`~pgchanges.sources.rows.lazy_json_row`); updates are decoded at once, because ``changed`` needs both
rows. Rows are parsed as :mod:`pgchanges.sources.rows` says (fractions as floats, again with every digit when a
numeric needs it). Column types are read once per table and read again when a row no longer fits them (the
table changed since).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import psycopg

from pgchanges.capture.queries import Columns
from pgchanges.change import EMPTY, Change, freeze
from pgchanges.rowtypes import RowType, fetch_row_types
from pgchanges.sources.outbox.claims import Claimed
from pgchanges.sources.rows import ParsedRows, lazy_json_row, parse_exact, parse_json, row_change

SOURCE = "outbox"


class EventDecoder:
    """Decodes the events of consumer ``consumer``; keeps the column types of the tables it has seen."""

    def __init__(self, consumer: str) -> None:
        self._consumer = consumer
        self._row_types: dict[int, RowType] = {}
        self._forgetters: dict[int, Callable[[], None]] = {}
        self._first_attempt = freeze({"attempt": 1, "consumer": consumer})

    def learn_types(self, conn: psycopg.Connection[Any], rows: Sequence[Any], col: Columns) -> None:
        """Read the column types of the tables of ``rows`` not known yet (in the caller's transaction)."""
        oid_at, known = col.table_oid, self._row_types
        unknown = {int(r[oid_at]) for r in rows if int(r[oid_at]) not in known}
        if unknown:
            self._row_types.update(fetch_row_types(conn, unknown))

    def claimed(
        self, row: Any, col: Columns, attempts: int, last_error: str | None, *, parked: bool, blocked: bool
    ) -> Claimed:
        """The event of ``row`` (columns ``col``: event_id, row_key, xid, table_oid, schema_name, table_name, op,
        new_row, old_row) on its attempt ``attempts + 1``."""
        return Claimed(
            int(row[col.event_id]),
            row[col.row_key],
            attempts,
            parked,
            blocked,
            self._change(row, col, attempts, last_error),
        )

    def _change(self, row: Any, col: Columns, attempts: int, last_error: str | None) -> Change:
        oid = int(row[col.table_oid])
        event_id = int(row[col.event_id])
        if attempts == 0 and not last_error:
            extra = self._first_attempt  # one shared read-only mapping: most events are on their first attempt
        else:
            details: dict[str, Any] = {"attempt": attempts + 1, "consumer": self._consumer}
            if last_error:
                details["last_error"] = last_error
            extra = freeze(details)
        op = row[col.op]
        if op == "insert" or op == "delete":  # noqa: PLR1714 - one row: parsed and typed when first read
            lazy = lazy_json_row(row[col.new_row] or row[col.old_row], self._row_types.get(oid), self._forgetter(oid))
            # positional, in field order: built per event on the hot path, where keywords cost twice the time
            return Change(
                f"outbox:{event_id}",  # id
                op,
                row[col.schema_name],
                row[col.table_name],
                lazy if op == "insert" else None,  # new
                lazy if op == "delete" else None,  # old
                EMPTY,  # changed
                row[col.xid],
                None,  # commit_time
                event_id,  # position
                SOURCE,
                extra,
            )
        new_text, old_text = row[col.new_row], row[col.old_row]

        def exact() -> ParsedRows:
            return (
                parse_exact(new_text) if new_text is not None else None,
                parse_exact(old_text) if old_text is not None else None,
            )

        return row_change(
            change_id=f"outbox:{event_id}",
            op=op,
            schema=row[col.schema_name],
            table=row[col.table_name],
            new=parse_json(new_text) if new_text is not None else None,
            old=parse_json(old_text) if old_text is not None else None,
            exact=exact,
            xid=row[col.xid],
            position=event_id,
            source=SOURCE,
            row_type=self._row_types.get(oid),
            extra=extra,
            on_stale=self._forgetter(oid),
        )

    def _forgetter(self, oid: int) -> Callable[[], None]:
        forget = self._forgetters.get(oid)
        if forget is None:
            forget = self._forgetters[oid] = partial(self._forget, oid)
        return forget

    def _forget(self, oid: int) -> None:
        """The table's columns changed: read its types again at the next claim."""
        self._row_types.pop(oid, None)
