"""What a polling consumer knows per table (:class:`TableState`, and the acknowledgements of each poll,
:class:`Poll`) and where it keeps it: a table in schema pgchanges when it may write one, else a file.

The state of one table is a small JSON object (see :class:`pgchanges.sources.polling.TableState`). Writes to
the file are atomic (temporary file, fsync, rename), so a killed consumer finds either the old or the new state.

The table store holds no connection: it is given a function that returns the polling source's *current*
writer connection, so a connection the source replaced after a failure can never be used again by the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from pgchanges.capture import migrations

log = logging.getLogger("pgchanges.polling")


@dataclass
class TableState:
    """What a consumer knows about one table: where it is, and what could still commit behind it."""

    position: list[str] | None = None  # text of col and key values of the last row delivered
    snapshot: str | None = None  # pg_current_snapshot() of the last poll
    running: dict[str, str] = field(default_factory=dict)  # xid -> watermark col when first seen running

    def to_json(self) -> dict[str, Any]:
        return {"position": self.position, "snapshot": self.snapshot, "running": self.running}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> TableState:
        if not data:
            return cls()
        return cls(data.get("position"), data.get("snapshot"), dict(data.get("running") or {}))


@dataclass
class Poll:
    """One poll's changes of one table, waiting for acknowledgement before its state (or part of it) is saved.

    Once every late change and the first k new ones are acknowledged, the state up to the k-th new row is
    safe to save: every row at or below it that the poll's snapshot shows has been handled.
    """

    state: TableState
    late: set[str]
    fresh: list[tuple[str, list[str]]]  # (change id, position after it), in watermark order
    acked: set[str] = field(default_factory=set)
    saved: int = 0  # how many of ``fresh`` the saved state covers

    def acknowledge(self, change_id: str) -> bool:
        if change_id in self.late:
            self.late.discard(change_id)
            return True
        if any(change_id == item[0] for item in self.fresh[self.saved :]):
            self.acked.add(change_id)
            return True
        return False

    def progress(self) -> tuple[TableState | None, bool]:
        """The state to save now (None: no progress) and whether this poll is completely acknowledged."""
        if self.late:
            return None, False
        k = self.saved
        while k < len(self.fresh) and self.fresh[k][0] in self.acked:
            k += 1
        if k == len(self.fresh):
            return self.state, True
        if k == self.saved:
            return None, False
        self.saved = k
        return TableState(self.fresh[k - 1][1], self.state.snapshot, self.state.running), False


#: Returns the connection to use now (raising when there is none that works).
CurrentConnection = Callable[[], psycopg.Connection[Any]]


class StateStore(Protocol):
    def load(self, table: str) -> dict[str, Any] | None: ...

    def save(self, table: str, state: dict[str, Any]) -> None: ...


class TableStore:
    """State rows in ``pgchanges.poll_state``, one per (consumer, table)."""

    where = "table pgchanges.poll_state"

    def __init__(self, connection: CurrentConnection, consumer: str) -> None:
        self._connection = connection
        self._consumer = consumer

    def load(self, table: str) -> dict[str, Any] | None:
        row = (
            self._connection()
            .execute(
                "SELECT state FROM pgchanges.poll_state WHERE consumer = %s AND table_name = %s",
                (self._consumer, table),
            )
            .fetchone()
        )
        return dict(row[0]) if row else None

    def save(self, table: str, state: dict[str, Any]) -> None:
        self._connection().execute(
            """INSERT INTO pgchanges.poll_state (consumer, table_name, state) VALUES (%s, %s, %s)
               ON CONFLICT (consumer, table_name) DO UPDATE SET state = excluded.state, updated_at = now()""",
            (self._consumer, table, Jsonb(state)),
        )


class FileStore:
    """State in one JSON file per consumer and database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = f"file {path}"
        self._states: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                self._states = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise OSError(f"cannot read the polling state file {path}: {exc}") from None

    def load(self, table: str) -> dict[str, Any] | None:
        return self._states.get(table)

    def save(self, table: str, state: dict[str, Any]) -> None:
        self._states[table] = state
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(self._states, out, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def default_state_file(conn: psycopg.Connection[Any], consumer: str) -> Path:
    """``$XDG_STATE_HOME/pgchanges/<consumer>-<database digest>.json`` (``~/.local/state`` by default)."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    where = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    digest = hashlib.sha256(where.encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in consumer)
    return base / "pgchanges" / f"{safe}-{digest}.json"


def open_store(
    connection: CurrentConnection, consumer: str, state_file: str | Path | None, auto_install: bool
) -> TableStore | FileStore:
    """A file store when ``state_file`` is given; else the table when this role may use (or create) it."""
    if state_file is not None:
        return FileStore(Path(state_file))
    conn = connection()
    if _table_usable(conn, auto_install):
        return TableStore(connection, consumer)
    path = default_state_file(conn, consumer)
    log.info("this role cannot write pgchanges.poll_state; keeping the watermark in %s", path)
    return FileStore(path)


def _table_usable(conn: psycopg.Connection[Any], auto_install: bool) -> bool:
    row = conn.execute(
        """SELECT to_regclass('pgchanges.poll_state') IS NOT NULL
                  AND has_table_privilege('pgchanges.poll_state', 'SELECT, INSERT, UPDATE')"""
    ).fetchone()
    if row and row[0]:
        return True
    if not auto_install:
        return False
    try:
        migrations.migrate(conn)
    except (pg_errors.InsufficientPrivilege, pg_errors.ReadOnlySqlTransaction):
        return False
    return True


def list_states(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str, Any]]:
    """(consumer, table, watermark, saved at) of the polling consumers that keep their state in the table."""
    if conn.execute("SELECT to_regclass('pgchanges.poll_state')").fetchone() == (None,):
        return []
    rows = conn.execute(
        "SELECT consumer, table_name, state -> 'position', updated_at FROM pgchanges.poll_state ORDER BY 1, 2"
    ).fetchall()
    return [(r[0], r[1], ", ".join(r[2]) if r[2] else "(start)", r[3]) for r in rows]
