"""A small HTTP/1.1 server for operators, on anyio (so on trio and asyncio alike) and h11.

Why not an ASGI server: an App runs inside the caller's event loop (``await app.serve()`` in a trio or an
asyncio program), and the endpoint must live and die with it, in its task group, under its cancel scopes.
hypercorn supports both loops, but through two entry points of its own, with its own lifecycle, signal
handling and logging, and brings HTTP/2 and WebSocket code that three GET routes do not need. anyio's TCP
listener plus h11 (a pure-Python, well-kept HTTP/1.1 state machine, the one httpx and httpcore use) is a
hundred lines that anyio cancels like any other task. Keep-alive connections are served one request at a
time and closed after :data:`IDLE_SECONDS` of silence; a request must arrive within
:data:`REQUEST_SECONDS`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import anyio
import h11
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from pgchanges.errors import ConfigError

log = logging.getLogger("pgchanges.ops")

IDLE_SECONDS = 60.0
REQUEST_SECONDS = 30.0
MAX_REQUEST_BYTES = 64 * 1024


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


Handler = Callable[[str, str], Awaitable[Response]]  # (method, path) -> response


def parse_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:9187"``, ``"[::1]:9187"``, ``":9187"`` (every interface) or ``"9187"`` → (host, port)."""
    text = address.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - the operator asked for every interface
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"http address must be HOST:PORT (e.g. 127.0.0.1:9187), not {address!r}")
    return host, int(port)


async def serve(address: str, handler: Handler, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``address`` and answer with ``handler`` until cancelled; ``task_status`` gets the port."""
    host, port = parse_address(address)
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {address} for HTTP: {exc.strerror or exc}") from None
    async with listener:
        bound = listener.extra(SocketAttribute.local_port)  # noqa: S610 - anyio, not Django
        log.info("operator endpoint on http://%s:%d (/metrics, /healthz, /readyz)", host, bound)
        task_status.started(bound)
        await listener.serve(partial(_connection, handler))


async def _connection(handler: Handler, stream: SocketStream) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    async with stream:
        try:
            while await _one_request(connection, stream, handler):
                connection.start_next_cycle()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            return  # the client went away
        except h11.RemoteProtocolError:
            if connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await _send(connection, stream, Response(400, b'{"status":"bad request"}'), keep_alive=False)


async def _one_request(connection: h11.Connection, stream: SocketStream, handler: Handler) -> bool:
    """Read one request, answer it; whether the connection may carry another."""
    request: h11.Request | None = None
    with anyio.move_on_after(IDLE_SECONDS if connection.their_state is h11.IDLE else REQUEST_SECONDS):
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive(MAX_REQUEST_BYTES))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.PAUSED:
                break
    if request is None:
        return False
    method = request.method.decode("ascii", "replace")
    path = request.target.decode("ascii", "replace").partition("?")[0]
    response = await handler(method, path)
    keep_alive = connection.their_state is h11.DONE and not any(
        name == b"connection" and value.lower() == b"close" for name, value in request.headers
    )
    await _send(connection, stream, response, keep_alive=keep_alive, head=method == "HEAD")
    return keep_alive and connection.our_state is h11.DONE


async def _send(
    connection: h11.Connection, stream: SocketStream, response: Response, *, keep_alive: bool, head: bool = False
) -> None:
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        ("cache-control", "no-store"),
    ]
    if not keep_alive:
        headers.append(("connection", "close"))
    data = connection.send(h11.Response(status_code=response.status, headers=headers))
    if not head and response.body:
        data = (data or b"") + (connection.send(h11.Data(data=response.body)) or b"")
    data = (data or b"") + (connection.send(h11.EndOfMessage()) or b"")
    await stream.send(data)
