"""The pgchanges checkouts a run measures: where to import each from, what it is, and its compiled parts.

Consumers import pgchanges from a checkout's ``src/`` (``PYTHONPATH``), so any revision can be measured
without installing it. A checkout with C sources (``src/pgchanges/*.c``, built in place by the editable
install) must have them built, or pgchanges runs its pure-Python twins and the figures are not the ones users
get. A checkout other than this repository (an older or newer worktree) that lacks them gets them built: a
wheel of it is built with pip (in its isolated build environment, with the build backend its pyproject asks
for) and the compiled modules are put beside their sources, where an editable install would put them. This
repository's own modules are never rebuilt here: the editable install is the lead's, so a missing or stale
one is reported instead.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPILED = (".so", ".pyd")


def source_dir(path: Path) -> Path:
    """The directory to put on PYTHONPATH for the checkout at ``path`` (the checkout, or its src/)."""
    for candidate in (path / "src", path):
        if (candidate / "pgchanges" / "__init__.py").is_file():
            return candidate.resolve()
    raise SystemExit(f"no pgchanges package in {path} or {path / 'src'}")


def describe(src: Path) -> str:
    """``<version> (commit abc1234[, with uncommitted changes])`` of the checkout holding ``src``."""
    version_file = src / "pgchanges" / "_version.py"
    text = version_file.read_text() if version_file.exists() else ""
    version = m.group(1) if (m := re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text)) else "?"
    git = ["git", "-C", str(src)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    status = [*git, "status", "--porcelain", "--untracked-files=no", "--", "."]
    dirty = subprocess.run(status, capture_output=True, text=True, check=False).stdout.strip()
    if not commit.stdout.strip():
        return f"{version} (not a git checkout)"
    return f"{version} (commit {commit.stdout.strip()}{', with uncommitted changes' if dirty else ''})"


def unbuilt(src: Path) -> list[str]:
    """The C sources of ``src/pgchanges`` whose compiled module is missing or older than the source."""
    out = []
    for c_file in sorted((src / "pgchanges").rglob("*.c")):
        built = [p for p in c_file.parent.glob(f"{c_file.stem}.*") if p.suffix in COMPILED]
        if not built or max(p.stat().st_mtime for p in built) < c_file.stat().st_mtime:
            out.append(str(c_file.relative_to(src)))
    return out


def ensure_built(src: Path, log: Callable[[str], None] = print) -> list[str]:
    """Build the compiled modules of a checkout other than this repository; returns what is still unbuilt."""
    missing = unbuilt(src)
    if not missing or src == (REPO / "src").resolve() or not (src.parent / "pyproject.toml").exists():
        return missing
    log(f"building {', '.join(missing)} of {src.parent} (pip wheel)")
    with tempfile.TemporaryDirectory() as wheels:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, str(src.parent)]
        subprocess.run(cmd, check=True, capture_output=True)
        for wheel in Path(wheels).glob("pgchanges-*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.namelist():
                    if member.startswith("pgchanges/") and member.endswith(COMPILED):
                        archive.extract(member, src)
    return unbuilt(src)
