"""Connections are opened with the liveness settings of pgchanges.db.connect, or with the DSN's own."""

from pgchanges.db.connect import LIVENESS, connect


def options(conn) -> dict[str, str]:
    return {o.keyword.decode(): (o.val or b"").decode() for o in conn.pgconn.info}


def test_a_connection_gets_keepalives_and_a_user_timeout(dsn):
    with connect(dsn) as conn:
        used = options(conn)
    assert {k: used[k] for k in LIVENESS} == LIVENESS


def test_the_dsn_wins(dsn):
    with connect(f"{dsn} tcp_user_timeout=2500 keepalives_idle=3") as conn:
        used = options(conn)
    assert used["tcp_user_timeout"] == "2500" and used["keepalives_idle"] == "3"
    assert used["keepalives_interval"] == LIVENESS["keepalives_interval"]
