"""DDL changes: CREATE/ALTER/DROP reported as op="ddl" changes by event triggers."""

import anyio
import psycopg
import pytest

import pgchanges
from pgchanges.capture import ddl, install
from tests.cli_process import Running, run
from tests.conftest import take, wait_until


@pytest.mark.anyio
async def test_create_alter_drop_are_reported(dsn, db):
    async with pgchanges.stream(dsn, ddl=True) as changes:
        db.execute("CREATE TABLE shop_orders (id int PRIMARY KEY)")
        db.execute("ALTER TABLE shop_orders ADD COLUMN total numeric")
        db.execute("DROP TABLE shop_orders")
        got = await take(changes, 4)
    tags = [(c.extra["command_tag"], c.extra["object_type"], c.extra["object_identity"]) for c in got]
    assert tags[0] == ("CREATE TABLE", "table", "public.shop_orders")
    assert ("ALTER TABLE", "table", "public.shop_orders") in tags
    assert ("DROP TABLE", "table", "public.shop_orders") in tags
    assert all(c.op == "ddl" and c.schema == "public" for c in got)
    assert got[0].table == "shop_orders" and got[0].extra["statement"].startswith("CREATE TABLE shop_orders")


@pytest.mark.anyio
async def test_app_on_ddl_and_long_statements(dsn, db):
    app = pgchanges.App(dsn)
    seen = []
    app.on_ddl(seen.append)
    long_comment = "x" * 20_000
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute(f"CREATE TABLE t (id int) /* {long_comment} */")
        await wait_until(lambda: seen, "the DDL change")
        app.stop()
    assert seen[0].extra["command_tag"] == "CREATE TABLE" and seen[0].extra["statement_truncated"] is True


def test_ddl_needs_a_superuser_and_says_so(dsn, db):
    role = f"plain_{db.info.backend_pid}"
    db.execute(f"CREATE ROLE {role} LOGIN")
    db.execute(f"GRANT CREATE ON DATABASE {db.info.dbname} TO {role}")
    try:
        result = run("install", "--ddl", "--dsn", dsn.replace("user=postgres", f"user={role}"))
    finally:
        db.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "event triggers need a superuser" in result.stderr and f"ALTER ROLE {role} SUPERUSER" in result.stderr


def test_cli_install_and_tail_ddl_and_uninstall(dsn, db):
    assert run("install", "--ddl", "--dsn", dsn).stdout.strip() == "DDL event triggers installed"
    assert run("install", "--ddl", "--dsn", dsn).stdout.strip() == "DDL event triggers already installed"
    proc = Running("tail", "--ddl", "--count", "1", "--format", "json", "--dsn", dsn)
    proc.wait_stderr("-- tailing schema changes")
    db.execute("CREATE SCHEMA reporting")
    line = proc.lines(1)[0]
    assert proc.finish() == 0
    change = pgchanges.Change.from_json(line)
    assert change.op == "ddl" and change.extra["command_tag"] == "CREATE SCHEMA"
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert ddl.ddl_installed(conn)
        install.uninstall(conn)
        assert not ddl.ddl_installed(conn)


@pytest.mark.anyio
async def test_on_ddl_needs_the_notify_source(dsn, db):
    db.execute("CREATE TABLE t (id int)")
    app = pgchanges.App(dsn, source="outbox", consumer="c")
    app.on("t")(lambda change: None)
    app.on_ddl(lambda change: None)
    with pytest.raises(BaseException) as info:
        async with anyio.create_task_group() as tg:
            await tg.start(app.serve)
    assert "on_ddl handlers need source='notify'" in repr(info.value)
