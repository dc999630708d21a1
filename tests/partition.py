"""A real network partition between a consumer process and PostgreSQL, for fault tests.

:class:`Partition` makes a network namespace joined to the host by a veth pair that carries one private /24:
``host_ip`` on the host end, ``ns_ip`` inside the namespace, and nothing else (no route out of the namespace).
A process started with :meth:`Partition.command` runs inside the namespace and can reach the host only through
the pair. :meth:`Partition.cut` puts a ``blackhole`` qdisc on both ends, which silently drops every packet (no
RST, no ICMP: exactly what a dead switch or a lost route looks like to TCP); :meth:`Partition.heal` removes it.
:meth:`Partition.slow` makes the pair a slow, lossy link instead (a ``tbf`` qdisc: this kernel has no netem;
see the method), and :meth:`Partition.unslow` makes it fast again.

:class:`PartitionCluster` is a :class:`~pgchanges.embedded.LocalCluster` that also listens on ``host_ip`` and
trusts the pair's subnet. :class:`Consumer` runs ``pgchanges`` in the namespace and collects its output;
:class:`RowWriter` inserts rows from the host side at a steady rate while the test partitions the consumer.

Needs root, ``ip`` and ``tc`` (iproute2) and a kernel with network namespaces: :func:`skip_reason` says why
not, for ``pytest.skip``. Names and subnets are unique per instance, so parallel runs do not collide.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pgchanges.embedded import LocalCluster

_LOCK = Path(tempfile.gettempdir()) / "pgchanges-partition.lock"


def _run(cmd: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args] if netns is None else ["ip", "-n", netns, *args], check)


def _tc(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["tc", *args] if netns is None else ["ip", "netns", "exec", netns, "tc", *args], check)


def _dropped(stats: str) -> int:
    """Packets a qdisc dropped (``dropped N`` in ``tc -s qdisc show``)."""
    found = re.search(r"dropped (\d+)", stats)
    return int(found.group(1)) if found else 0


def skip_reason() -> str | None:
    """Why a partition cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return "network partitions need root (ip netns, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"network partitions need {tool!r} (iproute2)"
    probe = f"pgcprobe{uuid.uuid4().hex[:8]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns is unavailable ({made.stderr.strip()})"
    _ip("netns", "del", probe, check=False)
    return None


class Partition:
    """A network namespace and a veth pair to it; :meth:`cut` and :meth:`heal` switch the partition."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.netns = f"pgchanges-{tag}"
        self.host_if = f"pgh{tag}"  # interface names have at most 15 characters
        self.ns_if = f"pgn{tag}"
        self.host_ip = ""
        self.ns_ip = ""
        self.is_cut = False
        self.is_slow = False
        self._made = False

    @property
    def subnet(self) -> str:
        return self.host_ip.rsplit(".", 1)[0] + ".0/24"

    def start(self) -> Partition:
        with _LOCK.open("a") as lock:  # choosing a free subnet and taking it is one step for parallel runs
            fcntl.flock(lock, fcntl.LOCK_EX)
            prefix = self._free_prefix()
            self.host_ip, self.ns_ip = f"{prefix}.1", f"{prefix}.2"
            _ip("netns", "add", self.netns)
            self._made = True
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.netns)
            _ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("addr", "add", f"{self.ns_ip}/24", "dev", self.ns_if, netns=self.netns)
            _ip("link", "set", self.ns_if, "up", netns=self.netns)
            _ip("link", "set", "lo", "up", netns=self.netns)
        self.cut()  # fail here, not in the middle of a test, if blackhole qdiscs do not work
        self.heal()
        return self

    @staticmethod
    def _free_prefix() -> str:
        taken = _ip("-o", "-4", "addr", "show").stdout + _ip("-4", "route", "show").stdout
        rng = random.Random()  # a free subnet, not a secret
        for _ in range(200):
            prefix = f"10.{rng.randint(64, 250)}.{rng.randint(0, 255)}"
            if f"{prefix}." not in taken:
                return prefix
        raise RuntimeError("no free 10.x.y.0/24 subnet for the partition")

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` run inside the namespace (``ip netns exec`` execs it: the pid is the command's)."""
        return ["ip", "netns", "exec", self.netns, *args]

    def cut(self) -> None:
        """Drop every packet on both ends of the pair, silently."""
        _tc("qdisc", "add", "dev", self.host_if, "root", "blackhole")
        _tc("qdisc", "add", "dev", self.ns_if, "root", "blackhole", netns=self.netns)
        self.is_cut = True

    def heal(self) -> None:
        """Remove the blackhole qdiscs (the default qdisc comes back)."""
        if self.is_cut:
            _tc("qdisc", "del", "dev", self.host_if, "root")
            _tc("qdisc", "del", "dev", self.ns_if, "root", netns=self.netns)
        self.is_cut = False

    def slow(self, rate: str = "256kbit", queue_bytes: int = 3000) -> None:
        """Shape both ends to ``rate`` with a queue of ``queue_bytes`` (two full-size packets by default): every
        packet waits its turn (latency), and one that finds the queue full is dropped (loss; TCP retransmits
        it). There is no netem module here (nor iptables or tc classifiers), so this is the slow link: the loss
        comes from bursts that do not fit, not from a random draw."""
        shape = ("root", "tbf", "rate", rate, "burst", "1600", "limit", str(queue_bytes))
        _tc("qdisc", "add", "dev", self.host_if, *shape)
        _tc("qdisc", "add", "dev", self.ns_if, *shape, netns=self.netns)
        self.is_slow = True

    def unslow(self) -> int:
        """Remove the shaping; the packets it dropped (both ends)."""
        if not self.is_slow:
            return 0
        dropped = _dropped(_tc("-s", "qdisc", "show", "dev", self.host_if).stdout)
        dropped += _dropped(_tc("-s", "qdisc", "show", "dev", self.ns_if, netns=self.netns).stdout)
        _tc("qdisc", "del", "dev", self.host_if, "root", check=False)
        _tc("qdisc", "del", "dev", self.ns_if, "root", netns=self.netns, check=False)
        self.is_slow = False
        return dropped

    def established(self, port: int) -> list[int]:
        """The local ports of the TCP connections from the namespace to ``host_ip:port`` that the kernel still
        has established (the server sees them as ``pg_stat_activity.client_port``)."""
        out = _run(["ip", "netns", "exec", self.netns, "ss", "-Htn", "state", "established"]).stdout
        ports = []
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[3] == f"{self.host_ip}:{port}":
                ports.append(int(fields[2].rsplit(":", 1)[1]))
        return ports

    def server_unacknowledged(self) -> int:
        """Bytes the host side has sent into the pair and not had acknowledged (``ss`` Send-Q of established
        connections to the namespace). Zero: a partition now leaves the server nothing to retransmit, so it
        hears of a vanished client only by its own keepalives."""
        out = _run(["ss", "-Htn", "state", "established", "dst", self.ns_ip]).stdout
        return sum(int(line.split()[1]) for line in out.splitlines() if len(line.split()) >= 2)

    def close(self) -> None:
        if not self._made:
            return
        with contextlib.suppress(RuntimeError):
            self.unslow()
            self.heal()
        _ip("netns", "del", self.netns, check=False)  # takes the ns end, and so the whole pair, with it
        _ip("link", "del", self.host_if, check=False)
        self._made = False

    def __enter__(self) -> Partition:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class PartitionCluster(LocalCluster):
    """A LocalCluster that also listens on the host end of ``partition`` and trusts the pair's subnet."""

    partition: Partition | None = None

    def __post_init__(self) -> None:
        assert self.partition is not None and self.partition.host_ip, "start the partition first"
        self.settings = {**self.settings, "listen_addresses": f"'127.0.0.1,{self.partition.host_ip}'"}

    def pg_ctl_start(self) -> None:
        assert self.partition is not None
        hba = self.data_dir / "pg_hba.conf"
        line = f"host all all {self.partition.subnet} trust\nhost replication all {self.partition.subnet} trust\n"
        if line not in hba.read_text():
            with hba.open("a") as handle:  # appended: the file keeps its owner (the server's user)
                handle.write(line)
        super().pg_ctl_start()

    def partitioned_dsn(self, dbname: str, **params: str | int) -> str:
        """A DSN that reaches this cluster through the pair (from inside the namespace)."""
        assert self.partition is not None
        extra = "".join(f" {k}={v}" for k, v in params.items())
        return f"host={self.partition.host_ip} port={self.port} user=postgres dbname={dbname}{extra}"


