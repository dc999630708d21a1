"""``pgchanges feed`` as a real process, killed with SIGKILL mid-stream and started again on the same slot and
window: a client that resumes with its Last-Event-ID gets every change after it, none twice."""

import json
import os
import signal
import subprocess
import sys

import httpx
from httpx_sse import connect_sse

from pgchanges.embedded import free_port
from tests.conftest import wait_for

TOKEN = "process-token"


def start(dsn, port, window):
    args = ["feed", "public.orders", "--http", f"127.0.0.1:{port}", "--slot", "feed_process", "--window", str(window)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgchanges.cli", *args, "--dsn", dsn],
        env={**os.environ, "PGCHANGES_FEED_TOKENS": f"test={TOKEN}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"pgchanges feed exited: {proc.stderr.read()}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, "pgchanges feed to be ready", 30)
    return proc


def read(port, count, last_event_id=None):
    headers = {"authorization": f"Bearer {TOKEN}"}
    if last_event_id:
        headers["last-event-id"] = last_event_id
    got = []
    url = f"http://127.0.0.1:{port}/v1/changes?table=public.orders&live=sse&offset=-1"
    timeout = httpx.Timeout(5, read=20)
    with httpx.Client(timeout=timeout) as client, connect_sse(client, "GET", url, headers=headers) as sse:
        for event in sse.iter_sse():
            if event.data:
                got.append((event.id, json.loads(event.data)["new"]["id"]))
            if len(got) == count:
                return got
    raise AssertionError(f"the stream ended after {got}")


def test_a_client_resumes_after_the_feed_process_was_killed(dsn, db, tmp_path):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    port, window = free_port(), tmp_path / "window"
    first = start(dsn, port, window)
    try:
        db.execute("INSERT INTO orders SELECT generate_series(1, 5)")
        before = read(port, 5)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        first.stderr.close()
    db.execute("INSERT INTO orders SELECT generate_series(6, 8)")  # while no feed runs
    second = start(dsn, port, window)
    try:
        db.execute("INSERT INTO orders VALUES (9)")
        after = read(port, 4, last_event_id=before[-1][0])
        again = read(port, 9)  # offset=-1: the whole window, once each
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(20)
        second.stderr.close()
    assert [row for _, row in before] == [1, 2, 3, 4, 5]
    assert [row for _, row in after] == [6, 7, 8, 9]
    assert [row for _, row in again] == list(range(1, 10)) and [i for i, _ in again[:5]] == [i for i, _ in before]
