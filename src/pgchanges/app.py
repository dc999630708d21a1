"""App: subscriptions, handler dispatch and lifecycle.

app = pgchanges.App(dsn)

@app.on("public.orders", ops={"insert", "update"})
async def order_changed(change): ...

app.run()                 # blocking, stops on SIGINT/SIGTERM
await app.serve()         # inside a trio or asyncio program
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
from anyio.abc import TaskStatus

from pgchanges import conninfo as ci
from pgchanges.capture.follow import follow_schema
from pgchanges.capture.install import SOURCES as CAPTURES
from pgchanges.change import Change
from pgchanges.db.listener import Notification
from pgchanges.errors import ConfigError
from pgchanges.forwarding import Forwarder, Transform, make_forwarder
from pgchanges.names import TableName, parse_table
from pgchanges.ops import logs
from pgchanges.periodic import MissedPolicy, PeriodicTask, Schedule, Scheduler, parse_interval
from pgchanges.routing import APP_DEFAULT, Predicate, Router, check_handler_arguments
from pgchanges.runtime import ErrorPolicy, Runtime
from pgchanges.serving import Callbacks, Server
from pgchanges.sinks.base import Sink
from pgchanges.sinks.options import DEFAULT_WINDOW
from pgchanges.sources import base as features
from pgchanges.sources.base import Source
from pgchanges.sources.factory import make_source
from pgchanges.sources.options import options_for

if TYPE_CHECKING:
    from pgchanges.feed import Feed
    from pgchanges.ops.service import Ops

log = logging.getLogger("pgchanges.app")

F = TypeVar("F", bound=Callable[..., Any])
NotificationHandler = Callable[[Notification], Awaitable[None] | None]
GapHandler = Callable[[Change], Awaitable[None] | None]


class _SourceDefault:
    def __repr__(self) -> str:
        return "the source's default"


#: ``handler_timeout`` not given: 60 s on a source that retries (outbox), no limit elsewhere.
SOURCE_DEFAULT: Final = _SourceDefault()
RETRYING_SOURCE_TIMEOUT = 60.0


class App:
    """A set of handlers for changes, served from one source.

    Tables may be patterns (``"public.*"``, ``"sales.order_*"``): tables created later that match are
    captured too. With the DDL event triggers (``pgchanges install --ddl``) that happens in the creating
    transaction; without them the App checks every ``follow_interval`` seconds (0: never) that capture still
    matches the schema (new, renamed and recreated tables).
    """

    def __init__(
        self,
        dsn: ci.ConnectionSource = None,
        *,
        engine: Any = None,
        source: str = "notify",
        on_error: ErrorPolicy = "log",
        auto_install: bool = True,
        shutdown_timeout: float = 10.0,
        application_name: str = ci.DEFAULT_APPLICATION_NAME,
        follow_interval: float = 10.0,
        handler_timeout: float | _SourceDefault | None = SOURCE_DEFAULT,
        http: str | None = None,
        stall_after: float = 60.0,
        max_retained: int | str | None = None,
        **source_options: Any,
    ) -> None:
        self.conninfo = ci.resolve(dsn, engine=engine, application_name=application_name)
        self.source_kind = source
        self.options = options_for(source, source_options)  # a misspelt option fails here, not at serve()
        if not (on_error in ("log", "stop") or callable(on_error)):
            raise ConfigError(f"on_error must be 'log', 'stop' or a callable, not {on_error!r}")
        self.router = Router()
        self._on_error = on_error
        self._handler_timeout = handler_timeout
        self._auto_install = auto_install
        self._shutdown_timeout = shutdown_timeout
        self._follow_interval = follow_interval
        self._callbacks = Callbacks()
        self._periodic: list[PeriodicTask] = []
        self._forwarders: list[Forwarder] = []
        self.feeds: list[Feed] = []  # app.feed(...): the HTTP/SSE change feed (at most one)
        self._stop: anyio.Event | None = None  # created inside the running event loop
        self._stop_requested = False
        self.source: Source | None = None
        self.scheduler: Scheduler | None = None
        self.server: Server | None = None
        self.ops: Ops | None = None  # the operator endpoint (http=): metrics, /healthz, /readyz
        if http is not None:
            self.enable_ops(http, stall_after=stall_after, max_retained=max_retained)

    def __repr__(self) -> str:
        return f"App(source={self.source_kind!r}, {ci.redact(self.conninfo)}, tables={self.tables})"

    # -- subscriptions -----------------------------------------------------------------------------------

    def on(
        self,
        table: str | TableName,
        ops: Iterable[str] | str | None = None,
        where: Predicate | None = None,
        *,
        transaction: bool = False,
    ) -> Callable[[F], F]:
        """Subscribe the decorated handler to changes of ``table`` (``ops`` default: all row ops and truncate).

        ``where`` is an optional predicate on the change; the handler sees only changes for which it is true
        (a ``where`` that raises counts as a failure of the handler). With ``transaction=True`` the handler is
        called as ``handler(change, tx)`` with the outbox transaction that acknowledges the change, so its
        writes commit exactly once together with the acknowledgement.
        """

        def decorate(handler: F) -> F:
            self.router.add(table, ops, handler, where, transaction=transaction)
            return handler

        return decorate

    def forward(
        self,
        tables: str | TableName | Iterable[str | TableName],
        *,
        to: str | Sink,
        ops: Iterable[str] | str | None = None,
        where: Predicate | None = None,
        transform: Transform | None = None,
        format: str = "json",
        window: int = DEFAULT_WINDOW,
        dead_letter_table: str | None = None,
        **options: Any,
    ) -> Forwarder:
        """Forward the changes of ``tables`` to a broker or webhook: ``to`` is ``nats://…``, ``redis://…``,
        ``amqp://…``, ``http(s)://…`` (with that sink's ``options``, e.g. ``subject=``, ``stream=``) or a Sink.

        ``ops`` and ``where`` as for :meth:`on`; ``transform(change)`` returns the payload to send instead of
        the ``format`` (json, cloudevents, debezium), or None to skip the change. The source's position advances
        only once the broker confirmed every change before it; ``window`` changes are in flight at a time. A
        change the broker can never take fails: the outbox retries it, then makes it a dead letter; logical and
        polling stop serving without acknowledging it, unless ``dead_letter_table`` names a table to put it in.
        """
        if dead_letter_table is not None and self.source_kind == "outbox":
            raise ConfigError("the outbox keeps its own dead letters (pgchanges dead-letters); drop dead_letter_table")
        forwarder = make_forwarder(
            self.conninfo, to, format=format, transform=transform, window=window, dead_letter_table=dead_letter_table,
            **options,
        )  # fmt: skip
        stop = self.source_kind in ("logical", "polling") and dead_letter_table is None
        handler = forwarder.handler()
        chosen = [tables] if isinstance(tables, str | TableName) else list(tables)
        for table in chosen:
            self.router.add(
                table, ops, handler, where, batch=True, on_error="stop" if stop else APP_DEFAULT, timeout=None,
                prepare=forwarder.prepare,
            )  # fmt: skip
        self._forwarders.append(forwarder)
        return forwarder

    def feed(self, tables: str | TableName | Iterable[str | TableName], **options: Any) -> Feed:
        """Serve the changes of ``tables`` over HTTP (``GET /v1/changes``, JSON pages and Server-Sent Events)
        on the ``http=`` endpoint, or mount ``feed.asgi()`` in your own ASGI app; ``options`` are those of
        :class:`pgchanges.feed.Feed` (``tokens=``/``authorize=``/``open=True``, ``allow=``, ``hide=``,
        ``retention=``, ``window=``). One capture feeds every client; docs/feed.md tells more."""
        from pgchanges.feed import Feed  # noqa: PLC0415 - the feed extra

        if self.feeds:
            raise ConfigError("an App serves one feed: give app.feed() every table at once")
        feed = Feed(tables, **options)
        stop = self.source_kind in ("logical", "polling")  # a change not in the log must not be acknowledged
        for table in feed.tables:
            self.router.add(
                table, None, feed.handler(), batch=True, on_error="stop" if stop else APP_DEFAULT, timeout=None
            )
        self.feeds.append(feed)
        return feed

    def on_notify(self, channel: str) -> Callable[[F], F]:
        """Subscribe the decorated handler to plain NOTIFY messages on ``channel`` (any name, quoted for us)."""

        def decorate(handler: F) -> F:
            check_handler_arguments(handler, _name(handler), 1)
            self._callbacks.channels.setdefault(channel, []).append(handler)
            return handler

        return decorate

    def on_transaction(self, tables: Iterable[str | TableName] | None = None) -> Callable[[F], F]:
        """Subscribe the decorated handler to whole transactions: ``handler(changes)`` gets every change of one
        committed transaction (of ``tables``, or of every subscribed table) at once, all or nothing.

        Needs ``source="logical"`` (the source that sees transaction boundaries). The slot does not pass a
        transaction before its handler returned, so after a crash the transaction is delivered whole again.
        A transaction's changes are held in memory until it commits.
        """
        chosen = (
            None if tables is None else frozenset(t if isinstance(t, TableName) else parse_table(t) for t in tables)
        )

        def decorate(handler: F) -> F:
            check_handler_arguments(handler, _name(handler), 1)
            self._callbacks.transactions.append((chosen, handler))
            return handler

        return decorate

    def every(
        self, interval: str | float | timedelta, *, name: str | None = None, missed: MissedPolicy = "once"
    ) -> Callable[[F], F]:
        """Run the decorated function every ``interval`` ("30s", "5m", "2h", "1d"), once across all workers.

        Runs are aligned to multiples of the interval. The function may take the scheduled time as argument.
        ``missed``: what to do about periods missed while every worker was down ("once", "all", "skip").
        """
        schedule = Schedule(interval=parse_interval(interval))
        return self._periodic_decorator(schedule, name, missed)

    def cron(
        self, expression: str, *, tz: str = "UTC", name: str | None = None, missed: MissedPolicy = "once"
    ) -> Callable[[F], F]:
        """Run the decorated function on a cron schedule (in time zone ``tz``), once across all workers."""
        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"unknown time zone {tz!r}") from None
        return self._periodic_decorator(Schedule(cron=expression, tz=zone), name, missed)

    def _periodic_decorator(self, schedule: Schedule, name: str | None, missed: MissedPolicy) -> Callable[[F], F]:
        if missed not in ("once", "all", "skip"):
            raise ConfigError(f"missed must be 'once', 'all' or 'skip', not {missed!r}")

        def decorate(func: F) -> F:
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            if any(t.name == task_name for t in self._periodic):
                raise ConfigError(f"a periodic task named {task_name!r} exists already")
            self._periodic.append(PeriodicTask(task_name, schedule, func, missed))
            return func

        return decorate

    def on_ddl(self, handler: F) -> F:
        """Call ``handler(change)`` with an ``op="ddl"`` change for every CREATE/ALTER/DROP (notify source).

        Installs the event triggers when missing, which needs a superuser (or run `pgchanges install --ddl`).
        """
        check_handler_arguments(handler, _name(handler), 1)
        self._callbacks.ddl.append(handler)
        return handler

    def on_gap(self, handler: F) -> F:
        """Call ``handler(change)`` with an ``op="gap"`` change when changes may have been missed."""
        check_handler_arguments(handler, _name(handler), 1)
        self._callbacks.gaps.append(handler)
        return handler

    @property
    def tables(self) -> list[TableName]:
        """Every table a handler subscribed to (per-change routes and transaction handlers)."""
        named = [t for chosen, _ in self._callbacks.transactions if chosen for t in sorted(chosen)]
        return list(dict.fromkeys([*self.router.tables, *named]))

    # -- lifecycle ---------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask a running app to finish its queued changes and return from serve()/run()."""
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop` is called. Works under trio and asyncio."""
        self._stop = anyio.Event()
        if self._stop_requested:
            self._stop.set()
        serves_changes = bool(self.tables or self._callbacks.channels or self._callbacks.ddl)
        if not serves_changes and not self._periodic:
            raise ConfigError("nothing to serve: add a handler (@app.on, @app.on_notify) or a periodic task")
        self.server = self._server() if serves_changes else None  # a ConfigError here, before any task starts
        log_context = logs.serving_context.set(self._log_context())
        try:
            await self._serve_all(task_status)
        finally:
            logs.serving_context.reset(log_context)

    def _log_context(self) -> dict[str, str]:
        """What every line logged while serving carries (``--log-format json``): source, consumer, slot."""
        context = {"source": self.source_kind}
        found = {"consumer": getattr(self.options, "consumer", None), "slot": getattr(self.source, "slot", None)}
        for key, value in found.items():
            if isinstance(value, str):
                context[key] = value
        return context

    async def _serve_all(self, task_status: TaskStatus[None]) -> None:
        assert self._stop is not None
        async with anyio.create_task_group() as outer:
            for feed in self.feeds:
                await feed.open(self.source_kind)  # reads its window back before any change comes
                outer.start_soon(feed.keep_open)
                if self.ops is not None:
                    self.ops.attach_feed(feed)
            if self.ops is not None:
                if self.server is not None:
                    self.ops.attach(self.server)
                await outer.start(self.ops.run)
            if self._periodic:
                self.scheduler = Scheduler(self.conninfo, self._periodic)
                outer.start_soon(self.scheduler.run)
            for forwarder in self._forwarders:
                outer.start_soon(forwarder.keep_open)  # closes its sink when serving ends
            if self.tables and self._auto_install and self._follow_interval > 0 and self.source_kind in CAPTURES:
                outer.start_soon(follow_schema, self.conninfo, self._follow_interval)
            try:
                if self.server is not None:
                    outer.start_soon(self._stop_server_when_asked)
                    await self.server.serve(task_status)
                else:
                    log.info("running %d periodic task(s)", len(self._periodic))
                    task_status.started()
                    await self._stop.wait()
            finally:
                outer.cancel_scope.cancel()

    def enable_ops(self, http: str, *, stall_after: float = 60.0, max_retained: int | str | None = None) -> None:
        """Serve metrics, /healthz and /readyz on ``http`` (HOST:PORT) while the App serves (the ops extra).

        ``/readyz`` fails once changes are pending and the position has not advanced for ``stall_after``
        seconds, or when the slot retains more than ``max_retained`` (bytes, or "10GB")."""
        from pgchanges.ops.service import Ops, OpsConfig, parse_size  # noqa: PLC0415 - the optional extra

        config = OpsConfig(http, stall_after=stall_after, max_retained_bytes=parse_size(max_retained))
        consumer = getattr(self.options, "consumer", None) if self.source_kind == "outbox" else None
        self.ops = Ops(self.conninfo, config, consumer=consumer)

    def _server(self) -> Server:
        """The source and runtime for this App's handlers, checked against what the source can do."""
        source = make_source(
            self.conninfo,
            self.tables,
            self.options,
            channels=list(self._callbacks.channels),
            auto_install=self._auto_install,
            ddl=bool(self._callbacks.ddl),
            whole_transactions=bool(self._callbacks.transactions),
        )
        self._check_features(source.features)
        self.source = source
        timeout = self._handler_timeout
        if isinstance(timeout, _SourceDefault):
            timeout = RETRYING_SOURCE_TIMEOUT if features.RETRIES in source.features else None
        runtime = Runtime(self.router, self._on_error, timeout)
        return Server(source, runtime, self._callbacks, tables=self._describe_tables())

    def _check_features(self, offered: frozenset[str]) -> None:
        wanted = {
            features.DDL: ("on_ddl handlers", "notify", bool(self._callbacks.ddl)),
            features.WHOLE_TRANSACTIONS: ("on_transaction handlers", "logical", bool(self._callbacks.transactions)),
            features.TRANSACTION: (
                "handlers declared with transaction=True",
                "outbox",
                any(r.transaction for r in self.router.routes),
            ),
            features.CHANNELS: ("on_notify handlers", "notify", bool(self._callbacks.channels)),
        }
        for feature, (what, where, used) in wanted.items():
            if used and feature not in offered:
                raise ConfigError(f"{what} need source={where!r} (this App uses source={self.source_kind!r})")

    async def _stop_server_when_asked(self) -> None:
        assert self._stop is not None
        await self._stop.wait()
        if self.server is not None:
            self.server.stop()

    def _describe_tables(self) -> str:
        return ", ".join(str(t) for t in self.tables) or "no tables"

    def run(self, backend: Literal["asyncio", "trio"] = "asyncio") -> None:
        """Serve until SIGINT or SIGTERM; queued changes get ``shutdown_timeout`` seconds (or a second signal)."""
        anyio.run(self._serve_until_signalled, backend=backend)

    async def _serve_until_signalled(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_signals, tg.cancel_scope)
            await self.serve()
            tg.cancel_scope.cancel()

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s; finishing queued changes", signal.Signals(signum).name)
                self.stop()
                break
            with anyio.move_on_after(self._shutdown_timeout):
                async for _ in signals:
                    break
        log.warning("shutdown did not finish in time (or a second signal came); cancelling handlers")
        scope.cancel()


def _name(handler: Callable[..., Any]) -> str:
    return getattr(handler, "__qualname__", repr(handler))
