"""Real network partitions between ``pgchanges tail`` and PostgreSQL (issue 17; issue 16, item 3).

The consumer runs in a network namespace of its own and reaches the server over a veth pair; rows are written
from the host side all along. :meth:`tests.partition.Partition.cut` drops every packet on both ends of the pair
(no RST, nothing refused) until :meth:`~tests.partition.Partition.heal`. Durable sources must lose nothing
and resume; notify may lose what was sent meanwhile but must deliver a gap, then resume. Every source must
notice the partition within :data:`pgchanges.db.connect.DEAD_PEER_SECONDS` of the cut (the tests measure it).

:meth:`~tests.partition.Partition.slow` makes the pair a slow link whose full queue drops packets (there is no
netem here); a consumer must lose nothing over it.

Needs root and ``ip netns`` (skipped otherwise). The tests marked slow use the default liveness settings, so
they wait for the real detection bound (about 20 s).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from pgchanges.db.connect import CONNECT_TIMEOUT_SECONDS, DEAD_PEER_SECONDS
from pgchanges.sources.base import Backoff
from tests.conftest import wait_for
from tests.partition import Consumer, Partition, PartitionCluster, RowWriter, skip_reason

#: After the heal: a connect attempt sent into the partition times out, a backoff, the next attempt; slack.
RECOVERY_SECONDS = CONNECT_TIMEOUT_SECONDS + Backoff().maximum + 15
#: Noticing the partition: the detection bound, plus the poll interval and scheduling slack.
NOTICE_SECONDS = DEAD_PEER_SECONDS + 5

TABLE = "CREATE TABLE p (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"
POLLING = ("--source", "polling", "--column", "at", "--interval", "0.5", "--consumer", "chaos")


@pytest.fixture(scope="module")
def network() -> Iterator[tuple[Partition, PartitionCluster]]:
    """A namespace with a veth pair to the host, and a cluster that also listens on the pair."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with Partition() as partition, PartitionCluster(partition=partition) as cluster:
        assert isinstance(cluster, PartitionCluster)
        yield partition, cluster


class Rig:
    """One test's database on the partition's cluster, its consumers and writers (stopped at teardown)."""

    def __init__(self, partition: Partition, cluster: PartitionCluster, dbname: str) -> None:
        self.partition = partition
        self.cluster = cluster
        self.dbname = dbname
        self.local = cluster.dsn(dbname)  # the host side: never partitioned
        self.db = psycopg.connect(self.local, autocommit=True)
        self.consumers: list[Consumer] = []
        self.writers: list[RowWriter] = []

    def tail(self, *args: str, **dsn_params: str | int) -> Consumer:
        """``pgchanges tail public.p --format json ARGS`` in the namespace, once it is tailing."""
        dsn = self.cluster.partitioned_dsn(self.dbname, **dsn_params)
        consumer = Consumer(self.partition, ["tail", "public.p", "--format", "json", *args, "--dsn", dsn])
        self.consumers.append(consumer)
        consumer.wait_stderr("-- tailing", timeout=60)
        return consumer

    def write(self) -> RowWriter:
        writer = RowWriter(self.local).start()
        self.writers.append(writer)
        return writer

    def close(self) -> None:
        self.partition.unslow()
        self.partition.heal()
        for consumer in self.consumers:
            consumer.stop()
        for writer in self.writers:
            with contextlib.suppress(AssertionError):  # the test reported it, or failed before
                writer.stop()
        self.db.close()


@pytest.fixture
def rig(network: tuple[Partition, PartitionCluster], request: pytest.FixtureRequest) -> Iterator[Rig]:
    partition, cluster = network
    name = f"part_{request.node.name.split('[')[0][5:40]}_{time.monotonic_ns() % 100_000}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    made = Rig(partition, cluster, name)
    try:
        yield made
    finally:
        made.close()  # the cluster (and every database in it) goes with the module


def delivered(consumer: Consumer) -> set[int]:
    return {c["new"]["id"] for c in consumer.changes() if c.get("new")}


def all_of(consumer: Consumer, ids: Callable[[], set[int]]) -> Callable[[], bool]:
    return lambda: ids() <= delivered(consumer)


def missing(consumer: Consumer, ids: Callable[[], set[int]]) -> Callable[[], str]:
    def describe() -> str:
        lost = sorted(ids() - delivered(consumer))
        return f"{len(lost)} rows not delivered (first: {lost[:5]})"

    return describe


def saved_position(db: psycopg.Connection[Any], consumer: str) -> str | None:
    row = db.execute(
        "SELECT state -> 'position' ->> 1 FROM pgchanges.poll_state WHERE consumer = %s AND table_name = 'public.p'",
        (consumer,),
    ).fetchone()
    return None if row is None else row[0]


