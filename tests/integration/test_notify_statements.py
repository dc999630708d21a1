"""The notify source's triggers since schema version 12 (statement triggers for INSERT and DELETE, the row
trigger for UPDATE): what row triggers alone gave, kept.

Each row of a statement is one notification, in the order of the transition tables, with its own event id; a
row sent to several channels has one id and one spill; an upsert signals its updates and its inserts; and a
table attached as a partition is signalled once, by its parent's row trigger.
"""

import json
import select
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgchanges
from pgchanges.names import TableName
from tests.conftest import take

pytestmark = pytest.mark.anyio


async def test_a_multi_row_update_signals_each_rows_old_and_new_values(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    db.execute("INSERT INTO t SELECT g, g FROM generate_series(1, 3000) g")
    async with pgchanges.stream(dsn, tables=["t"]) as changes:
        db.execute("UPDATE t SET v = v + 1 WHERE id = 1")
        db.execute("UPDATE t SET v = v + 1")
        got = await take(changes, 3001, timeout=60)
    assert all(c.op == "update" and c.new["id"] == c.old["id"] for c in got)
    assert all(c.new["v"] == c.old["v"] + 1 and c.changed == ("v",) for c in got)
    assert sorted(c.new["id"] for c in got[1:]) == list(range(1, 3001))
    assert len({c.id for c in got}) == 3001


async def test_an_upsert_signals_its_updates_and_inserts_and_an_empty_statement_nothing(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO t VALUES (1, 'old')")
    async with pgchanges.stream(dsn, tables=["t"]) as changes:
        db.execute("UPDATE t SET v = 'none' WHERE id > 100")  # no row: the statement triggers send nothing
        db.execute("DELETE FROM t WHERE id > 100")
        db.execute("INSERT INTO t VALUES (1, 'new'), (2, 'two') ON CONFLICT (id) DO UPDATE SET v = excluded.v")
        got = await take(changes, 2)
    # PostgreSQL fires an upsert's AFTER UPDATE statement triggers before its AFTER INSERT ones
    assert [(c.op, dict(c.new), c.old and dict(c.old)) for c in got] == [
        ("update", {"id": 1, "v": "new"}, {"id": 1, "v": "old"}),
        ("insert", {"id": 2, "v": "two"}, None),
    ]


async def test_a_row_for_two_channels_has_one_id_and_one_spill(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    channel = TableName("public", "t").channel
    async with pgchanges.stream(dsn, tables=["t"]):
        pass  # installs the capture
    db.execute(
        "INSERT INTO pgchanges.capture_rules (source, schema_like, table_like, channel) "
        "VALUES ('notify', 'public', 't%', 'second')"
    )
    db.execute("SELECT pgchanges.follow_table_v1('t'::regclass)")
    with psycopg.connect(dsn, autocommit=True) as listener:
        for name in (channel, "second"):
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
        db.execute("INSERT INTO t VALUES (1, 'short'), (2, %s)", ("x" * 9000,))
        payloads = _notifications(listener, 4)
    by_channel = {name: [json.loads(p) for c, p in payloads if c == name] for name in (channel, "second")}
    assert by_channel[channel] == by_channel["second"], "the same payloads, ids included, on both channels"
    short, spilled = by_channel[channel]
    assert short["n"] == {"id": 1, "v": "short"} and spilled["spill"] is True
    assert db.execute("SELECT id FROM pgchanges.spill").fetchall() == [(spilled["id"],)]


async def test_a_captured_table_attached_as_a_partition_is_signalled_once(dsn, db):
    db.execute("CREATE TABLE ledger (id int, at int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)")
    db.execute("CREATE TABLE ledger_2 (id int, at int, PRIMARY KEY (id, at))")
    async with pgchanges.stream(dsn, tables=["ledger", "ledger_2"]) as changes:
        db.execute("ALTER TABLE ledger ATTACH PARTITION ledger_2 FOR VALUES FROM (0) TO (100)")
        db.execute("SELECT pgchanges.follow_table_v1('ledger_2'::regclass)")  # what the DDL trigger does
        db.execute("INSERT INTO ledger_2 VALUES (1, 1)")
        db.execute("INSERT INTO ledger VALUES (2, 2)")
        db.execute("UPDATE ledger_2 SET at = 3 WHERE id = 1")
        db.execute("DELETE FROM ledger_2 WHERE id = 2")
        db.execute("INSERT INTO ledger_2 VALUES (9, 9)")  # a change after the others: none came twice
        got = await take(changes, 5)
    assert [(c.table, c.op, (c.new or c.old)["id"]) for c in got] == [
        ("ledger_2", "insert", 1), ("ledger_2", "insert", 2), ("ledger_2", "update", 1), ("ledger_2", "delete", 2),
        ("ledger_2", "insert", 9),
    ]  # fmt: skip
    own = db.execute(
        """SELECT count(*) FROM pg_trigger WHERE tgrelid = 'ledger_2'::regclass AND tgparentid = 0
           AND tgfoid IN ('pgchanges.notify_rows_v3()'::regprocedure, 'pgchanges.notify_row_v2()'::regprocedure)"""
    ).fetchone()
    assert own == (0,), "the clone of the parent's row trigger signals its rows, not triggers of its own"


def _notifications(conn: psycopg.Connection, wanted: int, timeout: float = 10.0) -> list[tuple[str, str]]:
    got: list[tuple[str, str]] = []
    while len(got) < wanted and select.select([conn.pgconn.socket], [], [], timeout)[0]:
        got += [(n.channel, n.payload) for n in conn.notifies(timeout=0.1, stop_after=wanted - len(got))]
    assert len(got) == wanted, f"{len(got)} of {wanted} notifications within {timeout}s"
    return got


async def test_nobody_but_the_trigger_stores_a_spilled_payload(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    async with pgchanges.stream(dsn, tables=["t"]):
        pass  # installs the capture
    role = f"spiller_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    db.execute(sql.SQL("GRANT USAGE ON SCHEMA pgchanges TO {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("GRANT INSERT ON t TO {}").format(sql.Identifier(role)))
    try:
        with psycopg.connect(make_conninfo(dsn, user=role), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="notify_spill_v3"):
                conn.execute("""SELECT pgchanges.notify_spill_v3('{"id": 99, "s": "public", "t": "t"}')""")
            conn.execute("INSERT INTO t VALUES (1, %s)", ("x" * 9000,))  # the trigger still spills for this role
        assert db.execute("SELECT count(*) FROM pgchanges.spill").fetchone() == (1,)
    finally:
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
