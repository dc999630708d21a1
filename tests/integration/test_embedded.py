"""The embedded cluster as root, with binaries the ``postgres`` user cannot reach (a checkout or virtualenv in
root's 0700 home): the server runs from a copy of the installation that it can read."""

import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

import psycopg
import pytest

from pgchanges.embedded import LocalCluster, pgserver_bindir, runnable_bindir
from pgchanges.errors import ConfigError

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or pgserver_bindir() is None,
    reason="needs root (the server then runs as the postgres user) and pgserver's binaries",
)


def _link_or_copy(source, target):
    try:
        os.link(source, target)  # same file system: no need to copy 30 MB
    except OSError:
        shutil.copy2(source, target)


@pytest.fixture
def closed(tmp_path):
    """A directory only root may enter, like root's home."""
    path = tmp_path / "home"
    path.mkdir()
    path.chmod(0o700)
    return path


@pytest.fixture
def private_install(closed):
    """pgserver installed in a virtualenv under the closed directory: its package with the PostgreSQL
    installation, and the shared libraries its binaries load from beside it (``pgserver.libs``)."""
    bundled = pgserver_bindir()
    assert bundled is not None
    package = bundled.parent.parent
    site = closed / "venv" / "site-packages"
    for part in (package, package.with_name("pgserver.libs")):
        shutil.copytree(part, site / part.name, symlinks=True, copy_function=_link_or_copy)
    return site / package.name / bundled.parent.name / "bin"


def made_copy(server_bindir):
    """The directory in the temporary directory that holds the copy ``server_bindir`` is in."""
    [copy] = [path for path in server_bindir.parents if path.parent == Path(tempfile.gettempdir())]
    assert copy.name.startswith("pgchanges-pginstall-"), copy
    return copy


def test_root_runs_binaries_the_postgres_user_cannot_reach(private_install, monkeypatch):
    monkeypatch.setenv("PGCHANGES_PG_BINDIR", str(private_install))
    cluster = LocalCluster()
    try:
        with cluster:
            assert cluster.bindir == private_install
            assert cluster.server_bindir != private_install
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                assert conn.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone()[0] == 16
        info = made_copy(cluster.server_bindir).stat()
        assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o755  # the postgres user reads, root writes
        assert runnable_bindir(private_install) == cluster.server_bindir, "the copy is made once, then reused"
    finally:
        if cluster.server_bindir != private_install:
            shutil.rmtree(made_copy(cluster.server_bindir))  # keyed by this test's path: no one else uses it


def test_binaries_that_cannot_be_copied_are_a_clear_error(closed):
    bundled = pgserver_bindir()
    assert bundled is not None
    lone = closed / "lone" / "bin"  # a bin directory without the lib and share of an installation
    lone.mkdir(parents=True)
    _link_or_copy(bundled / "postgres", lone / "postgres")
    with pytest.raises(ConfigError) as caught:
        LocalCluster(bindir=lone).start()
    message = str(caught.value)
    named = re.search(r"\((/.*) is closed to it\)", message)
    assert named and Path(named[1]) in [closed, *closed.parents], message
    assert not Path(named[1]).stat().st_mode & stat.S_IXOTH
    assert "is no PostgreSQL installation to copy" in message
    assert "chmod o+x" in message and "PGCHANGES_PG_BINDIR" in message
