"""The feed as an ASGI application (Starlette): what ``--http`` serves, and what an application may mount.

    GET /v1/changes?table=public.orders[&table=…][&where=col.eq.value][&offset=TOKEN][&limit=N]
        → {"changes": [<Change.to_json()>, …], "next_offset": TOKEN, "up_to_date": bool}
    GET /v1/changes?table=…&live=sse      (Last-Event-ID, else offset=, else from now)
        → text/event-stream: one event per change, id: its offset; keep-alive comments
    GET /v1/changes?table=…&offset=TOKEN&live=long-poll[&timeout=20]
        → a page as soon as there is a change after TOKEN (or an empty one after ``timeout`` seconds)
    GET /v1/feed                          → the feed's figures (clients, retained log, views)

``offset`` absent: from now; ``-1``: from the oldest change retained; a token: after it. Answers: 400 for a
malformed request, 401 without credentials (``WWW-Authenticate: Bearer``), 403 when ``authorize`` refused,
409 ``offset_expired`` for an offset the feed no longer retains (the body says the oldest and current
offsets), 503 when ``max_clients`` streams are open. Every error is ``{"error": CODE, "message": TEXT}``.

Mounting in an application (the App serving the feed runs in the same event loop, e.g. in its lifespan)::

    starlette_app.mount("/feed", feed.asgi())     # → GET /feed/v1/changes?table=…

The event stream is an ASGI response of its own rather than Starlette's ``StreamingResponse``: it watches
``receive()`` for the client's disconnect (servers like uvicorn report it only there, and would otherwise
have the stream write into the void), and closes the feed's generator at once when the stream ends.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from pgchanges.feed.auth import Forbidden, principal_of
from pgchanges.feed.filters import BadRequest, parse_selection
from pgchanges.feed.offsets import BadOffset

if TYPE_CHECKING:
    from pgchanges.feed.hub import Feed

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
DEFAULT_WAIT = 20.0  # long-poll: seconds a request waits for a change before answering an empty page
MAX_WAIT = 120.0
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),  # a proxy in front must not hold events back
]


def feed_app(feed: Feed) -> Starlette:
    async def changes(request: Request) -> Response:
        return await _changes(feed, request)

    async def figures(request: Request) -> Response:
        if await principal_of(feed.authorize, request) is None:
            return error(401, "unauthorized", "send Authorization: Bearer TOKEN (or ?access_token=)")
        return JSONResponse(feed.status())

    return Starlette(routes=[Route("/v1/changes", changes), Route("/v1/feed", figures)])


def error(status: int, code: str, message: str, **more: Any) -> Response:
    headers = {"www-authenticate": 'Bearer realm="pgchanges"'} if status == 401 else None
    return JSONResponse({"error": code, "message": message, **more}, status_code=status, headers=headers)


async def _changes(feed: Feed, request: Request) -> Response:
    from pgchanges.feed.hub import Expired  # noqa: PLC0415 - hub imports this module lazily

    try:
        principal = await principal_of(feed.authorize, request)
    except Forbidden as exc:
        return error(403, "forbidden", str(exc) or "this client may not read the feed")
    if principal is None:
        return error(401, "unauthorized", "send Authorization: Bearer TOKEN (or ?access_token=)")
    query = request.query_params
    live = query.get("live")
    try:
        if live not in (None, "sse", "long-poll"):
            raise BadRequest(f"live={live!r}: the live modes are sse and long-poll")
        selection = parse_selection(query.getlist("table"), query.getlist("where"), feed.tables)
        offset = request.headers.get("last-event-id") if live == "sse" else None
        after = feed.resolve(offset or query.get("offset"))
        limit = _limit(query.get("limit"))
        if live == "long-poll":
            _seconds(query.get("timeout"))
    except (BadRequest, BadOffset) as exc:
        return error(400, "bad_request", str(exc))
    except Expired as exc:
        return error(409, "offset_expired", str(exc), oldest_offset=exc.oldest, current_offset=exc.current)
    view = feed.fanout.view(selection, principal)
    if live == "sse":
        if feed.fanout.figures.clients >= feed.max_clients:
            return error(503, "too_many_clients", f"this feed serves at most {feed.max_clients} streams")
        return EventStream(feed.fanout.stream(view, after))  # type: ignore[return-value]
    try:
        if live == "long-poll":
            found = await feed.fanout.wait_page(view, after, limit, _seconds(query.get("timeout")))
        else:
            found = feed.fanout.page(view, after, limit)
    finally:
        feed.fanout.release(view)
    if found is None:
        return error(409, "offset_expired", "the feed forgot this position while the request waited",
                     oldest_offset=feed.log.token_at(feed.log.oldest - 1).decode(),
                     current_offset=feed.log.token_at(feed.log.head).decode())  # fmt: skip
    payloads, position, up_to_date = found
    body = b'{"changes":%s,"next_offset":%s,"up_to_date":%s}' % (
        payloads,
        json.dumps(feed.log.token_at(position).decode()).encode(),
        b"true" if up_to_date else b"false",
    )
    return Response(body, media_type="application/json", headers={"cache-control": "no-store"})


def _seconds(text: str | None) -> float:
    if text is None:
        return DEFAULT_WAIT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT:
        raise BadRequest(f"timeout must be seconds from 0 to {MAX_WAIT:g}")
    return seconds


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a number from 1 to {MAX_LIMIT}")
    return int(text)


class EventStream:
    """An ASGI response writing ``chunks`` as ``text/event-stream`` until they end or the client goes."""

    def __init__(self, chunks: AsyncGenerator[bytes, None]) -> None:
        self._chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with contextlib.aclosing(self._chunks) as chunks, anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
