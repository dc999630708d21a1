"""Installs the peer tools into a cache directory outside the project, never as dependencies of pgchanges.

Node packages go to ``<dir>/node`` (``npm install --prefix``), Python packages to ``<dir>/python``
(``pip install --target``, put on the peers' ``PYTHONPATH`` only). The directory is
``$PGCHANGES_PEERS_DIR`` or ``/tmp/pgchanges-peers``; an install whose pinned versions are already there is
skipped, so the cost is paid once per machine. wal2json is a server plugin: it comes from the distribution's
package (``postgresql-15-wal2json``), installed with apt-get when we are root and it is missing.

Versions are pinned to the ones ``../shared/peers/RESULTS.md`` measured, so runs compare like with like.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

NODE_PACKAGES = {"postgres": "3.4.9", "pg-listen": "1.7.0", "pg": "8.23.1"}
PYTHON_PACKAGES = {"asyncpg": "0.32.0", "psycopg2-binary": "2.9.13", "py-spy": "0.4.3"}  # py-spy: --only profile
WAL2JSON_DEB = "postgresql-{major}-wal2json"
CLIENTS = Path(__file__).parent / "clients"


@dataclass(frozen=True)
class Peers:
    """Where the installed peers are, and what could not be installed (tool -> why)."""

    root: Path
    missing: dict[str, str]

    @property
    def node_dir(self) -> Path:
        return self.root / "node"

    @property
    def python_dir(self) -> Path:
        return self.root / "python"

    @property
    def floor(self) -> Path:
        return self.root / "pgfloor"

    @property
    def py_spy(self) -> Path:
        return self.python_dir / "bin" / "py-spy"

    def node_version(self, package: str) -> str:
        try:
            meta = json.loads((self.node_dir / "node_modules" / package / "package.json").read_text())
        except OSError:
            return "not installed"
        return str(meta["version"])


def default_dir() -> Path:
    return Path(os.environ.get("PGCHANGES_PEERS_DIR", "/tmp/pgchanges-peers"))


def install_peers(root: Path, pg_libdir: Path, pg_major: int) -> Peers:
    """Install what is missing under ``root``; a tool that cannot be had is recorded, not fatal."""
    root.mkdir(parents=True, exist_ok=True)
    missing: dict[str, str] = {}
    peers = Peers(root, missing)
    if err := _install_node(peers):
        missing["node"] = err
    missing.update(_install_python(peers))
    if err := _install_wal2json(pg_libdir, pg_major):
        missing["wal2json"] = err
    if err := _build_floor(peers):
        missing["pgfloor"] = err
    # node resolves packages from the script's own folder: the client scripts run from the install
    for script in [*CLIENTS.glob("*.mjs"), *CLIENTS.glob("*.cjs")]:
        if peers.node_dir.is_dir():
            shutil.copy(script, peers.node_dir / script.name)
    return peers


def _install_node(peers: Peers) -> str | None:
    if shutil.which("npm") is None or shutil.which("node") is None:
        return "node or npm not on PATH"
    if all(peers.node_version(p) == v for p, v in NODE_PACKAGES.items()):
        return None
    peers.node_dir.mkdir(exist_ok=True)
    specs = [f"{p}@{v}" for p, v in NODE_PACKAGES.items()]
    cmd = ["npm", "install", "--prefix", str(peers.node_dir), "--no-audit", "--no-fund", "--silent", *specs]
    return _run(cmd, "npm install")


def _install_python(peers: Peers) -> dict[str, str]:
    """Each pinned package with its own pip call (one that fails leaves the others); package -> why not."""
    stamp = peers.python_dir / "pgchanges-peers.json"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    done: dict[str, str] = json.loads(stamp.read_text()) if stamp.exists() else {}
    if done.get("python") != python:
        done = {"python": python}
    failed = {}
    for package, version in PYTHON_PACKAGES.items():
        if done.get(package) == version:
            continue
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--target", str(peers.python_dir)]
        if err := _run([*cmd, f"{package}=={version}"], f"pip install {package}"):
            failed[package] = err
        else:
            done[package] = version
    peers.python_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(done))
    return failed


def _build_floor(peers: Peers) -> str | None:
    """Compile ``clients/pgfloor.c`` (the server's ceiling for one reader) against libpq, when it changed."""
    source = CLIENTS / "pgfloor.c"
    if peers.floor.exists() and peers.floor.stat().st_mtime >= source.stat().st_mtime:
        return None
    if shutil.which("gcc") is None or shutil.which("pg_config") is None:
        return "gcc or pg_config (libpq-dev) not on PATH"
    include = subprocess.run(["pg_config", "--includedir"], capture_output=True, text=True, check=False).stdout.strip()
    return _run(["gcc", "-O2", "-o", str(peers.floor), str(source), f"-I{include}", "-lpq"], "gcc pgfloor.c")


def _install_wal2json(pg_libdir: Path, pg_major: int) -> str | None:
    if (pg_libdir / "wal2json.so").exists():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"wal2json.so not in {pg_libdir} (install {WAL2JSON_DEB.format(major=pg_major)})"
    package = WAL2JSON_DEB.format(major=pg_major)
    if _run(["apt-get", "install", "-y", "-qq", package], "apt-get install"):
        _run(["apt-get", "update", "-qq"], "apt-get update")
        if err := _run(["apt-get", "install", "-y", "-qq", package], "apt-get install"):
            return err
    return None if (pg_libdir / "wal2json.so").exists() else f"{package} installed no wal2json.so in {pg_libdir}"


def _run(cmd: list[str], what: str) -> str | None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return None
    tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
    return f"{what} failed ({result.returncode}): {tail}"
