"""The supported PostgreSQL versions are checked from the number libpq reports, without a query."""

import logging
from types import SimpleNamespace

import pytest

from pgchanges.capture import migrations
from pgchanges.db import server_version
from pgchanges.errors import ConfigError


def connection(version):
    """What the check reads of a psycopg connection: ``.info.server_version`` (server_version_num)."""
    return SimpleNamespace(info=SimpleNamespace(server_version=version))


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(server_version, "_warned_majors", set())


@pytest.mark.parametrize(
    ("version", "text"),
    [(120005, "12.5"), (140010, "14.10"), (130000, "13.0"), (90624, "9.6.24"), (100023, "10.23")],
)
def test_an_older_server_is_refused_with_its_version_and_the_minimum(version, text):
    with pytest.raises(ConfigError) as info:
        server_version.require_supported(connection(version))
    assert str(info.value) == f"PostgreSQL {text} is not supported: pgchanges needs PostgreSQL 15 or newer"


@pytest.mark.parametrize("version", [150000, 150014, 160000, 160010])
def test_supported_servers_pass_and_the_number_is_returned(version, caplog):
    with caplog.at_level(logging.WARNING, logger="pgchanges.db"):
        assert server_version.require_supported(connection(version)) == version
    assert caplog.records == []


def test_the_boundary_is_the_first_release_of_the_minimum_major():
    assert server_version.MIN_SERVER_VERSION == 150000
    server_version.require_supported(connection(150000))
    with pytest.raises(ConfigError):
        server_version.require_supported(connection(149999))


def test_a_server_newer_than_tested_is_allowed_with_one_warning_per_major(caplog):
    newer = (server_version.MAX_TESTED_MAJOR + 1) * 10000 + 2
    with caplog.at_level(logging.WARNING, logger="pgchanges.db"):
        for _ in range(3):
            assert server_version.require_supported(connection(newer)) == newer
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert f"PostgreSQL {server_version.MAX_TESTED_MAJOR + 1}.2 is newer than pgchanges has been tested with" in message


def test_a_connection_without_a_version_is_left_to_fail_on_its_own():
    assert server_version.require_supported(connection(0)) == 0


def test_describe():
    assert [server_version.describe(v) for v in (150004, 160000, 90624, 100001)] == ["15.4", "16.0", "9.6.24", "10.1"]


class Untouchable:
    """A connection to an old server that fails the test if migrate sends it anything."""

    info = SimpleNamespace(server_version=130011)

    def __getattr__(self, name):
        raise AssertionError(f"migrate used conn.{name} before checking the server version")


def test_migrate_checks_the_server_before_touching_the_database():
    with pytest.raises(ConfigError, match=r"PostgreSQL 13\.11 is not supported"):
        migrations.migrate(Untouchable())
