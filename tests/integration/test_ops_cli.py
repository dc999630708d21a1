"""The operator's command line: ``run --http --log-format json`` (JSON lines, no password anywhere, metrics
scraped from the process), ``tail --http``, and ``status --format json`` with who holds each slot."""

import json
import signal
import textwrap

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pgchanges.embedded import free_port
from tests.cli_process import Running, run
from tests.conftest import wait_for

SECRET = "hunter2-in-the-dsn"


def scrape(port):
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert SECRET not in response.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(response.text)
            for s in f.samples}  # fmt: skip


def test_run_with_http_and_json_logs(dsn, db, tmp_path):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    (tmp_path / "ops_app.py").write_text(
        textwrap.dedent("""
        import pgchanges
        app = pgchanges.App(source="outbox", consumer="ops-cli", poll_interval=0.05)

        @app.on("public.orders")
        async def refuse(change):
            raise RuntimeError("refused")
    """)
    )
    port = free_port()
    secret_dsn = f"{dsn} password={SECRET}"
    proc = Running(
        "run", "ops_app:app", "--dsn", secret_dsn, "--http", f"127.0.0.1:{port}", "--log-format", "json", "-v",
        cwd=tmp_path,
    )  # fmt: skip
    proc.wait_stderr("listening for changes")
    db.execute("INSERT INTO orders VALUES (7)")
    proc.wait_stderr("refused")
    wait_for(lambda: scrape(port).get(("pgchanges_handler_errors_total", (("handler", "refuse"),))), "the failure")
    metrics = scrape(port)
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    proc.proc.send_signal(signal.SIGINT)
    assert proc.finish() == 0
    lines = [json.loads(line) for line in proc.stderr_lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert SECRET not in "\n".join(proc.stderr_lines) and SECRET not in ready.text
    failed = next(line for line in lines if line["message"].startswith("handler refuse failed"))
    assert failed["level"] == "error" and failed["handler"] == "refuse" and "RuntimeError" in failed["exception"]
    assert failed["change_id"].startswith("outbox:") and failed["table"] == "public.orders"
    assert failed["consumer"] == "ops-cli" and failed["source"] == "outbox"
    assert metrics[("pgchanges_serving", ())] == 1
    assert metrics[("pgchanges_changes_total", (("op", "insert"), ("source", "outbox"), ("table", "public.orders")))]


def test_tail_with_http(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    port = free_port()
    tail = Running("tail", "t", "--source", "logical", "--count", "2", "--http", f"127.0.0.1:{port}", "--dsn", dsn)
    tail.wait_stderr("-- tailing")
    db.execute("INSERT INTO t VALUES (1)")
    tail.lines(1)
    counted = ("pgchanges_changes_total", (("op", "insert"), ("source", "logical"), ("table", "public.t")))
    wait_for(lambda: scrape(port).get(counted) == 1, "the change counted")
    assert scrape(port)[("pgchanges_connected", (("connection", "replication"),))] == 1
    db.execute("INSERT INTO t VALUES (2)")
    tail.lines(1)
    assert tail.finish() == 0


def test_status_as_json_and_who_holds_the_slots(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    assert run("install", "orders", "--source", "logical", "--slot", "held", "--dsn", dsn).returncode == 0
    assert run("install", "orders", "--source", "outbox", "--dsn", dsn).returncode == 0
    holder = Running("tail", "orders", "--source", "logical", "--slot", "held", "--dsn", dsn)
    holder.wait_stderr("-- tailing")
    result = run("status", "--format", "json", "--dsn", dsn)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    [slot] = [s for s in status["slots"] if s["name"] == "held"]
    assert slot["active"] and slot["active_pid"] and slot["application_name"] == "pgchanges"
    assert slot["retained_bytes"] is not None and "spill_bytes" in slot["stats"]
    assert {"source": "outbox", "table": "public.orders"} in status["captured"]
    text = run("status", "--dsn", dsn).stdout
    assert "held by" in text and f"pid {slot['active_pid']} (pgchanges" in text
    holder.proc.send_signal(signal.SIGINT)
    assert holder.finish() == 0
