"""What a chaos session stands on: a partition, a durable cluster that listens on it, and a NATS server on the
host end of the pair (for forwarding). Shared by ``python -m bench.chaos`` and the CI version of the suite."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.brokers import NATS_BIN, NatsServer, running
from tests.partition import Partition, PartitionCluster

REPO = Path(__file__).resolve().parents[2]

#: fsync and synchronous commit on: an immediate restart must not lose commits that a consumer already saw
#: (with synchronous_commit off it may, and the history would show deliveries the ledger does not hold).
DURABLE = {"fast_unsafe": False, "settings": {"max_connections": "100", "wal_sender_timeout": "60s"}}


class HostNats(NatsServer):
    """A private NATS server with JetStream on the host end of the pair, so the consumer in the namespace
    reaches it (and a partition cuts that connection too)."""

    def __init__(self, directory: Path, host: str) -> None:
        super().__init__(directory)
        self.host = host

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def command(self) -> list[str]:
        config = self.directory / "nats.conf"
        js = f'jetstream {{ store_dir: "{self.directory / "js"}" }}'
        config.write_text(f"port: {self.port}\nhost: {self.host}\n{js}\n")
        return [str(NATS_BIN), "-c", str(config)]


@contextlib.contextmanager
def chaos_world(with_nats: bool) -> Iterator[tuple[Partition, PartitionCluster, str]]:
    """(partition, cluster, NATS URL or "") for a session; all removed afterwards."""
    with Partition() as partition, PartitionCluster(partition=partition, **DURABLE) as cluster:
        assert isinstance(cluster, PartitionCluster)
        if not with_nats:
            yield partition, cluster, ""
            return
        directory = Path(cluster.data_dir).parent / "nats"
        directory.mkdir(exist_ok=True)
        with running(HostNats(directory, partition.host_ip)) as nats:
            yield partition, cluster, nats.url


@contextlib.contextmanager
def frozen_source(tree: str) -> Iterator[tuple[Path, str]]:
    """A copy of the ``pgchanges`` package for the consumer processes, and what it is a copy of: ``head`` is
    the last commit (``git archive``, read-only), ``worktree`` the files as they are now. Consumers are started
    again and again during a session; with a copy, all of them run the same code even while the working
    tree changes (other people edit it), and the results say which code that was."""
    with tempfile.TemporaryDirectory(prefix="pgchanges-chaos-src-") as directory:
        target = Path(directory)
        if tree == "head":
            commit = _git("rev-parse", "HEAD")
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", "--format=tar", commit, "src/pgchanges"],
                capture_output=True,
                check=True,
            )
            with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
                tar.extractall(target, filter="data")
            label = f"commit {commit[:12]}"
        else:
            shutil.copytree(REPO / "src" / "pgchanges", target / "src" / "pgchanges", ignore=_pycache)
            label = f"working tree on commit {_git('rev-parse', 'HEAD')[:12]}"
        yield target / "src", label


def _pycache(_: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__"]


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()
