"""Capture that follows the schema: pattern subscriptions, tables created, renamed and recreated later."""

from typing import Any

import anyio
import psycopg
import pytest

import pgchanges
from pgchanges.capture import ddl, install
from pgchanges.names import TableName
from tests.conftest import take, wait_until
from tests.schema_catalog import NOTIFY_TRIGGERS


def triggers_on(db: psycopg.Connection[Any], table: str) -> list[str]:
    rows = db.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal ORDER BY 1", (table,)
    ).fetchall()
    return [r[0] for r in rows]


def published(db: psycopg.Connection[Any]) -> set[str]:
    rows = db.execute("SELECT schemaname || '.' || tablename FROM pg_publication_tables").fetchall()
    return {r[0] for r in rows}


@pytest.mark.anyio
async def test_pattern_subscription_captures_a_table_from_its_creating_transaction(dsn, db):
    ddl.install_ddl(db)
    db.execute("CREATE SCHEMA sales")
    app = pgchanges.App(dsn)
    seen: list[pgchanges.Change] = []
    app.on("sales.order_*")(seen.append)
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        with db.transaction():  # the row is written in the same transaction that creates the table
            db.execute("CREATE TABLE sales.order_items (id int PRIMARY KEY, sku text)")
            db.execute("INSERT INTO sales.order_items VALUES (1, 'a')")
        db.execute("CREATE TABLE sales.customers (id int PRIMARY KEY)")  # does not match the pattern
        db.execute("INSERT INTO sales.customers VALUES (7)")
        db.execute("INSERT INTO sales.order_items VALUES (2, 'b')")
        await wait_until(lambda: len(seen) >= 2, "both order_items inserts")
        app.stop()
    assert [(c.table, c.new["id"]) for c in seen] == [("order_items", 1), ("order_items", 2)]
    assert triggers_on(db, "sales.customers") == []


@pytest.mark.anyio
async def test_without_the_event_trigger_the_app_follows_on_a_timer(dsn, db):
    db.execute("CREATE TABLE first_t (id int PRIMARY KEY)")
    app = pgchanges.App(dsn, follow_interval=0.1)
    seen: list[pgchanges.Change] = []
    app.on("public.*")(seen.append)
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("CREATE TABLE later_t (id int PRIMARY KEY, note text)")
        with anyio.fail_after(10):
            while "pgchanges_notify_insert" not in triggers_on(db, "later_t"):
                await anyio.sleep(0.05)
        db.execute("INSERT INTO later_t VALUES (1, 'picked up')")
        db.execute("INSERT INTO first_t VALUES (2)")
        await wait_until(lambda: len(seen) >= 2, "inserts into both tables")
        app.stop()
    assert {(c.table, c.new["id"]) for c in seen} == {("later_t", 1), ("first_t", 2)}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("anyio_backend", "source"),
    [("asyncio", "notify"), ("asyncio", "outbox"), ("asyncio", "logical"), ("trio", "logical")],
)
async def test_renamed_and_recreated_tables_keep_capture_right(dsn, db, source):
    ddl.install_ddl(db)
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    options: dict[str, Any] = {"consumer": "follow"} if source == "outbox" else {}
    tables = ["public.orders", "public.audit_*"]
    async with pgchanges.stream(dsn, tables=tables, source=source, **options) as changes:
        db.execute("INSERT INTO orders VALUES (1)")
        db.execute("ALTER TABLE orders RENAME TO orders_old")
        db.execute("INSERT INTO orders_old VALUES (2)")  # no longer named orders: not captured
        db.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")  # recreated: captured again
        db.execute("INSERT INTO orders VALUES (3, 'recreated')")
        db.execute("CREATE TABLE audit_log (id int PRIMARY KEY)")  # created later, matches the pattern
        db.execute("INSERT INTO audit_log VALUES (4)")
        got = await take(changes, 3)
        await changes.ack(*got)
    got.sort(key=lambda c: c.new["id"])  # the outbox orders changes per row only
    assert [(c.table, c.new["id"]) for c in got] == [("orders", 1), ("orders", 3), ("audit_log", 4)]
    assert got[1].new["note"] == "recreated"
    if source == "logical":
        assert "public.orders_old" not in published(db) and {"public.orders", "public.audit_log"} <= published(db)
    else:
        assert triggers_on(db, "orders_old") == []
        assert triggers_on(db, "orders") and triggers_on(db, "audit_log")


def test_uninstalling_a_pattern_removes_the_capture_it_made(db):
    db.execute("CREATE TABLE ev_a (id int PRIMARY KEY); CREATE TABLE ev_b (id int PRIMARY KEY)")
    db.execute("CREATE TABLE other (id int PRIMARY KEY)")
    exact = TableName("public", "ev_b")
    added = install.install(db, [TableName("public", "ev_*"), exact])
    assert sorted(added) == [TableName("public", "ev_a"), exact]
    assert triggers_on(db, "other") == []
    assert install.uninstall(db, [TableName("public", "ev_*")]) == [TableName("public", "ev_a")]
    assert triggers_on(db, "ev_a") == [] and triggers_on(db, "ev_b")  # still captured by its exact rule
    assert install.uninstall(db, [exact]) == [exact]
    assert db.execute("SELECT to_regnamespace('pgchanges')").fetchone() == (None,)


def test_a_pattern_with_like_characters_matches_them_literally(db):
    db.execute('CREATE TABLE "a_b" (id int); CREATE TABLE "axb" (id int); CREATE TABLE "a%b" (id int)')
    install.install(db, [TableName("public", "a_*")])
    captured = sorted(c.table.table for c in install.captures(db))
    assert captured == ["a_b"]


def test_a_role_without_rights_on_pgchanges_can_still_create_tables_and_they_are_captured(dsn, db):
    ddl.install_ddl(db)
    install.install(db, [TableName("public", "*")], "notify")
    role = f"plain_{db.info.backend_pid}"
    db.execute(f"CREATE ROLE {role} LOGIN; GRANT CREATE, USAGE ON SCHEMA public TO {role}")
    try:
        with psycopg.connect(dsn.replace("user=postgres", f"user={role}"), autocommit=True) as conn:
            conn.execute("CREATE TABLE mine (id int)")
            conn.execute("ALTER TABLE mine ADD COLUMN note text")
            conn.execute("INSERT INTO mine VALUES (1)")
        assert triggers_on(db, "mine") == list(NOTIFY_TRIGGERS)
    finally:
        db.execute("DROP TABLE IF EXISTS mine")
        db.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


@pytest.mark.anyio
async def test_a_table_matched_by_two_subscriptions_is_delivered_once(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    app = pgchanges.App(dsn)
    by_pattern: list[int] = []
    by_name: list[int] = []
    app.on("public.*")(lambda change: by_pattern.append(change.new["id"]))
    app.on("public.orders")(lambda change: by_name.append(change.new["id"]))
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO orders VALUES (1)")
        db.execute("INSERT INTO orders VALUES (2)")
        await wait_until(lambda: len(by_pattern) >= 2 and len(by_name) >= 2, "both handlers, both rows")
        db.execute("CREATE TABLE marker (id int PRIMARY KEY)")
        install.install(db, [TableName("public", "marker")])  # a later row on one channel only
        db.execute("INSERT INTO marker VALUES (3)")
        await wait_until(lambda: 3 in by_pattern, "the marker row")
        app.stop()
    # the trigger of orders signals both channels; the listener keeps one of the two
    assert (by_pattern, by_name) == ([1, 2, 3], [1, 2])
