"""A throwaway local PostgreSQL cluster, for the demo and for the test suite.

It runs ``initdb`` and ``pg_ctl`` from, in order: ``$PGCHANGES_PG_BINDIR``, the ``initdb`` on ``PATH``
(``pg_config --bindir`` of the system install), or the binaries bundled in the ``pgserver`` wheel
(``pip install pgchanges[embedded]``). The cluster lives in a temporary directory, listens on 127.0.0.1 on a
free port and on a Unix socket in that directory, uses trust authentication, and is configured for logical
replication. PostgreSQL refuses to run as root; when we are root, the server runs as the ``postgres`` OS user
(created if missing) with the data directory handed to it, as pgserver does.

That user must be able to run the binaries, which it cannot when a directory above them is closed to it (a
checkout or a virtualenv in root's 0700 home). Then the installation (``bin``, ``lib`` and ``share``, and the
``pgserver.libs`` beside pgserver's package) is copied once into the system's temporary directory, as
``pgchanges-pginstall-<digest of its path and binaries>``, and the server runs from that copy
(:attr:`LocalCluster.server_bindir`). When that cannot work either, starting raises a ConfigError that says
which directory is closed and what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import socket
import stat
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


def runnable_bindir(bindir: Path) -> Path:
    """``bindir``, or a copy of its installation that the ``postgres`` user can run (when we are root).

    Raises :class:`ConfigError`, saying what to do, when neither is possible.
    """
    if os.geteuid() != 0:
        return bindir
    _ensure_run_as_user()
    resolved = bindir.resolve()
    for candidate in dict.fromkeys([bindir, resolved]):  # through a symbolic link the way may be open
        if _runs_as_postgres(candidate):
            return candidate
    prefix = resolved.parent
    if not any((prefix / "share" / sub / "postgres.bki").is_file() for sub in ("postgresql", "")):
        raise _not_runnable(bindir, f", and {prefix} is no PostgreSQL installation to copy (bin, lib, share)")
    copy = _cached_copy(prefix)
    if not _runs_as_postgres(copy):
        raise _not_runnable(bindir, f", nor their copy in {copy}")
    return copy


def _runs_as_postgres(bindir: Path) -> bool:
    """Whether the ``postgres`` user can start the tools we run (each loads its own shared libraries)."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        probe = ["runuser", "-u", RUN_AS_USER, "--", str(bindir / tool), "--version"]
        if subprocess.run(probe, capture_output=True, check=False, cwd="/").returncode != 0:
            return False
    return True


def _not_runnable(bindir: Path, why: str) -> ConfigError:
    closed = _closed_directory(bindir)
    where = f" ({closed} is closed to it)" if closed else ""
    return ConfigError(
        f"PostgreSQL refuses to run as root, and the {RUN_AS_USER!r} user cannot run the binaries in {bindir}{where}"
        f"{why}: let it in (`chmod o+x` on each directory above them, or `chmod -R o+rX` on the installation), or "
        f"copy the installation where it can read it and set PGCHANGES_PG_BINDIR to the copy's bin directory"
    )


def _closed_directory(bindir: Path) -> Path | None:
    """The first directory on the way to ``bindir`` that the ``postgres`` user may not enter (by its mode)."""
    user = pwd.getpwnam(RUN_AS_USER)
    groups = set(os.getgrouplist(RUN_AS_USER, user.pw_gid))
    for directory in [*reversed(bindir.absolute().parents), bindir.absolute()]:
        try:
            info = directory.stat()
        except OSError:
            return directory
        if info.st_uid == user.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return directory
    return None


def _installation(prefix: Path) -> tuple[Path, list[Path]]:
    """What to copy of the installation at ``prefix``: a root, and the parts under it that keep their places.

    The parts are ``bin``, ``lib`` and ``share``, and the shared libraries a repaired wheel keeps beside its
    package (pgserver's binaries load ``pgserver.libs/libpq-….so`` through ``$ORIGIN/../../../pgserver.libs``).
    """
    parts = [prefix / part for part in ("bin", "lib", "share") if (prefix / part).is_dir()]
    for package in (prefix, prefix.parent):
        vendored = package.with_name(f"{package.name}.libs")
        if package.name and vendored.is_dir():
            return package.parent, [part.relative_to(package.parent) for part in [*parts, vendored]]
    return prefix, [part.relative_to(prefix) for part in parts]


def _cached_copy(prefix: Path) -> Path:
    """The ``bin`` directory of a copy of the installation at ``prefix`` in the temporary directory, readable
    by everyone, made once.

    The copy is made under a private temporary name and renamed into place when complete, so a copy found
    under the final name is whole (and another process making the same copy at the same moment is harmless).
    A copy is used only if it is a real directory owned by us that no one else may write to.
    """
    root, parts = _installation(prefix)
    postgres = (prefix / "bin" / "postgres").stat()
    key = f"{prefix}\0{postgres.st_size}\0{postgres.st_mtime_ns}\0{postgres.st_ino}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    final = Path(tempfile.gettempdir()) / f"pgchanges-pginstall-{digest}"
    if os.path.lexists(final) and not _is_ours(final):
        raise ConfigError(f"{final} is not a directory of ours that only we may write to: remove it and retry")
    if not _is_ours(final):
        staging = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=final.parent))
        try:
            for part in parts:
                shutil.copytree(root / part, staging / part, symlinks=True)
            _open_to_all(staging)
            staging.rename(final)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if not _is_ours(final):  # else another process put the same copy in place first
                raise ConfigError(
                    f"copying the PostgreSQL installation {prefix} to {final} failed ({exc}), "
                    f"which the {RUN_AS_USER!r} user needs to run it: let it into {prefix} "
                    f"(`chmod o+x` on each directory above it), or set PGCHANGES_PG_BINDIR to a copy it can read"
                ) from exc
    return final / prefix.relative_to(root) / "bin"


def _is_ours(path: Path) -> bool:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022


def _open_to_all(root: Path) -> None:
    """Let everyone read ``root``'s tree and run what its owner may run; only the owner writes."""
    for directory, _, files in os.walk(root):
        os.chmod(directory, 0o755)  # noqa: S103 - the point: the postgres user must enter it
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                executable = os.lstat(path).st_mode & stat.S_IXUSR
                os.chmod(path, 0o755 if executable else 0o644)


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
    _server_bindir: Path | None = field(default=None, init=False, repr=False)

    @property
    def server_bindir(self) -> Path:
        """Where the server's binaries run from once started: ``bindir``, or a copy the ``postgres`` user can run."""
        return self._server_bindir or self.bindir

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
        self._server_bindir = runnable_bindir(self.bindir)  # first: a ConfigError here leaves nothing behind
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
        cmd = [str(self.server_bindir / tool), *args]
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
