"""Forwarding to a webhook: a real HTTP server (stdlib, in a thread) that answers 503, 429, a slow answer and a 400
for one row: retried with the same Idempotency-Key, signed with HMAC-SHA256, the 400's batch dead letters, the
secret never in a log line or error."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import pytest

import pgchanges
from tests.brokers import eventually
from tests.conftest import outbox_pending

pytestmark = pytest.mark.anyio
SECRET = "s3cret-for-the-hook"
REFUSED_ROW = 13


class Hook(ThreadingHTTPServer):
    """Answers by a script: first 503, then 429, then one too slow, then 200, and 400 for a batch holding the
    refused row; records every request."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self.script = [503, 429, "slow"]
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def accepted(self) -> list[dict[str, object]]:
        return [c for headers, body, status in list(self.requests) if status == 200 for c in json.loads(body)]


class _Handler(BaseHTTPRequestHandler):
    server: Hook

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        step: int | str = 400
        if not any(c["new"]["id"] == REFUSED_ROW for c in json.loads(body)):
            with self.server.lock:
                step = self.server.script.pop(0) if self.server.script else 200
        if step == "slow":
            time.sleep(1.0)  # longer than the sink's timeout: the client gives up, the batch is retried
            step = 200
        self.server.requests.append((dict(self.headers), body, int(step)))
        try:
            self.send_response(int(step))
            self.end_headers()
            self.wfile.write(b"no such order" if step == 400 else b"ok")
        except BrokenPipeError:  # the client gave up on the slow answer
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


async def test_a_failing_webhook_gets_every_change_signed_and_the_refused_one_is_a_dead_letter(dsn, db, hook, caplog):
    caplog.set_level(logging.DEBUG)
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
    retry = pgchanges.RetryPolicy(max_attempts=2, initial=0.05, maximum=0.1)
    app = pgchanges.App(dsn, source="outbox", consumer="hook", retry=retry, lanes=1)
    app.forward("orders", to=hook.url, secret=SECRET, batch_size=5, timeout=0.5)
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 20) g")

        def settled():
            dead = db.execute("SELECT count(*) FROM pgchanges.dead_letters WHERE consumer = 'hook'").fetchone()[0]
            return len({c["id"] for c in hook.accepted()}) + dead

        await eventually(settled, lambda n: n == 20, "every order accepted or a dead letter")
        await eventually(lambda: outbox_pending(db), lambda n: n == 0, "the acknowledgements")
        app.stop()
    refused = {c["new"]["id"] for _, body, status in hook.requests if status == 400 for c in json.loads(body)}
    assert REFUSED_ROW in refused and len(refused) <= 5  # a 4xx fails the POST's batch, no more
    got = {c["new"]["id"] for c in hook.accepted()}
    assert sorted(got) == sorted(set(range(1, 21)) - refused)
    statuses = [status for _, _, status in hook.requests]
    assert {503, 429, 400, 200} <= set(statuses) and statuses.count(200) >= len(got) // 5
    keys: dict[str, set[str]] = {}
    for headers, body, _ in hook.requests:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Pgchanges-Signature"] == expected
        assert headers["Content-Type"] == "application/json"
        ids = [c["id"] for c in json.loads(body)]
        keys.setdefault(headers["Idempotency-Key"], set()).add("\n".join(ids))
    assert all(len(bodies) == 1 for bodies in keys.values()), "one key, one set of changes"
    assert len(keys) < len(hook.requests), "a retried batch carries the key it had"
    errors = [e for (e,) in db.execute("SELECT error FROM pgchanges.dead_letters WHERE consumer = 'hook'")]
    assert len(errors) == len(refused) and all("HTTP 400" in e and "no such order" in e for e in errors)
    assert SECRET not in caplog.text and not any(SECRET in e for e in errors) and "WARNING" in caplog.text
