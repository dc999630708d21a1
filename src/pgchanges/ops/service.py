"""The operator endpoint of one App (or ``tail``): the observer, the database sampler and the HTTP server.

``App(dsn, http="127.0.0.1:9187")`` (``pgchanges run … --http``) makes an :class:`Ops`; ``App.serve``
attaches it to the server it serves (:meth:`Ops.attach`) and starts :meth:`Ops.run` beside it, in its own
task group, so the endpoint starts before the source opens (``/readyz`` says "not serving" meanwhile) and
stops with the App. Other ways of serving (``tail``, forwarding) use the same two calls::

    ops = Ops(conninfo, OpsConfig(http="127.0.0.1:9187"))
    ops.attach_source(source)            # or ops.attach(server), which also observes its runtime
    async with anyio.create_task_group() as tg:
        await tg.start(ops.run)          # listening once this returns; ops.port is the bound port
        ...
        tg.cancel_scope.cancel()

With a change feed (``app.feed(...)``, :meth:`Ops.attach_feed`) the same server answers ``/v1/changes`` through
the feed's ASGI app (:mod:`pgchanges.feed.asgi`), and ``/`` is the dashboard (:mod:`pgchanges.ops.dashboard`)
with its figures at ``/v1/status``; the dashboard is there without a feed too, minus its live tail.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from pgchanges.errors import ConfigError
from pgchanges.ops import health
from pgchanges.ops.figures import SourceFigures
from pgchanges.ops.http import Response, parse_address
from pgchanges.ops.observer import Observer
from pgchanges.ops.sampler import Sampler
from pgchanges.routing import Router

if TYPE_CHECKING:
    from pgchanges.feed.hub import Feed
    from pgchanges.ops.http import ASGIApp

FEED_PATHS = ("/v1/changes", "/v1/feed")

DEFAULT_STALL_AFTER = 60.0
DEFAULT_SAMPLE_INTERVAL = 5.0
_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4, "KIB": 1024, "MIB": 1024**2,
          "GIB": 1024**3, "TIB": 1024**4}  # fmt: skip


def parse_size(value: int | str | None) -> int | None:
    """Bytes from ``5000000``, ``"5MB"``, ``"2 GiB"`` (None stays None)."""
    if value is None or isinstance(value, int):
        return value
    text = value.strip().upper().replace(" ", "")
    number = text.rstrip("KMGTIB")
    unit = text[len(number) :]
    try:
        return int(float(number) * _UNITS[unit])
    except (ValueError, KeyError):
        raise ConfigError(f"a size is bytes or a number with kB, MB, GB, TB (or KiB…), not {value!r}") from None


@dataclass(frozen=True)
class OpsConfig:
    """``http``: HOST:PORT to listen on; ``stall_after``: seconds without progress, while changes are pending,
    before ``/readyz`` fails; ``max_retained_bytes``: a slot retaining more fails it too (None: not checked);
    ``sample_interval``: seconds between the database samples (slots, outbox backlog)."""

    http: str
    stall_after: float = DEFAULT_STALL_AFTER
    max_retained_bytes: int | None = None
    sample_interval: float = DEFAULT_SAMPLE_INTERVAL

    def __post_init__(self) -> None:
        parse_address(self.http)
        if self.stall_after <= 0:
            raise ConfigError(f"stall_after must be positive, not {self.stall_after}")


def require_extra() -> None:
    """The operator endpoint needs the ``ops`` extra; a ConfigError says how to install it."""
    try:
        import h11  # noqa: F401, PLC0415
        import prometheus_client  # noqa: F401, PLC0415
    except ImportError as exc:
        raise ConfigError(
            f"the HTTP endpoint needs the ops extra ({exc.name} is missing): pip install 'pgchanges[ops]'"
        ) from None


class Ops:
    """Metrics, health and readiness of one served source; see the module docstring."""

    def __init__(self, conninfo: str, config: OpsConfig, *, consumer: str | None = None) -> None:
        require_extra()
        from pgchanges.ops.metrics import registry_of  # noqa: PLC0415 - prometheus-client only when used

        self.config = config
        self.observer: Observer | None = None
        self.source: Any = None
        self.source_name = "none"
        self.slot: str | None = None
        self.sampler: Sampler | None = Sampler(conninfo, interval=config.sample_interval, consumer=consumer)
        self.port: int | None = None
        self.registry = registry_of(self)
        self.feed: Feed | None = None
        from pgchanges.ops.dashboard import History  # noqa: PLC0415

        self.history = History()

    @property
    def figures(self) -> SourceFigures | None:
        if self.observer is not None:
            return self.observer.figures
        found = getattr(self.source, "figures", None)
        return found if isinstance(found, SourceFigures) else None

    # -- wiring ------------------------------------------------------------------------------------------

    def attach_source(self, source: Any) -> None:
        """Report on ``source``: its figures, connections, slot and consumer."""
        self.source = source
        self.source_name = str(getattr(source, "name", "none"))
        slot = getattr(source, "slot", None)
        self.slot = slot if isinstance(slot, str) else None

    def attach_stream(self, source: Any) -> Observer:
        """Report on ``source`` read as a stream (``tail``): the caller reports its changes to the observer
        returned (``run_started``/``run_finished`` around each, ``settled`` after its ack)."""
        self.attach_source(source)
        self.observer = Observer(self.source_name, Router(), self.figures, acknowledges=True)
        self.observer.serving(True)
        return self.observer

    def attach(self, server: Any) -> Observer:
        """Observe ``server`` (a :class:`pgchanges.serving.Server`) and its runtime."""
        self.attach_source(server.source)
        figures = self.figures
        self.observer = Observer(
            self.source_name, server.runtime.router, figures, acknowledges=bool(server.source.acknowledges)
        )
        server.runtime.observer = self.observer
        server.observer = self.observer
        return self.observer

    def attach_feed(self, feed: Feed) -> None:
        """Serve ``feed`` (``/v1/changes``) beside the operator's routes, and show it on the dashboard."""
        self.feed = feed

    def mount(self, path: str) -> ASGIApp | None:
        """The ASGI app serving ``path``: the feed's, for its paths; None for the operator's own routes."""
        if self.feed is not None and path in FEED_PATHS:
            app: ASGIApp = self.feed.asgi()
            return app
        return None

    # -- figures -----------------------------------------------------------------------------------------

    def connections(self) -> dict[str, bool]:
        states: dict[str, bool] = {}
        probe = getattr(self.source, "connection_states", None)
        if callable(probe):
            states.update(probe())
        if self.sampler is not None and self.sampler.latest is not None:
            states["metrics"] = self.sampler.connected
        return states

    def lag_seconds(self) -> float | None:
        """The outbox: the oldest pending event's age (0 with none); polling: now minus the oldest watermark;
        otherwise the lag the source last measured (commit or heartbeat → handled)."""
        if self.source_name == "outbox" and self.sampler is not None and self.sampler.latest is not None:
            ages = [c.oldest_pending_seconds or 0.0 for c in self.sampler.latest.consumers]
            return max(ages, default=0.0)
        watermark_lag = getattr(self.source, "watermark_lag", None)
        if callable(watermark_lag):
            found = watermark_lag()
            if isinstance(found, float | int):
                return float(found)
        figures = self.figures
        return None if figures is None else figures.lag_seconds

    # -- running -----------------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Sample the database and answer HTTP until cancelled; ``task_status`` gets the bound port."""
        from pgchanges.ops import http  # noqa: PLC0415 - h11 only when used

        async with anyio.create_task_group() as tg:
            # listening first: a taken port fails before the sampler opens a connection it would leave behind
            self.port = await tg.start(partial(http.serve, self.config.http, self.respond, mount=self.mount))
            if self.sampler is not None:
                tg.start_soon(self.sampler.run)
            tg.start_soon(self.history.run, self)
            task_status.started(self.port)

    async def respond(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return _json(405, {"status": "method not allowed", "reason": "GET only"})
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST  # noqa: PLC0415

            from pgchanges.ops.metrics import exposition  # noqa: PLC0415

            return Response(200, exposition(self.registry), CONTENT_TYPE_LATEST)
        if path in ("/healthz", "/readyz"):
            verdict = health.alive(self) if path == "/healthz" else health.ready(self)
            return _json(200 if verdict.ok else 503, verdict.as_json())
        from pgchanges.ops import dashboard  # noqa: PLC0415

        if path == "/v1/status":
            return _json(200, dashboard.status(self))
        page = dashboard.asset(path)
        if page is not None:
            return Response(200, page[0], page[1])
        return _json(404, {"status": "not found", "reason": "try /, /metrics, /healthz or /readyz"})


def _json(status: int, body: dict[str, Any]) -> Response:
    body.setdefault("time", round(time.time(), 3))
    return Response(status, json.dumps(body).encode() + b"\n")
