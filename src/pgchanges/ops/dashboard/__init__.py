"""The dashboard at ``/`` of the operator endpoint: its page (plain HTML, CSS and JS in this package, no build
step) and the JSON it draws (``/v1/status``).

The page polls ``/v1/status`` every two seconds and draws what it says: the source and its connections,
outbox consumers (backlog, parked events, dead letters), slots (retained WAL, who holds them), handlers,
the feed's clients, and lag and throughput over the last minutes from :class:`History`, which the endpoint
samples every :data:`SAMPLE_SECONDS` so that a page opened now shows the minutes before it. Its live tail is
an ``EventSource`` on the feed (``/v1/changes?live=sse``) with a table filter, when the App serves a feed.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from pgchanges.ops.service import Ops

SAMPLE_SECONDS = 2.0
HISTORY_SECONDS = 600.0
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


def asset(path: str) -> tuple[bytes, str] | None:
    """The page's file for ``path`` (and its content type), or None."""
    found = ASSETS.get(path)
    if found is None:
        return None
    name, content_type = found
    return resources.files(__name__).joinpath(name).read_bytes(), content_type


class History:
    """Changes handled, lag and feed deliveries, sampled every SAMPLE_SECONDS for the last HISTORY_SECONDS."""

    def __init__(self) -> None:
        self.points: deque[dict[str, Any]] = deque(maxlen=int(HISTORY_SECONDS / SAMPLE_SECONDS))

    async def run(self, ops: Ops) -> None:
        while True:
            self.sample(ops)
            await anyio.sleep(SAMPLE_SECONDS)

    def sample(self, ops: Ops) -> None:
        observer = ops.observer
        feed = ops.feed
        self.points.append(
            {
                "t": round(time.time(), 3),
                "changes": sum(observer.changes.values()) if observer is not None else 0,
                "lag": ops.lag_seconds(),
                "delivered": feed.fanout.figures.delivered_total if feed is not None else None,
            }
        )


def status(ops: Ops) -> dict[str, Any]:
    """What the dashboard shows, as JSON-ready values."""
    observer, sample = ops.observer, ops.sampler.latest if ops.sampler is not None else None
    return {
        "source": ops.source_name,
        "serving": bool(observer is not None and observer.up),
        "connections": ops.connections(),
        "lag_seconds": ops.lag_seconds(),
        "position": ops.figures.position if ops.figures is not None else None,
        "changes": [
            {"table": f"{schema}.{table}" if table else "", "op": op, "count": count}
            for (schema, table, op), count in sorted((observer.changes if observer else {}).items(), key=str)
        ],
        "handlers": {
            name: {"calls": sum(times.counts), "seconds": round(times.total, 6)}
            for name, times in (observer.times.items() if observer else ())
        },
        "handler_errors": dict(observer.errors) if observer else {},
        "consumers": [_plain(asdict(c)) for c in sample.consumers] if sample else [],
        "slots": [_plain(asdict(s)) for s in sample.slots] if sample else [],
        "sampled": sample is not None,
        "feed": ops.feed.status() if ops.feed is not None else None,
        "history": list(ops.history.points),
        "time": round(time.time(), 3),
    }


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}
