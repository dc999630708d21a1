"""The PostgreSQL versions pgchanges supports, and the check that install paths and connections make.

pgchanges needs **PostgreSQL 15 or newer**. What sets the floor:

* 15: the logical source creates its slot with an exported snapshot as ``CREATE_REPLICATION_SLOT ...
  LOGICAL pgoutput (SNAPSHOT 'export')`` (db/replication.py); the parenthesised option list is new in 15.
* 14: ``CREATE OR REPLACE TRIGGER`` (follow_table_v1 and set_outbox_triggers_v1 in the schema); pgoutput's
  ``proto_version '2'`` and its ``messages`` option (the logical source).
* 13: the ``xid8`` and ``pg_snapshot`` types with ``pg_current_xact_id``, ``pg_current_snapshot``,
  ``pg_snapshot_xmin`` and ``pg_visible_in_snapshot`` (the outbox cut, the polling source, every trigger's
  transaction id).

Everything older than that is older still (``EXECUTE FUNCTION`` in triggers: 11; ``CREATE SEQUENCE ... AS``:
10). The test suite runs on the system's PostgreSQL 15 and on the PostgreSQL 16 bundled in the ``pgserver``
wheel (tests/integration/test_server_versions.py); newer versions are allowed, with a warning that they are
untested.
"""

from __future__ import annotations

import logging
from typing import Protocol

from pgchanges.errors import ConfigError

log = logging.getLogger("pgchanges.db")

#: The oldest server pgchanges works with, in the form libpq reports (``server_version_num``: 15.0 = 150000).
MIN_SERVER_VERSION = 150000
#: The newest major version the test suite runs on; newer ones are allowed, with a warning.
MAX_TESTED_MAJOR = 16

_warned_majors: set[int] = set()


class ServerInfo(Protocol):
    @property
    def server_version(self) -> int: ...


class HasServerInfo(Protocol):
    """A psycopg connection (sync or async), or anything with ``.info.server_version``."""

    @property
    def info(self) -> ServerInfo: ...


def describe(version: int) -> str:
    """``150004`` -> ``"15.4"``; ``90624`` -> ``"9.6.24"`` (before 10 the second number was part of the major)."""
    if version >= 100000:
        return f"{version // 10000}.{version % 10000}"
    return f"{version // 10000}.{version // 100 % 100}.{version % 100}"


def major(version: int) -> int:
    return version // 10000


def check(version: int) -> None:
    """Raise :class:`ConfigError` if ``version`` (``server_version_num``) is older than pgchanges supports."""
    if version < MIN_SERVER_VERSION:
        raise ConfigError(
            f"PostgreSQL {describe(version)} is not supported: "
            f"pgchanges needs PostgreSQL {major(MIN_SERVER_VERSION)} or newer"
        )
    if major(version) > MAX_TESTED_MAJOR and major(version) not in _warned_majors:
        _warned_majors.add(major(version))
        log.warning(
            "PostgreSQL %s is newer than pgchanges has been tested with (%d); please report anything that fails",
            describe(version),
            MAX_TESTED_MAJOR,
        )


def require_supported(conn: HasServerInfo) -> int:
    """Check the server of ``conn``; returns its ``server_version_num``. No round trip: libpq has the number.

    A connection that reports no version (0: closed or broken) is not judged here; its next query fails.
    """
    version = int(conn.info.server_version)
    if version > 0:
        check(version)
    return version
