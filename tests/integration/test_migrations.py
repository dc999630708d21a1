"""A database installed by an earlier version keeps its capture and its consumers' place after migrating.

Such a database goes through the numbered migrations, never the baseline (tests/integration/test_baseline.py
shows both paths end at the same schema).
"""

from decimal import Decimal

import pytest

import pgchanges
from pgchanges.capture import migrations
from pgchanges.capture.queries import query
from pgchanges.names import TableName
from tests.conftest import take
from tests.schema_catalog import apply_one_by_one


@pytest.mark.anyio
async def test_version_5_outbox_and_notify_capture_carry_over(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE notes (id int PRIMARY KEY)")
    apply_one_by_one(db, 5)  # the schema as a release with migrations 1..5 installed it
    orders = TableName("public", "orders").identifier.as_string(db)
    # what version 5's install did for an outbox table and a notify table
    db.execute(
        f"CREATE TRIGGER pgchanges_outbox AFTER INSERT OR UPDATE OR DELETE ON {orders} "
        "FOR EACH ROW EXECUTE FUNCTION pgchanges.outbox_row_v1()"
    )
    db.execute(
        "CREATE TRIGGER pgchanges_notify AFTER INSERT OR UPDATE OR DELETE ON notes "
        "FOR EACH ROW EXECUTE FUNCTION pgchanges.notify_row_v1('pgchanges:public.notes')"
    )
    db.execute("""INSERT INTO pgchanges.captures (table_oid, schema_name, table_name, source, key_columns)
                  VALUES ('orders'::regclass, 'public', 'orders', 'outbox', '{id}'),
                         ('notes'::regclass, 'public', 'notes', 'notify', '{id}')""")
    db.execute("INSERT INTO orders VALUES (1), (2)")
    for row in range(3, 7):  # one transaction each: distinct xids
        db.execute("INSERT INTO orders VALUES (%s)", (row,))
    ids = [r[0] for r in db.execute("SELECT id FROM pgchanges.events ORDER BY id").fetchall()]
    # a version-5 consumer: events 1-2 below its horizon (finished), 3 pending in its queue (failed once),
    # 4 finished above the horizon (a tombstone), 5-6 not copied into its queue yet
    horizon = db.execute("SELECT xid FROM pgchanges.events WHERE id = %s", (ids[2],)).fetchone()[0]
    db.execute(
        """INSERT INTO pgchanges.consumers (name, table_oids, horizon)
           VALUES ('old', ARRAY['orders'::regclass::oid], %s)""",
        (horizon,),
    )
    for event_id, attempts, done in ((ids[2], 1, False), (ids[3], 0, True)):
        db.execute(
            """INSERT INTO pgchanges.queue (consumer, event_id, xid, row_key, attempts, done)
               SELECT 'old', id, xid, table_oid::text || ':' || (new_row ->> 'id'), %s, %s
               FROM pgchanges.events WHERE id = %s""",
            (attempts, done, event_id),
        )

    async with pgchanges.stream(dsn, tables=["orders"], source="outbox", consumer="old") as changes:
        got = await take(changes, 3)
        await changes.ack(*got)
    status = db.execute(query("consumer_status"), {"consumer": "old"}).fetchone()
    assert status[1] == 0, "nothing else is pending: 1, 2 and 4 were finished before the migration"
    assert sorted(c.new["id"] for c in got) == [3, 5, 6]
    assert [c.extra["attempt"] for c in got if c.new["id"] == 3] == [2]  # its earlier failure is kept
    assert db.execute("SELECT max(version) FROM pgchanges.migrations").fetchone()[0] == max(
        m.version for m in migrations.available()
    )
    rules = db.execute("SELECT source, table_like FROM pgchanges.capture_rules ORDER BY 1").fetchall()
    assert rules == [("notify", "notes"), ("outbox", "orders")]
    channel = db.execute("SELECT channel FROM pgchanges.capture_rules WHERE source = 'notify'").fetchone()[0]
    assert channel == "pgchanges:public.notes"


def notify_trigger_functions(db, table="notes"):
    return db.execute(
        """SELECT t.tgname, p.oid::regprocedure::text, encode(t.tgargs, 'escape') FROM pg_trigger t
           JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.tgrelid = %s::regclass ORDER BY 1""",
        (table,),
    ).fetchall()


def statement_triggers(args: str) -> list[tuple[str, str, str]]:
    """The notify triggers of a table (not partitioned) since version 12, with the trigger arguments ``args``."""
    return [
        ("pgchanges_notify_delete", "pgchanges.notify_rows_v3()", args),
        ("pgchanges_notify_insert", "pgchanges.notify_rows_v3()", args),
        ("pgchanges_notify_truncate", "pgchanges.notify_truncate_v2()", args),
        ("pgchanges_notify_update", "pgchanges.notify_row_v2()", args),
    ]


def format_1_function() -> str:
    """The notify trigger function of versions 6 to 10 (payload format 1), as ``public.notify_format_1``."""
    sql = next(m.sql for m in migrations.available() if m.version == 6)
    start = sql.index("CREATE OR REPLACE FUNCTION pgchanges.notify_row_v1()")
    body = sql[start : sql.index("$fn$;", start) + len("$fn$;")]
    return body.replace("pgchanges.notify_row_v1()", "public.notify_format_1()")


@pytest.mark.anyio
async def test_notify_triggers_move_to_payload_format_2_and_format_1_payloads_stay_readable(dsn, db):
    db.execute("CREATE TABLE notes (id int PRIMARY KEY, amount numeric(12,2), doc jsonb, body text)")
    apply_one_by_one(db, 10)
    channel = TableName("public", "notes").channel
    db.execute(  # what version 10's install did: a rule, and the triggers that following it makes
        """INSERT INTO pgchanges.capture_rules (source, schema_like, table_like, channel)
           VALUES ('notify', 'public', 'notes', %s)""",
        (channel,),
    )
    db.execute("SELECT pgchanges.follow_table_v1('notes'::regclass)")
    assert {f for _, f, _ in notify_trigger_functions(db)} == {"pgchanges.notify_row_v1()"}

    migrations.migrate(db)
    assert notify_trigger_functions(db) == statement_triggers(f"{channel}\\000")

    # a writer still on format 1 (notifications in flight across the upgrade, payloads spilled before it)
    db.execute(format_1_function())
    for op in ("insert", "update", "delete"):
        db.execute(f"DROP TRIGGER pgchanges_notify_{op} ON notes")
    db.execute(
        "CREATE OR REPLACE TRIGGER pgchanges_notify AFTER INSERT OR UPDATE OR DELETE ON notes "
        f"FOR EACH ROW EXECUTE FUNCTION public.notify_format_1('{channel}')"
    )
    async with pgchanges.stream(dsn, tables=["notes"]) as changes:
        db.execute("""INSERT INTO notes VALUES (1, 1.10, '{"v": 0.1}', 'short')""")
        db.execute("UPDATE notes SET body = %s WHERE id = 1", ("y" * 9000,))  # over NOTIFY's limit: spilled
        db.execute("DELETE FROM notes WHERE id = 1")
        insert, update, delete = await take(changes, 3)
    assert (insert.op, update.op, delete.op) == ("insert", "update", "delete")
    assert dict(insert.new) == {"id": 1, "amount": Decimal("1.10"), "doc": {"v": 0.1}, "body": "short"}
    assert type(insert.new["doc"]["v"]) is float and str(insert.new["amount"]) == "1.10"
    assert update.changed == ("body",) and len(update.new["body"]) == 9000 and update.old["body"] == "short"
    assert delete.new is None and delete.old["body"] == "y" * 9000


@pytest.mark.anyio
async def test_notify_row_triggers_become_statement_triggers_except_on_partitioned_tables(dsn, db):
    db.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    db.execute("CREATE TABLE ledger (id int, at int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)")
    db.execute("CREATE TABLE ledger_1 PARTITION OF ledger FOR VALUES FROM (0) TO (100)")
    apply_one_by_one(db, 11)
    notes, ledger = TableName("public", "notes").channel, TableName("public", "ledger").channel
    db.execute(  # what version 11's install did: rules (two for notes), and the triggers that following makes
        """INSERT INTO pgchanges.capture_rules (source, schema_like, table_like, channel)
           VALUES ('notify', 'public', 'notes', %s), ('notify', 'public', 'no%%', 'elsewhere'),
                  ('notify', 'public', 'ledger', %s)""",
        (notes, ledger),
    )
    db.execute("SELECT pgchanges.follow_table_v1('notes'::regclass), pgchanges.follow_table_v1('ledger'::regclass)")
    functions = [f for _, f, _ in notify_trigger_functions(db)]
    assert functions == ["pgchanges.notify_row_v2()", "pgchanges.notify_truncate_v2()"]

    migrations.migrate(db)
    assert notify_trigger_functions(db) == statement_triggers(f"elsewhere\\000{notes}\\000")
    row_trigger = [
        ("pgchanges_notify", "pgchanges.notify_row_v2()", f"{ledger}\\000"),
        ("pgchanges_notify_truncate", "pgchanges.notify_truncate_v2()", f"{ledger}\\000"),
    ]
    assert notify_trigger_functions(db, "ledger") == row_trigger
    assert notify_trigger_functions(db, "ledger_1") == row_trigger[:1], "the clone of the parent's row trigger"

    async with pgchanges.stream(dsn, tables=["notes", "ledger"]) as changes:
        db.execute("INSERT INTO notes VALUES (1, 'a'), (2, 'b')")
        db.execute("UPDATE notes SET body = body || '!'")
        db.execute("DELETE FROM notes")
        db.execute("INSERT INTO ledger VALUES (1, 5)")
        db.execute("INSERT INTO ledger_1 VALUES (2, 6)")  # a statement naming the partition
        got = await take(changes, 8)
    assert [(c.table, c.op, c.new and dict(c.new), c.old and dict(c.old)) for c in got] == [
        ("notes", "insert", {"id": 1, "body": "a"}, None),
        ("notes", "insert", {"id": 2, "body": "b"}, None),
        ("notes", "update", {"id": 1, "body": "a!"}, {"id": 1, "body": "a"}),
        ("notes", "update", {"id": 2, "body": "b!"}, {"id": 2, "body": "b"}),
        ("notes", "delete", None, {"id": 1, "body": "a!"}),
        ("notes", "delete", None, {"id": 2, "body": "b!"}),
        ("ledger_1", "insert", {"id": 1, "at": 5}, None),
        ("ledger_1", "insert", {"id": 2, "at": 6}, None),
    ]