def partition_until_noticed(rig: Rig, consumer: Consumer, message: str) -> float:
    """Cut, wait until the consumer logs ``message`` (a lost connection), heal; the seconds it took to notice."""
    before = sum(message in line for line in consumer.stderr)
    rig.partition.cut()
    try:
        return consumer.await_(
            lambda: sum(message in line for line in consumer.stderr) > before,
            f"{message!r} while partitioned (bound {DEAD_PEER_SECONDS:.0f}s)",
            timeout=NOTICE_SECONDS,
        )
    finally:
        rig.partition.heal()


def nothing_lost(rig: Rig, consumer: Consumer, message: str, recovery: float = RECOVERY_SECONDS) -> tuple[float, float]:
    """Rows written before, during and after a partition all reach ``consumer``; (noticed, resumed) seconds."""
    writer = rig.write()
    consumer.await_(lambda: len(delivered(consumer)) >= 50, "the first rows", timeout=30)
    noticed = partition_until_noticed(rig, consumer, message)
    at_heal = len(writer.written)
    resumed = consumer.await_(
        all_of(consumer, lambda: set(range(1, at_heal + 1))),
        missing(consumer, lambda: set(range(1, at_heal + 1))),
        timeout=recovery,
    )
    written = writer.stop()
    consumer.await_(all_of(consumer, lambda: set(written)), missing(consumer, lambda: set(written)), timeout=30)
    print(f"\n{message}: noticed {noticed:.1f}s after the cut, every row in {resumed:.1f}s after the heal")
    return noticed, resumed


# -- polling ---------------------------------------------------------------------------------------------------

#: The issue's situation, sooner: the idle writer is dropped by its keepalives (~3 s) while the poll sent into
#: the partition has no bound on unacknowledged data (tcp_user_timeout=0) and waits it out, then returns rows.
WAIT_OUT = {"keepalives_idle": 1, "keepalives_interval": 1, "keepalives_count": 2, "tcp_user_timeout": 0}


def cut_while_a_poll_waits(rig: Rig, consumer: Consumer, writer: RowWriter, attempts: int = 6) -> None:
    """Cut, and leave the partition on until the kernel dropped the idle writer while the reader's poll waits
    in the partition; then heal. The connection that waits is the one that had a statement to send first after
    the cut: when that was the writer (the cut fell among the saves that follow each printed change), heal,
    let the consumer recover, and cut again."""
    port = rig.cluster.port
    for _ in range(attempts):
        wait_for(lambda: len(rig.partition.established(port)) == 2, "the reader and the writer connected", 30)
        start = len(writer.written)  # the cut falls anywhere in a poll round, not right after printed changes
        consumer.await_(lambda n=start + 25: len(writer.written) >= n, "more rows written", timeout=30)
        rig.partition.cut()
        try:  # the kernel drops the idle connection (keepalives); the other one waits with a statement in flight
            wait_for(lambda: len(rig.partition.established(port)) < 2, "a connection dropped by keepalives", 20)
            waiting = rig.partition.established(port)
            row = rig.db.execute(
                "SELECT query FROM pg_stat_activity WHERE client_addr = %s AND client_port = ANY(%s)",
                (rig.partition.ns_ip, waiting),
            ).fetchone()
        finally:
            rig.partition.heal()
        assert row is not None, f"no backend for the waiting connection (ports {waiting})"
        if "poll_state" not in row[0]:  # the writer's statements all name pgchanges.poll_state
            return
        so_far = set(range(1, len(writer.written) + 1))
        consumer.await_(all_of(consumer, lambda ids=so_far: ids), "recovery", RECOVERY_SECONDS)
    pytest.fail(f"in {attempts} cuts, the writer was never the connection dropped")


def test_polling_replaces_a_writer_that_died_while_a_poll_waited_out_the_partition(rig: Rig) -> None:
    rig.db.execute(TABLE)
    rig.db.execute("CREATE INDEX ON p (at, id)")
    consumer = rig.tail(*POLLING, **WAIT_OUT)
    writer = rig.write()
    consumer.await_(lambda: len(delivered(consumer)) >= 50, "the first rows", timeout=30)
    cut_while_a_poll_waits(rig, consumer, writer)
    at_heal = len(writer.written)
    consumer.await_(
        all_of(consumer, lambda: set(range(1, at_heal + 1))),
        missing(consumer, lambda: set(range(1, at_heal + 1))),
        timeout=RECOVERY_SECONDS,
    )
    written = writer.stop()
    consumer.await_(all_of(consumer, lambda: set(written)), missing(consumer, lambda: set(written)), timeout=30)
    wait_for(lambda: saved_position(rig.db, "chaos") == str(max(written)), "the watermark saved", timeout=15)
    failed_saves = [line for line in consumer.stderr if "could not save the watermark" in line]
    on_closed = [line for line in failed_saves if "the connection is closed" in line]
    assert not on_closed, f"{len(on_closed)} saves were sent to a connection known to be closed: {on_closed[:2]}"
    losses = sum("polling lost its connection" in line for line in consumer.stderr)
    assert len(failed_saves) <= losses, f"one failed save is enough to reconnect, not {len(failed_saves)}"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_polling_notices_a_partition_within_the_bound_and_loses_nothing(rig: Rig) -> None:
    rig.db.execute(TABLE)
    consumer = rig.tail(*POLLING)  # the default liveness settings
    noticed, _ = nothing_lost(rig, consumer, "polling lost its connection")
    assert noticed <= NOTICE_SECONDS
    wait_for(lambda: saved_position(rig.db, "chaos") is not None, "the watermark saved", timeout=15)


