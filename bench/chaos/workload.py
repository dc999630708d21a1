"""The chaos write load: a table whose every row version is countable, a trigger-free ledger, pgbench.

Each row of ``public.chaos`` carries ``ver``, which the insert sets to 1 and every update increments; a delete
is version ``ver + 1`` of its row. Every statement of the pgbench scripts writes the versions it made into
``public.chaos_ledger`` in the same statement (a data-modifying CTE), so the ledger holds exactly the row
versions that committed, whatever happened to the writers (aborted clients, server restarts, retried
deadlocks). Consumers report ``(id, ver)``; the checker compares the two.

The polling source cannot see deletes, so its script soft-deletes (``deleted``, with ``--soft-delete``) and
the delete is still a new version of the row.

:class:`Writers` runs pgbench (several clients, multi-row transactions, ``--max-tries`` so deadlocks between
the random updates are retried, not fatal) until a deadline, and starts it again whenever it ended early
(a restart of the server aborts every client).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

SCHEMA = """
CREATE SEQUENCE chaos_id;
CREATE TABLE chaos (
    id bigint PRIMARY KEY,
    ver int NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    deleted boolean NOT NULL DEFAULT false,
    pad text NOT NULL DEFAULT repeat('x', 40)
);
CREATE INDEX chaos_at ON chaos (at, id);
CREATE TABLE chaos_ledger (
    id bigint NOT NULL,
    ver int NOT NULL,
    op "char" NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

# The first statement of both scripts: new ids for two inserts; updates and the delete pick recent rows.
_PICK = r"""
SELECT last_value AS top FROM chaos_id \gset
\set a random(greatest(1, :top - 300), :top)
\set b random(greatest(1, :top - 300), :top)
\set d random(greatest(1, :top - 300), :top)
BEGIN;
WITH i AS (INSERT INTO chaos (id, ver) SELECT nextval('chaos_id'), 1 FROM generate_series(1, 2) RETURNING id, ver)
  INSERT INTO chaos_ledger (id, ver, op) SELECT id, ver, 'i' FROM i;
WITH u AS (UPDATE chaos SET ver = ver + 1, at = now() WHERE id IN (:a, :b) AND NOT deleted RETURNING id, ver)
  INSERT INTO chaos_ledger (id, ver, op) SELECT id, ver, 'u' FROM u;
"""

HARD_DELETE = (
    _PICK
    + """WITH d AS (DELETE FROM chaos WHERE id = :d RETURNING id, ver)
  INSERT INTO chaos_ledger (id, ver, op) SELECT id, ver + 1, 'd' FROM d;
END;
"""
)

SOFT_DELETE = (
    _PICK
    + """WITH d AS (UPDATE chaos SET ver = ver + 1, at = now(), deleted = true WHERE id = :d AND NOT deleted
               RETURNING id, ver)
  INSERT INTO chaos_ledger (id, ver, op) SELECT id, ver, 'd' FROM d;
END;
"""
)

PROBE = """WITH i AS (INSERT INTO chaos (id, ver) VALUES (nextval('chaos_id'), 1) RETURNING id, ver)
INSERT INTO chaos_ledger (id, ver, op) SELECT id, ver, 'i' FROM i RETURNING id"""


def pgbench_path() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    for version in (17, 16, 15, 14, 13):
        candidate = Path(f"/usr/lib/postgresql/{version}/bin/pgbench")
        if candidate.exists():
            return str(candidate)
    raise RuntimeError("pgbench not found (PATH, /usr/lib/postgresql/*/bin)")


def create_schema(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)


def probe(dsn: str) -> int:
    """Write one row version (through the ledger) and return its id: the consumer is ready once it has it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(PROBE).fetchone()
    assert row is not None
    return int(row[0])


@dataclass
class Writers:
    """pgbench ``clients`` clients at about ``rate`` transactions a second in total, until :meth:`stop`."""

    dsn: str
    soft_delete: bool = False
    clients: int = 4
    rate: float = 60.0
    runs: int = 0
    aborted_runs: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _proc: subprocess.Popen[str] | None = None
    _script: Path | None = None

    def start(self) -> Writers:
        handle, name = tempfile.mkstemp(prefix="pgchanges-chaos-", suffix=".sql")
        with os.fdopen(handle, "w") as out:
            out.write(SOFT_DELETE if self.soft_delete else HARD_DELETE)
        self._script = Path(name)
        self._script.chmod(0o644)
        self._thread = threading.Thread(target=self._loop, name="chaos-writers", daemon=True)
        self._thread.start()
        return self

    def _command(self) -> list[str]:
        assert self._script is not None
        return [
            pgbench_path(), "-n", "-f", str(self._script), "-c", str(self.clients), "-j", "1",
            "-R", str(self.rate), "-T", "100000", "--max-tries", "20", "--no-vacuum", self.dsn,
        ]  # fmt: skip

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.runs += 1
            self._proc = subprocess.Popen(
                self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd="/"
            )
            _, err = self._proc.communicate()
            if self._stop.is_set():
                break
            self.aborted_runs += 1  # pgbench ended before we stopped it: the server went away; start again
            self.errors.append(err.strip().splitlines()[-1] if err.strip() else f"exit {self._proc.returncode}")
            self._stop.wait(0.5)  # a restarting server refuses connections for a moment: load pacing

    def stop(self) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()  # pgbench ends its clients; their open transactions roll back (ledger included)
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._script is not None:
            self._script.unlink(missing_ok=True)


def ledger(dsn: str) -> list[tuple[int, int, str, float]]:
    """Every committed row version: (id, ver, op, epoch seconds of the write). Read once pgbench's sessions
    are gone: a client stopped after it sent COMMIT leaves a backend that still commits, and what that commits
    is delivered even though a ledger read a moment earlier would not hold it."""
    wait_until_writers_gone(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, ver, op::text, extract(epoch FROM at)::float8 FROM chaos_ledger ORDER BY at"
        ).fetchall()
    return [(int(i), int(v), str(o), float(t)) for i, v, o, t in rows]


def wait_until_writers_gone(dsn: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'pgbench'"
            ).fetchone()
            if row is not None and row[0] == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{row[0] if row else '?'} pgbench sessions still open {timeout:.0f}s after the stop"
                )
            time.sleep(0.1)  # backends ending after their clients went: nothing to await


def wait_until_server_accepts(dsn: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=3):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # the server is starting: nothing to await
