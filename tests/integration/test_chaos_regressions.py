"""What the chaos runner (bench/chaos, issue 16) found, each as a test that fails while the bug is there.

Each test here failed before its fix (the chaos runner found the bug) and guards it now.
"""

from __future__ import annotations

import subprocess
import sys

import anyio
import psycopg
import pytest

import pgchanges
from pgchanges.db.connect import DEAD_PEER_SECONDS
from pgchanges.embedded import LocalCluster
from pgchanges.standby import LOCK_NAMESPACE
from tests.conftest import take, wait_for
from tests.partition import Partition, PartitionCluster, skip_reason

pytestmark = pytest.mark.anyio


def lsn(conn: psycopg.Connection, position: object) -> int:
    return int(conn.execute("SELECT %s::text::pg_lsn - '0/0'::pg_lsn", (str(position),)).fetchone()[0])


def confirmed(conn: psycopg.Connection, slot: str) -> int:
    row = conn.execute(
        "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    ).fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


async def test_logical_repeats_nothing_acknowledged_after_a_server_restart() -> None:
    """The chaos runner saw 3,768 row versions delivered again after one fast restart, against a bound of one
    batch in flight. Here: 100 changes handled and confirmed to the server, a restart, one more row: the next
    change must be that row."""
    with LocalCluster() as own, psycopg.connect(own.dsn(), autocommit=True) as db:
        db.execute("CREATE TABLE t (id int PRIMARY KEY)")
        async with pgchanges.stream(own.dsn(), tables=["t"], source="logical", slot="again") as changes:
            for i in range(1, 101):
                db.execute("INSERT INTO t VALUES (%s)", (i,))
            got = await take(changes, 100, timeout=30)
            for change in got:
                await changes.ack(change)  # each acknowledgement sends the server a status update
            last_commit = lsn(db, got[-1].position)
            wait_for(lambda: confirmed(db, "again") > last_commit, "the slot confirmed the last change", 20)
            await anyio.to_thread.run_sync(own.restart)
            with psycopg.connect(own.dsn(), autocommit=True) as after:
                after.execute("INSERT INTO t VALUES (101)")
            [first] = await take(changes, 1, timeout=60)
    assert first.new == {"id": 101}, f"after the restart came {first.op} {first.new} again, not the new row"


# -- a forwarder's lock, held by the server for a client that vanished -----------------------------------------

#: A process that takes a forwarder's standby lock (as ``pgchanges forward --slot`` does), says so, and watches
#: it as the forwarder does: it exits once its own side of the lock connection broke.
HOLDER = """
import sys, anyio
from pgchanges.standby import SlotLock

async def main() -> None:
    lock = SlotLock(sys.argv[1], "slot:zombie")
    await lock.acquire()
    print("held", flush=True)
    await lock.watch()

anyio.run(main)
"""


def forwarder_locks(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND granted",
        (LOCK_NAMESPACE,),
    ).fetchone()
    return int(row[0])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_lock_of_a_forwarder_cut_off_by_a_partition_is_released() -> None:
    """The chaos runner's forward/partition run: the forwarder noticed the partition and exited (it lost its
    lock connection), its supervisor started it again, and the new process found the lock still held by the
    old process's backend: nothing was forwarded for the rest of the run. Here: a holder in a network
    namespace, a partition until the holder gave up its lock connection and exited; once the link is back,
    the lock must be free (the server's side of that connection is not dead by itself: nothing told it)."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with Partition() as partition, PartitionCluster(partition=partition) as cluster:
        assert isinstance(cluster, PartitionCluster)
        holder = subprocess.Popen(
            partition.command([sys.executable, "-c", HOLDER, cluster.partitioned_dsn("postgres")]),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            with psycopg.connect(cluster.dsn(), autocommit=True) as db:
                assert forwarder_locks(db) == 1
                # a quiet lock connection, as a forwarder's is between its checks: the server has nothing in
                # flight to retransmit (it would learn of the dead client from the RST to a retransmission)
                wait_for(lambda: partition.server_unacknowledged() == 0, "the server's data acknowledged", 10)
                partition.cut()
                status = holder.wait(timeout=DEAD_PEER_SECONDS + 30)  # its kernel gave up the connection
                partition.heal()
                assert status != 0, "the holder should have exited because its lock connection broke"
                wait_for(lambda: forwarder_locks(db) == 0, "the dead holder's lock released", timeout=60)
        finally:
            if holder.poll() is None:
                holder.kill()
            holder.wait(timeout=10)
            if holder.stdout is not None:
                holder.stdout.close()
