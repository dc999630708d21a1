"""How the polling source reads one table: the queries of its plan, built from the table's catalog entry, and
the rows they return turned into Changes.

A plan orders rows by the watermark column, then the primary key, so rows that share a watermark value are
never split at a batch boundary; the late-rows query finds rows at or below the watermark that became visible
since the previous poll's snapshot (see :mod:`pgchanges.sources.polling`). The table's own names are composed
with :mod:`psycopg.sql`; the fixed statements are named queries (``capture/sql/queries/polling.sql``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pgchanges.capture import install as capture
from pgchanges.capture.queries import fetch_all
from pgchanges.change import EMPTY, Change, freeze
from pgchanges.errors import ConfigError
from pgchanges.names import TableName
from pgchanges.sources.poll_state import TableState

SOURCE = "polling"
_XID8_OF_XMIN = sql.SQL(
    # the row's 32-bit xmin widened with the epoch of the current snapshot (no xid -> xid8 cast before PG 17)
    "greatest(3, (s.xmax8 >> 32 << 32) + t.xmin::text::bigint"
    " - CASE WHEN t.xmin::text::bigint > (s.xmax8 & 4294967295) THEN 4294967296 ELSE 0 END)::text::xid8"
)


@dataclass(frozen=True)
class Plan:
    """The queries of one table, built from its catalog entry."""

    table: TableName
    order: tuple[str, ...]  # the watermark column, then the primary key
    types: tuple[str, ...]
    new_rows: sql.Composed
    late_rows: sql.Composed
    last_row: sql.Composed  # the watermark of the newest row (start="now")


@dataclass(frozen=True)
class Planner:
    """Builds the plans of a consumer's tables (``column``: the watermark column, per table with a mapping)."""

    column: str | Mapping[str, str]
    soft_delete: str | None
    batch_size: int
    late_window: float | None

    def column_of(self, table: TableName) -> str:
        if isinstance(self.column, str):
            return self.column
        for key in (str(table), f"{table.schema}.{table.table}", table.table):
            if key in self.column:
                return self.column[key]
        raise ConfigError(f"no watermark column given for {table} (column={dict(self.column)!r})")

    def plan(self, conn: psycopg.Connection[Any], table: TableName, oid: int) -> Plan:
        column = self.column_of(table)
        key = capture.primary_key(conn, oid)
        if not key:
            raise ConfigError(f"polling {table} needs a primary key, to order rows that share a {column} value")
        order = [column, *(k for k in key if k != column)]
        rows = {r.column_name: r for r in fetch_all(conn, "polling_columns", {"table_oid": oid})}
        for name in (column, *([self.soft_delete] if self.soft_delete else [])):
            if name not in rows:
                raise ConfigError(f"table {table} has no column {name!r}")
        types = [rows[c].type_name for c in order]
        category = rows[column].category
        return Plan(table, tuple(order), tuple(types), *self._queries(table, order, types, category))

    def _queries(
        self, table: TableName, order: list[str], types: list[str], category: str
    ) -> tuple[sql.Composed, sql.Composed, sql.Composed]:
        columns = sql.SQL(", ").join(sql.Identifier("t", c) for c in order)
        texts = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier("t", c)) for c in order)
        values = sql.SQL(", ").join(
            sql.SQL("{}::{}").format(sql.Placeholder(f"p{i}"), sql.SQL(typ)) for i, typ in enumerate(types)
        )
        column = sql.Identifier("t", order[0])
        select = sql.SQL("SELECT t.*, t.xmin::text, {texts} FROM {table} t").format(texts=texts, table=table.identifier)
        new_rows = sql.SQL(
            "{select} WHERE {column} IS NOT NULL AND (%(first)s OR ({columns}) > ({values})) "
            "ORDER BY {columns} LIMIT {limit}"
        ).format(select=select, column=column, columns=columns, values=values, limit=sql.Literal(self.batch_size))
        base = sql.SQL("(SELECT min(b) FROM unnest(%(bases)s::{}[]) AS b)").format(sql.SQL(types[0]))
        floor: sql.Composable
        if self.late_window is None:  # no bound: every poll scans all rows at or below the watermark
            floor = sql.SQL("")
        elif category == "D":  # date/time: late_window is seconds
            floor = sql.SQL("AND {} >= {} - make_interval(secs => %(window)s)").format(column, base)
        elif category == "N":
            floor = sql.SQL("AND {} >= {} - %(window)s").format(column, base)
        else:
            floor = sql.SQL("")
        late_rows = sql.SQL(
            "WITH s AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax8) "
            "{select} CROSS JOIN s WHERE {column} IS NOT NULL AND ({columns}) <= ({values}) {floor} "
            "AND NOT pg_visible_in_snapshot({xid8}, %(previous)s::pg_snapshot) ORDER BY {columns}"
        ).format(select=select, column=column, columns=columns, values=values, floor=floor, xid8=_XID8_OF_XMIN)
        last_row = sql.SQL("SELECT {texts} FROM {table} t ORDER BY {descending} LIMIT 1").format(
            texts=texts,
            table=table.identifier,
            descending=sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier("t", c)) for c in order),
        )
        return new_rows, late_rows, last_row

    def params(self, plan: Plan, state: TableState) -> dict[str, Any]:
        position: list[str | None] = list(state.position) if state.position else [None] * len(plan.order)
        params: dict[str, Any] = {f"p{i}": value for i, value in enumerate(position)}
        params["first"] = state.position is None
        params["previous"] = state.snapshot
        params["bases"] = [*state.running.values(), *(state.position or [])[:1]]
        params["window"] = self.late_window
        return params

    def changes(self, plan: Plan, cursor: psycopg.Cursor[Any], *, late: bool) -> list[Change]:
        description = cursor.description or []
        extras = 1 + len(plan.order)
        names = [d.name for d in description[: len(description) - extras]]
        soft = self.soft_delete
        table = plan.table
        prefix = f"poll:{table.schema}.{table.table}:"
        out: list[Change] = []
        for row in cursor:
            values = dict(zip(names, row, strict=False))
            xmin = row[-extras]
            key = list(row[-extras + 1 :])
            deleted = soft is not None and values.get(soft) not in (None, False)
            out.append(
                Change(
                    f"{prefix}{','.join(key[1:])}:{xmin}",
                    "delete" if deleted else "upsert",
                    table.schema,
                    table.table,
                    None if deleted else freeze(values),
                    freeze(values) if deleted else None,
                    EMPTY,
                    int(xmin),
                    None,
                    json.dumps(key),
                    SOURCE,
                    freeze({"late": True}) if late else None,
                )
            )
        return out
