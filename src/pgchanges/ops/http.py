"""A small HTTP/1.1 server for operators and the change feed, on anyio (so on trio and asyncio alike) and h11.

Why not an ASGI server: an App runs inside the caller's event loop (``await app.serve()`` in a trio or an
asyncio program), and the endpoint must live and die with it, in its task group, under its cancel scopes.
hypercorn supports both loops, but through two entry points of its own, with its own lifecycle, signal
handling and logging, and brings HTTP/2 and WebSocket code that these GET routes do not need. anyio's TCP
listener plus h11 (a pure-Python, well-kept HTTP/1.1 state machine, the one httpx and httpcore use) is a
couple of hundred lines that anyio cancels like any other task. Keep-alive connections are served one
request at a time and closed after :data:`IDLE_SECONDS` of silence; a request must arrive within
:data:`REQUEST_SECONDS`.

The operator's own routes are a plain ``handler(method, path)``. Paths that ``mount(path)`` claims go to an
ASGI application instead (the change feed, :mod:`pgchanges.feed.asgi`, a Starlette app that applications
may also mount in their own server): :func:`_asgi` is the small adapter, for bodiless requests (GET), with
streamed responses (Server-Sent Events) and ``http.disconnect`` once the client closes. A streamed write
that the client does not take within :data:`SEND_SECONDS` ends the response (a client that stopped reading
is dropped, not buffered for). It speaks ASGI spec 2.4: a write to a closed connection raises OSError.

Writes go to the socket itself while the kernel takes them whole (:class:`_Writer`): anyio's ``send`` costs a
cancel scope and a trip through the event loop per call, which was most of the server's time with a thousand
SSE clients (bench/results/feed.md). The first write the kernel takes only in part hands the rest, and every
later write of that connection, to anyio's stream, so that bytes never overtake each other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import unquote

import anyio
import h11
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from pgchanges.errors import ConfigError

log = logging.getLogger("pgchanges.ops")

IDLE_SECONDS = 60.0
REQUEST_SECONDS = 30.0
MAX_REQUEST_BYTES = 64 * 1024
SEND_SECONDS = 30.0


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


Handler = Callable[[str, str], Awaitable[Response]]  # (method, path) -> response
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]
Mount = Callable[[str], ASGIApp | None]  # path -> the ASGI app that serves it, or None (the handler does)


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


async def serve(
    address: str,
    handler: Handler,
    *,
    mount: Mount | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``address`` and answer with ``handler`` (or the ASGI app ``mount`` gives for a path) until
    cancelled; ``task_status`` gets the port."""
    host, port = parse_address(address)
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {address} for HTTP: {exc.strerror or exc}") from None
    async with listener:
        bound = listener.extra(SocketAttribute.local_port)  # noqa: S610 - anyio, not Django
        log.info("operator endpoint on http://%s:%d (/metrics, /healthz, /readyz)", host, bound)
        task_status.started(bound)
        await listener.serve(partial(_connection, handler, mount, (host, bound)))


class _Writer:
    """Writes of one connection: straight to the socket while the kernel takes them whole, else through the
    stream (see the module docstring)."""

    __slots__ = ("_fd", "_stream")

    def __init__(self, stream: SocketStream) -> None:
        self._stream = stream
        # the descriptor, not the socket object: asyncio hands out a TransportSocket, which has no send()
        raw = stream.extra(SocketAttribute.raw_socket, None)  # noqa: S610 - anyio, not Django
        self._fd: int | None = None if raw is None else raw.fileno()

    async def write(self, data: bytes) -> None:
        sent = 0
        if self._fd is not None:
            try:
                sent = os.write(self._fd, data)  # non-blocking on both loops; SIGPIPE is ignored by Python
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise ConnectionResetError("the client went away") from exc
            if sent == len(data):
                return
            self._fd = None  # from now on through the stream, in order
        try:
            with anyio.fail_after(SEND_SECONDS):
                await self._stream.send(data[sent:])
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise ConnectionResetError("the client went away") from exc


@dataclass(eq=False)
class _Peer:
    """One client connection: its HTTP state, the stream, how to write to it, and our address."""

    connection: h11.Connection
    stream: SocketStream
    writer: _Writer
    server: tuple[str, int]


async def _connection(handler: Handler, mount: Mount | None, server: tuple[str, int], stream: SocketStream) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    writer = _Writer(stream)
    peer = _Peer(connection, stream, writer, server)
    async with stream:
        try:
            while await _one_request(peer, handler, mount):
                connection.start_next_cycle()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return  # the client went away (or stopped reading)
        except h11.RemoteProtocolError:
            if connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await _send(connection, writer, Response(400, b'{"status":"bad request"}'), keep_alive=False)


async def _one_request(peer: _Peer, handler: Handler, mount: Mount | None) -> bool:
    """Read one request, answer it; whether the connection may carry another."""
    connection, stream = peer.connection, peer.stream
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
    keep_alive = connection.their_state is h11.DONE and not any(
        name == b"connection" and value.lower() == b"close" for name, value in request.headers
    )
    app = mount(path) if mount is not None else None
    if app is not None:
        await _asgi(app, peer, request)
        return keep_alive and connection.our_state is h11.DONE and connection.their_state is h11.DONE
    response = await handler(method, path)
    await _send(connection, peer.writer, response, keep_alive=keep_alive, head=method == "HEAD")
    return keep_alive and connection.our_state is h11.DONE


async def _send(
    connection: h11.Connection, writer: _Writer, response: Response, *, keep_alive: bool, head: bool = False
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
    await writer.write(data)


async def _asgi(app: ASGIApp, peer: _Peer, request: h11.Request) -> None:
    """Serve one (bodiless) request with the ASGI ``app``; see the module docstring."""
    connection, stream, writer = peer.connection, peer.stream, peer.writer
    raw_path, _, query = request.target.partition(b"?")
    client = stream.extra(SocketAttribute.remote_address, None)  # noqa: S610 - anyio, not Django
    scope: Message = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": request.http_version.decode("ascii"),
        "method": request.method.decode("ascii"),
        "scheme": "http",
        "path": unquote(raw_path.decode("ascii", "replace")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": list(request.headers),
        "client": client[:2] if isinstance(client, tuple) else None,
        "server": peer.server,
        "state": {},
    }
    started: list[tuple[bytes, bytes]] | None = None
    status = 500
    received = False

    async def receive() -> Message:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        try:
            while await stream.receive(MAX_REQUEST_BYTES):  # nothing more is read: wait for the client to close
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            pass
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal started, status
        if message["type"] == "http.response.start":
            status, started = int(message["status"]), [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            return
        if message["type"] != "http.response.body" or started is None:
            return
        body, more = bytes(message.get("body", b"")), bool(message.get("more_body", False))
        data = b""
        if connection.our_state is h11.SEND_RESPONSE:
            headers = started
            if not more and not any(k.lower() == b"content-length" for k, _ in headers):
                headers = [*headers, (b"content-length", str(len(body)).encode())]
            data = connection.send(h11.Response(status_code=status, headers=headers)) or b""
        if body and scope["method"] != "HEAD":  # a HEAD response has headers only (h11 refuses a body)
            data += connection.send(h11.Data(data=body)) or b""
        if not more:
            data += connection.send(h11.EndOfMessage()) or b""
        await writer.write(data)

    try:
        await app(scope, receive, send)
    except OSError:
        return  # the client went away, or stopped reading
    except Exception:
        log.exception("the ASGI app failed on %s", scope["path"])
        if connection.our_state is h11.SEND_RESPONSE:
            await _send(connection, writer, Response(500, b'{"status":"internal error"}'), keep_alive=False)
