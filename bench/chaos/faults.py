"""Fault injectors for the chaos runner: each one breaks something, waits, and repairs it.

Every fault is a function ``(rig, rng) -> Injected``; the runner calls them at random times. ``rig`` is the
runner's view of the world (the server, the partition, the consumer process): see :class:`Rig`. A fault
returns what happened: when it began and ended, and whether and when the consumer logged that it noticed a
lost connection (``noticed``: seconds after the start; None for faults that do not cut connections).

The network faults work on the veth pair of :class:`tests.partition.Partition`:

- ``partition``: a ``blackhole`` qdisc on both ends drops every packet silently (no RST, no ICMP), held until
  the consumer notices (bounded by :data:`PARTITION_LIMIT`), then healed;
- ``slowlink``: this kernel has no ``netem`` (and no iptables, no classifiers), so the slow link is a ``tbf``
  qdisc on both ends: a link of :data:`SLOW_RATE` whose queue holds :data:`SLOW_QUEUE_BYTES`; each packet
  waits its turn (latency) and one that finds the queue full is dropped (tail drop) and TCP retransmits it.
  Honest loss and latency, though caused by bursts rather than a random draw.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from tests.partition import Partition, PartitionCluster

#: A partition is healed once noticed, or after this many seconds (a detection bound of 30 s is the goal).
PARTITION_LIMIT = 45.0
SLOW_RATE = "256kbit"
SLOW_QUEUE_BYTES = 3000  # two full-size packets
#: What the consumer logs when it notices a lost connection, per source (``pgchanges forward --slot`` may first
#: notice that its standby lock's connection broke, and exit).
LOSS_LINES = {
    "notify": ("LISTEN connection lost",),
    "outbox": ("outbox worker lost its connection",),
    "logical": ("replication connection lost", "lost the lock on"),
    "polling": ("polling lost its connection",),
}


class Rig(Protocol):
    """What a fault may touch."""

    source: str
    cluster: PartitionCluster
    partition: Partition
    admin_dsn: str

    consumers: list[Any]

    @property
    def consumer(self) -> Any: ...

    def respawn(self) -> None: ...


@dataclass
class Injected:
    kind: str
    start: float  # epoch seconds
    end: float = 0.0
    noticed: float | None = None  # seconds from start to the consumer's "lost connection" line
    detail: dict[str, Any] = field(default_factory=dict)


def _await_notice(rig: Rig, start: float, limit: float) -> float | None:
    """Seconds from ``start`` to the first "lost connection" line the consumer logged after it, waiting until
    ``start + limit`` at most (it may have come already: a restart can take long); None if there was none."""
    needles = LOSS_LINES[rig.source]
    while True:
        seen = [
            at
            for consumer in list(rig.consumers)  # the one that noticed may have exited since (forward)
            for at, line in zip(list(consumer.stderr_at), list(consumer.stderr), strict=False)
            if at >= start and any(needle in line for needle in needles)
        ]
        if seen:
            return min(seen) - start
        if time.time() - start >= limit:
            return None
        time.sleep(0.1)  # reading a log the consumer's threads fill: nothing to await here


def terminate(rig: Rig, rng: random.Random) -> Injected:
    """``pg_terminate_backend`` of every connection of the consumer (they come from the namespace's address)."""
    fault = Injected("terminate", time.time())
    with psycopg.connect(rig.admin_dsn, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE client_addr = %s",
            (rig.partition.ns_ip,),
        ).fetchone()
    fault.detail["terminated"] = 0 if ended is None else int(ended[0])
    fault.end = time.time()
    fault.noticed = _await_notice(rig, fault.start, 30)
    return fault


def _restart(mode: str) -> Callable[[Rig, random.Random], Injected]:
    def restart(rig: Rig, rng: random.Random) -> Injected:
        fault = Injected(f"restart-{mode}", time.time())
        rig.cluster.restart(mode)
        fault.end = time.time()
        fault.noticed = _await_notice(rig, fault.start, 30)
        return fault

    restart.__doc__ = f"A {mode} restart of the server (pg_ctl stop -m {mode}; start)."
    return restart


def sigkill(rig: Rig, rng: random.Random) -> Injected:
    """SIGKILL of the consumer process, whatever it was doing (a commit, an acknowledgement); a new one soon."""
    fault = Injected("sigkill", time.time())
    os.kill(rig.consumer.proc.pid, signal.SIGKILL)
    rig.consumer.proc.wait(timeout=30)
    time.sleep(rng.uniform(0.5, 3.0))  # the time a supervisor takes to start it again
    rig.respawn()
    fault.end = time.time()
    return fault


def sigstop(rig: Rig, rng: random.Random) -> Injected:
    """SIGSTOP of the consumer for a while, then SIGCONT (a long GC pause, a frozen VM)."""
    fault = Injected("sigstop", time.time())
    pause = rng.uniform(3.0, 20.0)
    os.kill(rig.consumer.proc.pid, signal.SIGSTOP)
    time.sleep(pause)
    os.kill(rig.consumer.proc.pid, signal.SIGCONT)
    fault.end = time.time()
    fault.detail["paused"] = round(pause, 1)
    return fault


def partition(rig: Rig, rng: random.Random) -> Injected:
    """Drop every packet between the consumer and the server until the consumer notices; then heal."""
    fault = Injected("partition", time.time())
    rig.partition.cut()
    try:
        fault.noticed = _await_notice(rig, fault.start, PARTITION_LIMIT)
        if fault.noticed is not None:
            time.sleep(rng.uniform(0.0, 5.0))  # reconnect attempts sent into the partition too
    finally:
        rig.partition.heal()
    fault.end = time.time()
    return fault


def partition_restart(rig: Rig, rng: random.Random) -> Injected:
    """A partition during which the server restarts (fast): the old connections are gone on both sides. A fast
    shutdown waits for each walsender to finish, and one whose client is partitioned away only ends at
    ``wal_sender_timeout``: the restart itself can take that long."""
    fault = Injected("partition+restart", time.time())
    rig.partition.cut()
    try:
        time.sleep(rng.uniform(1.0, 8.0))
        rig.cluster.restart("fast")
        fault.detail["restart_took"] = round(time.time() - fault.start, 1)
        fault.noticed = _await_notice(rig, fault.start, PARTITION_LIMIT)
    finally:
        rig.partition.heal()
    fault.end = time.time()
    return fault


def slowlink(rig: Rig, rng: random.Random) -> Injected:
    """A slow, lossy link for a while (see the module's docstring: tbf, since there is no netem here)."""
    fault = Injected("slowlink", time.time())
    hold = rng.uniform(8.0, 25.0)
    rig.partition.slow(SLOW_RATE, SLOW_QUEUE_BYTES)
    try:
        time.sleep(hold)
    finally:
        fault.detail["dropped"] = rig.partition.unslow()
    fault.end = time.time()
    fault.detail["held"] = round(hold, 1)
    return fault


FAULTS: dict[str, Callable[[Rig, random.Random], Injected]] = {
    "terminate": terminate,
    "restart-fast": _restart("fast"),
    "restart-immediate": _restart("immediate"),
    "sigkill": sigkill,
    "sigstop": sigstop,
    "partition": partition,
    "partition+restart": partition_restart,
    "slowlink": slowlink,
}
#: Faults after which the consumer must log a lost connection (the others keep or replace the process).
CUTS_CONNECTIONS = {"terminate", "restart-fast", "restart-immediate", "partition", "partition+restart"}