# -- the other sources with a second connection -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_notify_delivers_a_gap_and_resumes_after_a_partition(rig: Rig) -> None:
    """Notify: a LISTEN connection (idle: only keepalives can notice) and a query connection."""
    rig.db.execute(TABLE)
    consumer = rig.tail("--source", "notify")
    writer = rig.write()
    consumer.await_(lambda: len(delivered(consumer)) >= 50, "the first rows", timeout=30)
    noticed = partition_until_noticed(rig, consumer, "LISTEN connection lost")
    resumed = consumer.await_(
        lambda: any(c["op"] == "gap" for c in consumer.changes()), "a gap after the partition", RECOVERY_SECONDS
    )
    after_gap = len(writer.written)  # committed after LISTEN was in place again: none of these may be missed
    wanted = set(range(after_gap + 1, after_gap + 101))
    consumer.await_(all_of(consumer, lambda: wanted), missing(consumer, lambda: wanted), timeout=30)
    print(f"\nnotify: noticed {noticed:.1f}s after the cut, gap {resumed:.1f}s after the heal")
    assert noticed <= NOTICE_SECONDS


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_outbox_loses_nothing_in_a_partition(rig: Rig) -> None:
    """Outbox: a claim connection and a LISTEN wake-up connection."""
    rig.db.execute(TABLE)
    consumer = rig.tail("--source", "outbox", "--consumer", "chaos")
    noticed, _ = nothing_lost(rig, consumer, "outbox worker lost its connection")
    assert noticed <= NOTICE_SECONDS


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_logical_loses_nothing_in_a_partition(rig: Rig) -> None:
    """Logical: a replication connection (durable slot) and a control connection.

    The server's walsender of the partitioned stream would keep the slot (``slot is active for PID``) until
    ``wal_sender_timeout`` (60 s by default); the source ends it once it has been silent for longer than a live
    consumer ever is, so resuming takes no longer than on the other sources.
    """
    rig.db.execute(TABLE)
    rig.db.execute("ALTER SYSTEM SET wal_sender_timeout = '10min'")  # the server must not end it for us
    rig.db.execute("SELECT pg_reload_conf()")
    try:
        consumer = rig.tail("--source", "logical", "--slot", "partition_slot")
        noticed, _ = nothing_lost(rig, consumer, "replication connection lost")
    finally:
        rig.db.execute("ALTER SYSTEM RESET wal_sender_timeout")
        rig.db.execute("SELECT pg_reload_conf()")
    assert noticed <= NOTICE_SECONDS


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_logical_replaces_its_control_connection_after_a_partition(rig: Rig) -> None:
    """A column of a user-defined type: each new stream's Relation message needs the control connection, which
    died in the partition too (it used to stay dead, and every new stream failed on it, forever)."""
    rig.db.execute("CREATE TYPE mood AS ENUM ('ok', 'meh')")
    rig.db.execute("CREATE TABLE p (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), m mood DEFAULT 'ok')")
    consumer = rig.tail("--source", "logical", "--slot", "partition_types")
    nothing_lost(rig, consumer, "replication connection lost")


# -- a slow, lossy link ------------------------------------------------------------------------------------------


def test_outbox_loses_nothing_over_a_slow_lossy_link(rig: Rig) -> None:
    """64 kbit/s and a queue of two packets: each change (4 kB) is more than that, so packets are dropped and
    retransmitted, and the consumer falls behind; it catches up afterwards with every row."""
    rig.db.execute(f"{TABLE[:-1]}, pad text NOT NULL DEFAULT repeat('x', 4000))")
    consumer = rig.tail("--source", "outbox", "--consumer", "slow")
    writer = rig.write()
    consumer.await_(lambda: len(delivered(consumer)) >= 50, "the first rows", timeout=30)
    rig.partition.slow(rate="64kbit", queue_bytes=3000)
    try:
        more = len(delivered(consumer)) + 20
        consumer.await_(lambda: len(delivered(consumer)) >= more, "rows over the slow link", timeout=60)
    finally:
        dropped = rig.partition.unslow()
    written = writer.stop()
    consumer.await_(all_of(consumer, lambda: set(written)), missing(consumer, lambda: set(written)), timeout=60)
    assert dropped > 0, "the slow link dropped nothing: it was not the lossy link this test is about"
