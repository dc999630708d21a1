"""Server-Sent Events as the feed writes them (the WHATWG "server-sent events" format), as bytes.

* a change: ``id: OFFSET`` and ``data: <Change.to_json()>`` (one line: the JSON has no newline), the default
  event type, so ``EventSource.onmessage`` gets it and the browser keeps ``OFFSET`` as ``lastEventId``;
* a position: ``id: OFFSET`` alone. It is dispatched to nobody (its data is empty) but moves
  ``lastEventId``: sent first, and with a keep-alive after changes the client's filter left out, so that a
  reconnect resumes from there without scanning them again;
* a keep-alive: a comment line (``: keep-alive``), which proxies and clients see as traffic;
* ``event: dropped`` with a JSON reason, before the server closes a client it will not serve any more.

Several events go out in one write when several are pending.
"""

from __future__ import annotations

import json

RETRY_MS = 2000  # what EventSource waits before reconnecting (the field "retry:")
KEEP_ALIVE = b": keep-alive\n"


def hello(position: bytes) -> bytes:
    """The first bytes of a stream: the reconnect delay and the position it starts after."""
    return b"retry: %d\nid: %s\n\n" % (RETRY_MS, position)


def event(offset: bytes, payload: bytes) -> bytes:
    return b"id: " + offset + b"\ndata: " + payload + b"\n\n"


def position(offset: bytes) -> bytes:
    return b"id: " + offset + b"\n\n"


def keep_alive(offset: bytes | None) -> bytes:
    return KEEP_ALIVE + (b"id: " + offset + b"\n\n" if offset is not None else b"\n")


def dropped(reason: str, detail: str) -> bytes:
    body = json.dumps({"error": reason, "message": detail}, separators=(",", ":")).encode()
    return b"event: dropped\ndata: " + body + b"\n\n"
