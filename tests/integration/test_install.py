"""Installing and removing capture: idempotent, complete, and clear about what is wrong."""

import psycopg
import pytest

from pgchanges.capture import install as capture
from pgchanges.errors import PermissionDenied, TableNotFound
from pgchanges.names import TableName
from tests.schema_catalog import NOTIFY_TRIGGERS

CATALOG_SNAPSHOT = """
SELECT 'namespace', nspname FROM pg_namespace
UNION ALL SELECT 'class', c.oid::regclass::text FROM pg_class c
UNION ALL SELECT 'proc', p.oid::regprocedure::text FROM pg_proc p
UNION ALL SELECT 'trigger', tgrelid::regclass::text || '.' || tgname FROM pg_trigger
UNION ALL SELECT 'type', t.oid::regtype::text FROM pg_type t
UNION ALL SELECT 'event_trigger', evtname FROM pg_event_trigger
UNION ALL SELECT 'publication', pubname FROM pg_publication
UNION ALL SELECT 'slot', slot_name FROM pg_replication_slots
UNION ALL SELECT 'replica_identity', oid::regclass::text || relreplident::text FROM pg_class WHERE relkind = 'r'
ORDER BY 1, 2
"""


def triggers_on(db, table):
    return db.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass ORDER BY 1", (table,)).fetchall()


def test_install_is_idempotent(db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    orders = TableName("public", "orders")
    assert capture.install(db, [orders]) == [orders]
    first = triggers_on(db, "orders")
    assert capture.install(db, [orders]) == []
    assert triggers_on(db, "orders") == first == [(name,) for name in NOTIFY_TRIGGERS]
    assert [(c.table, c.source) for c in capture.captures(db)] == [(orders, "notify")]


def test_uninstall_leaves_nothing_behind(db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    db.execute('CREATE SCHEMA "Odd Schema"; CREATE TABLE "Odd Schema"."Odd ""Table""" (id int)')
    before = db.execute(CATALOG_SNAPSHOT).fetchall()
    capture.install(db, [TableName("public", "orders"), TableName("Odd Schema", 'Odd "Table"')])
    assert db.execute(CATALOG_SNAPSHOT).fetchall() != before
    removed = capture.uninstall(db)
    assert set(removed) == {TableName("public", "orders"), TableName("Odd Schema", 'Odd "Table"')}
    assert db.execute(CATALOG_SNAPSHOT).fetchall() == before


def test_uninstall_of_every_source_leaves_nothing_behind(db):
    from pgchanges.capture import logical_admin

    db.execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
    before = db.execute(CATALOG_SNAPSHOT).fetchall()
    tables = [TableName("public", "a"), TableName("public", "b")]
    capture.install(db, tables, "notify")
    capture.install(db, tables, "outbox")
    logical_admin.install_logical(db, tables, "keep_me_not", replica_identity_full=False)
    assert {c.source for c in capture.captures(db)} == {"notify", "outbox", "logical"}
    capture.uninstall(db)
    assert db.execute(CATALOG_SNAPSHOT).fetchall() == before


def test_uninstall_one_table_keeps_the_others(db):
    db.execute("CREATE TABLE a (id int); CREATE TABLE b (id int)")
    capture.install(db, [TableName("public", "a"), TableName("public", "b")])
    assert capture.uninstall(db, [TableName("public", "a")]) == [TableName("public", "a")]
    assert triggers_on(db, "a") == []
    assert len(triggers_on(db, "b")) == len(NOTIFY_TRIGGERS)
    assert capture.schema_installed(db)


def test_missing_table_is_a_clear_error(db):
    with pytest.raises(TableNotFound, match=r"public\.nope does not exist"):
        capture.install(db, [TableName("public", "nope")])


def test_missing_privilege_says_what_to_do(db, dsn):
    db.execute("CREATE TABLE orders (id int)")
    role = f"reader_{db.info.backend_pid}"
    db.execute(f"CREATE ROLE {role} LOGIN")
    db.execute(f"GRANT SELECT ON orders TO {role}")
    try:
        with (
            psycopg.connect(dsn.replace("user=postgres", f"user={role}"), autocommit=True) as conn,
            pytest.raises(PermissionDenied, match=r"permission denied.*owner"),
        ):
            capture.install(conn, [TableName("public", "orders")])
    finally:
        db.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
