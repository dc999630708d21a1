"""The benchmark's throwaway cluster, its databases and schema, and slot housekeeping.

One durable PostgreSQL cluster (fsync on, wal_level logical) for the whole run. Database ``bench`` holds the
peers' objects and the pgchanges being measured; with a baseline, ``bench_base`` holds the same tables with
the baseline checkout's own capture installed (its migrations may differ from the measured one's, so the two
never share a ``pgchanges`` schema). Every consumer has its own slot; slots are dropped after each round.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from pgchanges.embedded import LocalCluster

# The same settings as the reference harness (../shared/peers/cluster.sh), each for a reason:
SETTINGS = {
    "max_connections": "100",
    "max_wal_senders": "40",
    "max_replication_slots": "40",
    "wal_sender_timeout": "0",  # consumers are frozen (SIGSTOP) while the workload is written
    "shared_buffers": "512MB",
    "max_wal_size": "8GB",  # no checkpoint in the middle of a round
    "checkpoint_timeout": "30min",
    "autovacuum": "off",  # no background work between rounds; tables are truncated each round
    "logical_decoding_work_mem": "64MB",
}
# Some Debian builds allow-list output plugins; where the setting exists, wal2json must be on the list.
PLUGIN_ALLOW_LIST = "output_plugin_libraries"

COLUMNS = "id bigserial PRIMARY KEY, name text, qty int, price numeric(12,2), at timestamptz, payload jsonb"
TABLES = ("items", "items_pgc", "items_peer")  # logical (everyone); notify: pgchanges' trigger; the peers'


def start_cluster() -> LocalCluster:
    probe = LocalCluster()
    settings = dict(SETTINGS)
    if _knows_setting(probe.bindir, PLUGIN_ALLOW_LIST):
        settings[PLUGIN_ALLOW_LIST] = "'pgoutput, test_decoding, wal2json'"
    return LocalCluster(fast_unsafe=False, settings=settings).start()


def _knows_setting(bindir: Path, name: str) -> bool:
    described = subprocess.run(
        [str(bindir / "postgres"), "--describe-config"], capture_output=True, text=True, check=False
    )
    return any(line.split("\t", 1)[0] == name for line in described.stdout.splitlines())


def connect(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(dsn, autocommit=True)


def create_database(admin_dsn: str, dsn: str, dbname: str, pgchanges_src: Path) -> None:
    """``dbname`` with the three tables, the peers' publication and trigger, and pgchanges' capture.

    Capture is installed by the command line of the checkout in ``pgchanges_src``, so that an older checkout
    installs its own schema version.
    """
    with connect(admin_dsn) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    with connect(dsn) as conn:
        for table in TABLES:
            conn.execute(f"CREATE TABLE {table} ({COLUMNS})")
        conn.execute("CREATE PUBLICATION peers_pub FOR TABLE items")
        conn.execute(
            "CREATE FUNCTION peers_notify() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN PERFORM pg_notify('peers_items', row_to_json(NEW)::text); RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER peers_notify AFTER INSERT ON items_peer FOR EACH ROW EXECUTE FUNCTION peers_notify()"
        )
    env = {**os.environ, "PYTHONPATH": str(pgchanges_src)}
    for args in (["public.items_pgc"], ["public.items", "--source", "logical"]):
        subprocess.run(
            [sys.executable, "-m", "pgchanges.cli", "install", *args, "--dsn", dsn],
            check=True,
            stdout=subprocess.DEVNULL,
            env=env,
        )


def create_slot(dsn: str, slot: str, plugin: str) -> None:
    with connect(dsn) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (slot, plugin))


def drop_slots(dsn: str, timeout: float = 30.0) -> None:
    """Drop every slot of ``dsn``'s database once its consumer has let go of it (killed consumers do)."""
    deadline = time.monotonic() + timeout
    with connect(dsn) as conn:
        while True:
            rows = conn.execute(
                "SELECT slot_name, active FROM pg_replication_slots WHERE database = current_database()"
            ).fetchall()
            for name, active in rows:
                if not active:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            if not any(active for _, active in rows):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"slots still active after {timeout:.0f} s: {[n for n, a in rows if a]}")
            time.sleep(0.1)


def streaming_walsender(dsn: str, slot: str | None, like: str | None, timeout: float = 60.0) -> int:
    """The pid of the walsender serving ``slot`` (or the temporary slot named ``like``) once it streams."""
    deadline = time.monotonic() + timeout
    query = "SELECT active_pid FROM pg_replication_slots WHERE active AND " + (
        "slot_name LIKE %s" if like else "slot_name = %s"
    )
    with connect(dsn) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(query, (like or slot,)).fetchone()
            if row:
                state = conn.execute("SELECT state FROM pg_stat_replication WHERE pid = %s", (row[0],)).fetchone()
                if state and state[0] in ("streaming", "catchup"):
                    return int(str(row[0]))
            time.sleep(0.05)
    raise TimeoutError(f"no walsender streaming for slot {like or slot} within {timeout:.0f} s")


def server_version(dsn: str) -> str:
    with connect(dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"
