"""A throwaway local PostgreSQL cluster, for the demo and for the test suite.

It runs ``initdb`` and ``pg_ctl`` from, in order: ``$PGCHANGES_PG_BINDIR``, the ``initdb`` on ``PATH``
(``pg_config --bindir`` of the system install), or the binaries bundled in the ``pgserver`` wheel
(``pip install pgchanges[embedded]``). The cluster lives in a temporary directory, listens on 127.0.0.1 on a
free port and on a Unix socket in that directory, uses trust authentication, and is configured for logical
replication. PostgreSQL refuses to run as root; when we are root, the server runs as the ``postgres`` OS user
(created if missing) with the data directory handed to it, as pgserver does.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pgchanges.errors import ConfigError

DEFAULT_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "32",
    "max_wal_senders": "32",
    "max_connections": "200",
    "listen_addresses": "'127.0.0.1'",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "shared_buffers": "128MB",
    "max_wal_size": "1GB",
}
#: Settings that trade durability for speed; fine for tests and demos, never for data you keep.
FAST_UNSAFE_SETTINGS: dict[str, str] = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
RUN_AS_USER = "postgres"


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    configured = os.environ.get("PGCHANGES_PG_BINDIR")
    if configured:
        return Path(configured)
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    bundled = pgserver_bindir()
    if bundled:
        return bundled
    raise ConfigError(
        "no PostgreSQL binaries found: install PostgreSQL (initdb on PATH), "
        "`pip install pgchanges[embedded]`, or set PGCHANGES_PG_BINDIR"
    )


def pgserver_bindir() -> Path | None:
    """The binaries bundled in the ``pgserver`` wheel, if it is installed."""
    try:
        import pgserver  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
    except ImportError:
        return None
    path = Path(pgserver.__file__).parent / "pginstall" / "bin"
    return path if (path / "initdb").exists() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalCluster:
    """A PostgreSQL cluster in a temporary directory. Use as a context manager, or call start()/stop()."""

    bindir: Path = field(default_factory=find_bindir)
    settings: Mapping[str, str] = field(default_factory=dict)
    fast_unsafe: bool = True
    port: int = field(default_factory=free_port)
    base_dir: Path | None = None
    _tmp: Path | None = field(default=None, init=False, repr=False)

    @property
    def data_dir(self) -> Path:
        assert self._tmp is not None, "cluster not started"
        return self._tmp / "data"

    @property
    def socket_dir(self) -> Path:
        assert self._tmp is not None, "cluster not started"
        return self._tmp / "run"

    @property
    def version(self) -> int:
        out = subprocess.run([str(self.bindir / "postgres"), "--version"], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1].split(".")[0])

    def dsn(self, dbname: str = "postgres", user: str = RUN_AS_USER) -> str:
        return f"host=127.0.0.1 port={self.port} user={user} dbname={dbname}"

    def start(self) -> LocalCluster:
        self._tmp = Path(tempfile.mkdtemp(prefix="pgchanges-", dir=self.base_dir))
        self.socket_dir.mkdir()
        self._hand_over(self._tmp)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            RUN_AS_USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        conf = dict(DEFAULT_SETTINGS)
        if self.fast_unsafe:
            conf.update(FAST_UNSAFE_SETTINGS)
        conf.update(self.settings)
        conf["port"] = str(self.port)
        conf["unix_socket_directories"] = f"'{self.socket_dir}'"
        with (self.data_dir / "postgresql.conf").open("a") as handle:
            handle.write("\n# pgchanges embedded cluster\n")
            handle.writelines(f"{key} = {value}\n" for key, value in conf.items())
        self._hand_over(self._tmp)
        self.pg_ctl_start()
        return self

    @property
    def log_file(self) -> Path:
        assert self._tmp is not None, "cluster not started"
        return self._tmp / "server.log"

    def pg_ctl_start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60", "start")

    def pg_ctl_stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        """Stop and start the server (clients see their connections drop)."""
        self.pg_ctl_stop(mode)
        self.pg_ctl_start()

    def stop(self) -> None:
        if self._tmp is None:
            return
        with contextlib.suppress(subprocess.CalledProcessError):
            self.pg_ctl_stop("immediate")
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None

    def log_tail(self, lines: int = 40) -> str:
        if self._tmp is None or not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", RUN_AS_USER, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/")
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise ConfigError(f"{tool} failed ({result.returncode}): {' | '.join(detail)}\n{self.log_tail()}")

    @staticmethod
    def _hand_over(path: Path) -> None:
        if os.geteuid() != 0:
            return
        user = _ensure_run_as_user()
        for root, dirs, files in os.walk(path):
            for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
                os.chown(name, user.pw_uid, user.pw_gid)
        path.chmod(0o700)


def _ensure_run_as_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(RUN_AS_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", RUN_AS_USER], check=True)
        return pwd.getpwnam(RUN_AS_USER)
