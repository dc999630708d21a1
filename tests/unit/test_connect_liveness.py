"""The liveness settings every connection gets: filled in where the conninfo names nothing, never overriding."""

import pytest

from pgchanges.db.connect import CONNECT_TIMEOUT_SECONDS, LIVENESS, connection_defaults


def test_a_bare_conninfo_gets_keepalives_a_user_timeout_and_a_connect_timeout(monkeypatch):
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    assert connection_defaults("host=db.example port=5432") == {
        **LIVENESS,
        "connect_timeout": str(CONNECT_TIMEOUT_SECONDS),
    }
    assert LIVENESS["tcp_user_timeout"] == "15000"


@pytest.mark.parametrize(
    "conninfo",
    [
        "host=db keepalives_idle=1 tcp_user_timeout=0 connect_timeout=3",
        "postgresql://u@db/app?keepalives_idle=1&tcp_user_timeout=0&connect_timeout=3",
    ],
)
def test_values_in_the_dsn_are_kept(conninfo, monkeypatch):
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    defaults = connection_defaults(conninfo)
    assert not {"keepalives_idle", "tcp_user_timeout", "connect_timeout"} & set(defaults)
    assert defaults["keepalives_interval"] == LIVENESS["keepalives_interval"]


def test_keywords_and_pgconnect_timeout_are_kept(monkeypatch):
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "2")
    defaults = connection_defaults("host=db", {"keepalives": "0"})
    assert "connect_timeout" not in defaults and "keepalives" not in defaults


def test_a_malformed_conninfo_is_left_to_the_connection_to_report(monkeypatch):
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    assert connection_defaults("not a conninfo ===")["tcp_user_timeout"] == LIVENESS["tcp_user_timeout"]
