"""The notify source end to end: big payloads, big transactions, odd names, truncate, reconnects."""

import anyio
import psycopg
import pytest

import pgchanges
from pgchanges.embedded import LocalCluster
from tests.conftest import take

pytestmark = pytest.mark.anyio


async def test_one_megabyte_value_arrives_whole(dsn, db):
    db.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    body = "é" * 500_000  # 1,000,000 bytes in UTF-8
    async with pgchanges.stream(dsn, tables=["docs"]) as changes:
        db.execute("INSERT INTO docs VALUES (1, %s)", (body,))
        db.execute("UPDATE docs SET body = body || '!' WHERE id = 1")
        insert, update = await take(changes, 2)
    assert insert.new["body"] == body
    assert update.old["body"] == body and update.new["body"] == body + "!"
    assert update.changed == ("body",)


async def test_payload_just_over_the_limit_does_not_fail_the_writer(dsn, db):
    db.execute("CREATE TABLE t (id int, v text)")
    async with pgchanges.stream(dsn, tables=["t"]) as changes:
        for size in (7_900, 7_990, 8_000, 8_100):
            db.execute("INSERT INTO t VALUES (%s, %s)", (size, "x" * size))
        got = await take(changes, 4)
    assert [len(c.new["v"]) for c in got] == [7_900, 7_990, 8_000, 8_100]


async def test_ten_thousand_rows_in_one_transaction_arrive_in_order(dsn, db):
    db.execute("CREATE TABLE bulk (id int PRIMARY KEY, v text)")
    async with pgchanges.stream(dsn, tables=["bulk"]) as changes:
        db.execute("INSERT INTO bulk SELECT g, 'row ' || g FROM generate_series(1, 10000) g")
        got = await take(changes, 10_000, timeout=60)
    assert [c.new["id"] for c in got] == list(range(1, 10_001))
    assert len({c.xid for c in got}) == 1
    assert len({c.id for c in got}) == 10_000


async def test_odd_identifiers(dsn, db):
    db.execute('CREATE SCHEMA "Sales Ünï"')
    db.execute('CREATE TABLE "Sales Ünï"."Order ""Items""" ("Id" int, "naïve column" text, "select" int)')
    table = '"Sales Ünï"."Order ""Items"""'
    async with pgchanges.stream(dsn, tables=[table]) as changes:
        db.execute('INSERT INTO "Sales Ünï"."Order ""Items""" VALUES (1, %s, 2)', ("ü",))
        [change] = await take(changes, 1)
    assert (change.schema, change.table) == ("Sales Ünï", 'Order "Items"')
    assert change.new == {"Id": 1, "naïve column": "ü", "select": 2}


async def test_very_long_names_do_not_collide(dsn, db):
    a, b = "t" * 62 + "a", "t" * 62 + "b"
    db.execute(f"CREATE TABLE {a} (id int); CREATE TABLE {b} (id int)")
    async with pgchanges.stream(dsn, tables=[a]) as changes:
        db.execute(f"INSERT INTO {b} VALUES (2)")
        db.execute(f"INSERT INTO {a} VALUES (1)")
        [change] = await take(changes, 1)
    assert change.table == a and change.new == {"id": 1}


async def test_truncate_and_ops_filter(dsn, db):
    db.execute("CREATE TABLE t (id int)")
    async with pgchanges.stream(dsn, tables=["t"], ops=["delete", "truncate"]) as changes:
        db.execute("INSERT INTO t VALUES (1), (2)")
        db.execute("DELETE FROM t WHERE id = 1")
        db.execute("TRUNCATE t")
        got = await take(changes, 2)
    assert [c.op for c in got] == ["delete", "truncate"]
    assert got[1].new is None and got[1].old is None and got[1].table == "t"


async def test_column_added_shows_up_in_the_next_change(dsn, db):
    db.execute("CREATE TABLE t (id int)")
    async with pgchanges.stream(dsn, tables=["t"]) as changes:
        db.execute("INSERT INTO t VALUES (1)")
        db.execute("ALTER TABLE t ADD COLUMN amount numeric DEFAULT 1.50")
        db.execute("INSERT INTO t VALUES (2, 2.25)")
        first, second = await take(changes, 2)
    assert first.new == {"id": 1}
    assert second.new == {"id": 2, "amount": __import__("decimal").Decimal("2.25")}


async def test_not_installed_without_auto_install_is_a_clear_error(dsn, db):
    db.execute("CREATE TABLE t (id int)")
    with pytest.raises(pgchanges.NotInstalled, match=r"pgchanges install public\.t"):
        async with pgchanges.stream(dsn, tables=["t"], auto_install=False):
            pass


async def test_reconnects_after_backend_is_terminated_and_reports_a_gap(dsn, db):
    db.execute("CREATE TABLE t (id int)")
    async with pgchanges.stream(dsn, tables=["t"]) as changes:
        db.execute("INSERT INTO t VALUES (1)")
        [before] = await take(changes, 1)
        pid = changes.source.listener_pid
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))
        [gap] = await take(changes, 1)
        assert gap.op == "gap" and "lost" in gap.extra["reason"]
        assert changes.source.listener_pid != pid
        db.execute("INSERT INTO t VALUES (2)")  # LISTEN is back before the gap is reported
        [after] = await take(changes, 1)
    assert (before.new["id"], after.new["id"]) == (1, 2)
    assert changes.source.reconnects == 1


async def test_reconnects_after_server_restart(tmp_path):
    with LocalCluster() as own:
        with psycopg.connect(own.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int)")
        async with pgchanges.stream(own.dsn(), tables=["t"]) as changes:
            await anyio.to_thread.run_sync(own.restart)
            [gap] = await take(changes, 1, timeout=30)
            assert gap.op == "gap"
            with psycopg.connect(own.dsn(), autocommit=True) as conn:
                conn.execute("INSERT INTO t VALUES (7)")
            [after] = await take(changes, 1)
    assert after.new == {"id": 7}