class Consumer:
    """``python -m pgchanges.cli ARGS`` inside the namespace; stdout and stderr lines collected by threads."""

    def __init__(self, partition: Partition, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            partition.command([sys.executable, "-m", "pgchanges.cli", *args]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tempfile.gettempdir(),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.stderr_at: list[float] = []  # time.time() when each stderr line arrived
        self._changed = threading.Condition()
        self._pumps = [
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))
        ]
        for pump in self._pumps:
            pump.start()

    def _pump(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            with self._changed:
                if sink is self.stderr:
                    self.stderr_at.append(time.time())
                sink.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def changes(self) -> list[dict[str, Any]]:
        with self._changed:
            lines = list(self.stdout)
        return [json.loads(line) for line in lines if line.startswith("{")]

    def await_(self, predicate: Callable[[], bool], what: Callable[[], str] | str, timeout: float) -> float:
        """Wait (bounded) until ``predicate()``, re-checked whenever a line arrives or each 0.2 s; the seconds
        it took. Fails with ``what`` and the last lines of stderr."""
        start = time.monotonic()
        deadline = start + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    detail = what() if callable(what) else what
                    raise AssertionError(
                        f"timed out after {timeout:.0f}s waiting for {detail}; exit status {self.proc.poll()}; "
                        f"stderr: {self.stderr[-8:]}"
                    )
                self._changed.wait(min(left, 0.2))
        return time.monotonic() - start

    def wait_stderr(self, needle: str, timeout: float) -> float:
        return self.await_(
            lambda: any(needle in line for line in self.stderr), f"{needle!r} on stderr", timeout=timeout
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pump in self._pumps:  # they end at the end of the output
            pump.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@dataclass
class RowWriter:
    """Inserts ``INSERT_SQL`` rows (ids 1, 2, …) from the host side, about ``rate`` a second, in a thread."""

    dsn: str
    statement: str = "INSERT INTO p (id) VALUES (%s)"
    rate: float = 100.0
    written: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    error: BaseException | None = None

    def start(self) -> RowWriter:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                n = 0
                while not self._stop.is_set():
                    n += 1
                    conn.execute(self.statement, (n,))
                    self.written.append(n)
                    self._stop.wait(1 / self.rate)  # load pacing, not synchronisation
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> list[int]:
        """Stop writing; the ids written."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            assert not self._thread.is_alive(), "the row writer did not stop"
        if self.error is not None:
            raise AssertionError(f"the row writer failed: {self.error!r}")
        return list(self.written)


@contextlib.contextmanager
def partitioned_cluster() -> Iterator[tuple[Partition, PartitionCluster]]:
    """A partition and a cluster reachable through it; both removed afterwards."""
    with Partition() as partition:
        cluster = PartitionCluster(partition=partition)
        with cluster:
            yield partition, cluster
