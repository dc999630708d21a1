"""``pgchanges forward`` as real processes: SIGKILL mid-stream under load (then every change exactly once on NATS
and Redis, each row's changes in commit order), and the hot standby taking over a SIGKILLed holder's slot."""

from __future__ import annotations

import json
import signal
import threading
import time

import psycopg
import pytest

from tests.brokers import nats_count, nats_messages, nats_server, redis_count, redis_entries, redis_server, unique
from tests.cli_process import Running, run
from tests.conftest import wait_for

__all__ = ["nats_server", "redis_server"]

ROWS = 100
VERSIONS = 30  # each row: an insert, then VERSIONS - 1 updates: ROWS * VERSIONS changes


def _writer(dsn: str, started: threading.Event) -> threading.Thread:
    """Commits every row's versions in turn, one small transaction each, while the forwarder runs."""

    def write() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for version in range(VERSIONS):
                for row in range(ROWS):
                    if version == 0:
                        conn.execute("INSERT INTO t VALUES (%s, 0)", (row,))
                    else:
                        conn.execute("UPDATE t SET version = %s WHERE id = %s", (version, row))
                    started.set()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def _check_exactly_once_in_row_order(payloads: list[bytes | str]) -> None:
    changes = [json.loads(p) for p in payloads]
    ids = [c["id"] for c in changes]
    assert len(ids) == len(set(ids)) == ROWS * VERSIONS, f"{len(ids)} messages, {len(set(ids))} distinct"
    per_row: dict[int, list[int]] = {}
    for change in changes:
        per_row.setdefault(change["new"]["id"], []).append(change["new"]["version"])
    assert per_row == {row: list(range(VERSIONS)) for row in range(ROWS)}


@pytest.mark.parametrize("broker", ["nats", "redis"])
def test_sigkill_mid_stream_then_every_change_once_in_row_order(dsn, db, broker, request):
    server = request.getfixturevalue(f"{broker}_server")
    db.execute("CREATE TABLE t (id int PRIMARY KEY, version int)")
    name = unique("k")
    target = ["--stream", name.upper(), "--subject", name + ".{table}"] if broker == "nats" else ["--subject", name]
    if broker == "nats":

        def read():
            return [data for _, _, data in nats_messages(server.url, name.upper())]

        def count():
            return nats_count(server.url, name.upper())
    else:

        def read():
            return [entry["payload"] for entry in redis_entries(server.url, name)]

        def count():
            return redis_count(server.url, name)

    command = ["forward", "t", "--to", server.url, "--source", "logical", "--slot", name, "--dsn", dsn, "-v", *target]
    first = Running(*command, "--window", "50")
    try:
        first.wait_stderr("listening for changes")
        writer = _writer(dsn, threading.Event())
        wait_for(lambda: count() >= 200, "the first forwarder to publish a part of the changes")
    finally:
        first.proc.send_signal(signal.SIGKILL)
        first.finish()
    assert count() < ROWS * VERSIONS, "the writer finished before the kill: no load to interrupt"
    second = Running(*command, "--backend", "trio")
    try:
        writer.join(timeout=60)
        wait_for(lambda: count() >= ROWS * VERSIONS, "every change after the restart", timeout=60)
        time.sleep(0.3)  # a duplicate would arrive right after the last message: nothing to await for it
        _check_exactly_once_in_row_order(read())
    finally:
        second.proc.send_signal(signal.SIGTERM)
        assert second.finish() == 0, second.stderr_lines[-5:]


def test_a_standby_takes_over_a_killed_holder_within_ten_seconds(dsn, db, nats_server):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, version int)")
    slot = unique("h")
    stream = slot.upper()
    command = ["forward", "t", "--to", nats_server.url, "--slot", slot, "--dsn", dsn, "--stream", stream]
    command += ["--subject", slot + ".{table}"]
    holder = Running(*command)
    holder.wait_stderr("holds slot:")
    standby = Running(*command, "--backend", "trio")
    try:
        standby.wait_stderr("waiting to take over")
        status = run("status", "--dsn", dsn)
        assert status.returncode == 0, status.stderr
        lines = [line for line in status.stdout.splitlines() if f"slot {slot}" in line]
        assert len(lines) == 2, status.stdout
        assert "holds" in lines[0] and f":{holder.proc.pid}" in lines[0] and "127.0.0.1" in lines[0]
        assert "waits" in lines[1] and f":{standby.proc.pid}" in lines[1]
        db.execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 10) g")
        wait_for(lambda: len(nats_messages(nats_server.url, stream)) == 10, "the holder to forward")
        killed = time.monotonic()
        holder.proc.send_signal(signal.SIGKILL)
        holder.finish()
        db.execute("INSERT INTO t SELECT g, 0 FROM generate_series(11, 20) g")  # while nobody forwards
        standby.wait_stderr("holds slot:", timeout=10)
        wait_for(lambda: len(nats_messages(nats_server.url, stream)) >= 20, "the standby to forward", timeout=10)
        assert time.monotonic() - killed < 10
        ids = sorted(json.loads(data)["new"]["id"] for _, _, data in nats_messages(nats_server.url, stream))
        assert ids == list(range(1, 21))
    finally:
        for process in (holder, standby):
            if process.proc.poll() is None:
                process.proc.send_signal(signal.SIGTERM)
                process.finish()


def test_broker_passwords_never_reach_the_log_and_bad_options_are_one_line(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    wrong = run("forward", "t", "--to", "nats://127.0.0.1:4222", "--maxlen", "5", "--dsn", dsn)
    assert wrong.returncode == 1 and wrong.stderr.strip().splitlines() == [
        "pgchanges: error: --maxlen do not apply to nats://"
    ]
    secret = "t0p-s3cret"
    url = f"amqp://guest:{secret}@127.0.0.1:1/"  # nothing listens: every attempt fails, and is logged
    forwarder = Running("forward", "t", "--to", url, "--slot", unique("p"), "--dsn", dsn, "-v")
    try:
        forwarder.wait_stderr("listening for changes")
        db.execute("INSERT INTO t VALUES (1)")
        forwarder.wait_stderr("retrying in")
    finally:
        forwarder.proc.send_signal(signal.SIGTERM)
        forwarder.wait_stderr("finishing")
        forwarder.proc.send_signal(signal.SIGTERM)  # a second signal: give up the batch in hand (unacknowledged)
        forwarder.finish()
    text = "\n".join(forwarder.stderr_lines)
    assert "amqp://guest:***@127.0.0.1:1/" in text and secret not in text
