"""The pgchanges command, run as a real process against the test cluster."""

import json
import signal
import textwrap

import pytest

from pgchanges.change import Change
from pgchanges.embedded import free_port
from tests.cli_process import Running, run


def test_install_status_uninstall(dsn, db):
    db.execute('CREATE TABLE orders (id int); CREATE TABLE "Odd Name" (id int)')
    first = run("install", "orders", '"Odd Name"', "--dsn", dsn)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "notify capture installed on public.orders",
        'notify capture installed on public."Odd Name"',
    ]
    again = run("install", "orders", "--dsn", dsn)
    assert again.stdout.strip() == "notify capture already installed on public.orders"
    pattern = run("install", "public.log_*", "--dsn", dsn)
    assert (
        pattern.stdout.strip()
        == "notify capture installed for public.log_* (now: no table yet; tables created later too)"
    )
    db.execute("CREATE TABLE log_a (id int)")  # no event trigger here: the next install/consumer follows it
    status = run("status", env={"DATABASE_URL": dsn}).stdout.splitlines()
    assert status[0].startswith("capture rules (new and renamed tables are followed by consumers")
    assert [line.split() for line in status[1:4]] == [
        ["notify", 'public."Odd', 'Name"'],
        ["notify", "public.log_*"],
        ["notify", "public.orders"],
    ]
    assert [line.split() for line in status[5:]] == [
        ["captured", "tables"],
        ["notify", 'public."Odd', 'Name"'],
        ["notify", "public.orders"],
    ]
    gone = run("uninstall", "--dsn", dsn)
    assert gone.returncode == 0 and "capture removed from public.orders" in gone.stdout
    assert run("status", "--dsn", dsn).stdout.strip() == "nothing is captured"


def test_tail_json_prints_each_change_and_flushes(dsn, db):
    db.execute("CREATE TABLE orders (id int, total numeric)")
    tail = Running("tail", "orders", "--format", "json", "--count", "2", "--dsn", dsn)
    tail.wait_stderr("-- tailing")
    db.execute("INSERT INTO orders VALUES (1, 9.90)")
    [line] = tail.lines(1)  # arrives before the process ends: flushed per change
    first = Change.from_json(line)
    assert first.new == {"id": 1, "total": __import__("decimal").Decimal("9.90")}
    db.execute("DELETE FROM orders")
    second = json.loads(tail.lines(1)[0])
    assert second["op"] == "delete" and second["old"]["total"] == "9.90"
    assert tail.finish() == 0


def test_tail_text_format(dsn, db):
    db.execute("CREATE TABLE t (id int, status text)")
    tail = Running("tail", "t", "--count", "2", "--dsn", dsn)
    tail.wait_stderr("-- tailing")
    db.execute("INSERT INTO t VALUES (1, 'new'); UPDATE t SET status = 'paid'")
    insert, update = tail.lines(2)
    assert "insert" in insert and "public.t" in insert and "status='new'" in insert
    assert "update" in update and "status: 'new' → 'paid'" in update and "id=1" in update
    assert tail.finish() == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["tail", "orders", "--dsn", "host=127.0.0.1 port={port} user=u password=hunter2 dbname=x"],
            "cannot connect to PostgreSQL",
        ),
        (["install", "orders", "--dsn", "postgresql://u:hunter2@127.0.0.1:{port}/x"], "cannot connect to PostgreSQL"),
        (["install", "no_such_table", "--dsn", "{dsn}"], "public.no_such_table does not exist"),
        (["tail", "no_such_table", "--dsn", "{dsn}"], "public.no_such_table does not exist"),
        (["install", "a.b.c", "--dsn", "{dsn}"], "expected 'table' or 'schema.table'"),
        (["run", "no_such_module:app"], "cannot import 'no_such_module'"),
        (["install", "orders", "--dsn", "host=x password='unclosed"], "invalid connection string"),
    ],
)
def test_errors_are_one_clear_line_without_password(dsn, args, needle):
    port = free_port()
    result = run(*[a.format(port=port, dsn=dsn) for a in args], timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_missing_privilege_is_one_clear_line(dsn, db):
    db.execute("CREATE TABLE orders (id int)")
    role = f"cli_reader_{db.info.backend_pid}"
    db.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'hunter2'")
    try:
        result = run("install", "orders", "--dsn", dsn.replace("user=postgres", f"user={role} password=hunter2"))
    finally:
        db.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
    assert result.returncode == 1 and "Traceback" not in result.stderr and "hunter2" not in result.stderr
    assert "permission denied" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_module_app_handles_changes_and_stops_on_sigterm(dsn, db, tmp_path, backend):
    db.execute("CREATE TABLE orders (id int)")
    out = tmp_path / "seen.txt"
    (tmp_path / "shop_events.py").write_text(
        textwrap.dedent(f"""
        import pgchanges
        app = pgchanges.App({dsn!r})

        @app.on("public.orders", ops={{"insert"}})
        async def remember(change):
            with open({str(out)!r}, "a") as f:
                f.write(f"{{change.new['id']}}\\n")
    """)
    )
    proc = Running("run", "shop_events:app", "--backend", backend, "-v", cwd=tmp_path)
    proc.wait_stderr("listening for changes")
    db.execute("INSERT INTO orders VALUES (41), (42)")
    import time

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (not out.exists() or out.read_text().split() != ["41", "42"]):
        time.sleep(0.02)
    assert out.read_text().split() == ["41", "42"]
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.finish() == 0
    assert any("SIGTERM" in line for line in proc.stderr_lines)


def test_demo_on_an_embedded_server():
    result = run("demo", "--duration", "2", "--rate", "50", timeout=120, env={"DATABASE_URL": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    summary = result.stderr.strip().splitlines()[-1]
    written, received = (int(x) for x in summary.split()[1:5:3])
    assert written == received and written > 10
    assert "embedded PostgreSQL" in result.stderr
