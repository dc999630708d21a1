"""App: subscriptions, handler dispatch and lifecycle.

app = pgchanges.App(dsn)

@app.on("public.orders", ops={"insert", "update"})
async def order_changed(change): ...

app.run()                 # blocking, stops on SIGINT/SIGTERM
await app.serve()         # inside a trio or asyncio program
"""

from __future__ import annotations

import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from functools import partial
from typing import Any, Literal, TypeVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
from anyio.abc import TaskStatus

from pgchanges import conninfo as ci
from pgchanges.capture.follow import follow_schema
from pgchanges.capture.install import SOURCES as CAPTURES
from pgchanges.change import Change
from pgchanges.db.listener import Notification
from pgchanges.dispatch import Dispatcher, ErrorPolicy
from pgchanges.errors import ConfigError
from pgchanges.handling import Handling
from pgchanges.names import TableName, parse_table
from pgchanges.periodic import MissedPolicy, PeriodicTask, Schedule, Scheduler, parse_interval
from pgchanges.routing import Predicate, Router
from pgchanges.sources.base import DurableSource, Source
from pgchanges.sources.factory import make_source

log = logging.getLogger("pgchanges.app")

F = TypeVar("F", bound=Callable[..., Any])
NotificationHandler = Callable[[Notification], Awaitable[None] | None]
GapHandler = Callable[[Change], Awaitable[None] | None]


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
        **source_options: Any,
    ) -> None:
        self.conninfo = ci.resolve(dsn, engine=engine, application_name=application_name)
        self.source_kind = source
        self.router = Router()
        self._on_error = on_error
        self._auto_install = auto_install
        self._shutdown_timeout = shutdown_timeout
        self._follow_interval = follow_interval
        self._source_options = source_options
        self._channel_handlers: dict[str, list[NotificationHandler]] = {}
        self._gap_handlers: list[GapHandler] = []
        self._transaction_handlers: list[tuple[frozenset[TableName] | None, Callable[..., Any]]] = []
        self._periodic: list[PeriodicTask] = []
        self._ddl_handlers: list[Callable[..., Any]] = []
        self._stop: anyio.Event | None = None  # created inside the running event loop
        self._stop_requested = False
        self.source: Source | None = None
        self.scheduler: Scheduler | None = None
        self.dispatcher: Dispatcher | None = None

    def __repr__(self) -> str:
        return f"App(source={self.source_kind!r}, {ci.redact(self.conninfo)}, tables={self.tables})"

    # -- subscriptions -----------------------------------------------------------------------------------

    def on(
        self, table: str | TableName, ops: Iterable[str] | str | None = None, where: Predicate | None = None
    ) -> Callable[[F], F]:
        """Subscribe the decorated handler to changes of ``table`` (``ops`` default: all row ops and truncate).

        ``where`` is an optional predicate on the change; the handler sees only changes for which it is true.
        """

        def decorate(handler: F) -> F:
            self.router.add(table, ops, handler, where)
            return handler

        return decorate

    def on_notify(self, channel: str) -> Callable[[F], F]:
        """Subscribe the decorated handler to plain NOTIFY messages on ``channel`` (any name, quoted for us)."""

        def decorate(handler: F) -> F:
            self._channel_handlers.setdefault(channel, []).append(handler)
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
            self._transaction_handlers.append((chosen, handler))
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
        self._ddl_handlers.append(handler)
        return handler

    def on_gap(self, handler: F) -> F:
        """Call ``handler(change)`` with an ``op="gap"`` change when changes may have been missed."""
        self._gap_handlers.append(handler)
        return handler

    @property
    def tables(self) -> list[TableName]:
        """Every table a handler subscribed to (per-change routes and transaction handlers)."""
        named = [t for chosen, _ in self._transaction_handlers if chosen for t in sorted(chosen)]
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
        async with anyio.create_task_group() as outer:
            if self._periodic:
                self.scheduler = Scheduler(self.conninfo, self._periodic)
                outer.start_soon(self.scheduler.run)
            if self.tables and self._auto_install and self._follow_interval > 0 and self.source_kind in CAPTURES:
                outer.start_soon(follow_schema, self.conninfo, self._follow_interval)
            try:
                if self.tables or self._channel_handlers or self._ddl_handlers:
                    await self._serve_changes(task_status)
                elif self._periodic:
                    log.info("running %d periodic task(s)", len(self._periodic))
                    task_status.started()
                    await self._stop.wait()
                else:
                    raise ConfigError("nothing to serve: add a handler (@app.on, @app.on_notify) or a periodic task")
            finally:
                outer.cancel_scope.cancel()

    async def _serve_changes(self, task_status: TaskStatus[None]) -> None:
        assert self._stop is not None
        if self._ddl_handlers and self.source_kind != "notify":
            raise ConfigError("on_ddl handlers need source='notify' (DDL events are NOTIFYed)")
        source = make_source(
            self.source_kind,
            self.conninfo,
            self.tables,
            list(self._channel_handlers),
            auto_install=self._auto_install,
            **({"ddl": True} if self._ddl_handlers else {}),
            **self._source_options,
        )
        self.source = source
        await source.open()
        log.info(
            "listening for changes (%s) on %s",
            self.source_kind,
            ", ".join(str(t) for t in self.tables) or "no tables",
        )
        try:
            if isinstance(source, DurableSource):
                await self._serve_durable(source, task_status)
                return
            async with Dispatcher(self.router, self._on_error) as dispatcher:
                self.dispatcher = dispatcher
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._consume, source, dispatcher, tg.cancel_scope)
                    task_status.started()
                    await self._stop.wait()
                    tg.cancel_scope.cancel()
                log.info("stopping: finishing queued changes")
        finally:
            with anyio.CancelScope(shield=True):
                await source.close()

    async def _serve_durable(self, source: DurableSource, task_status: TaskStatus[None]) -> None:
        assert self._stop is not None
        async with anyio.create_task_group() as tg:
            if self._transaction_handlers and self.source_kind != "logical":
                raise ConfigError("on_transaction handlers need source='logical'")
            if self.source_kind == "logical":
                serve: Any = cast(Any, source).serve
                on_transaction = self._handle_transaction if self._transaction_handlers else None
                tg.start_soon(partial(serve, Handling(self.router, self._on_error), on_transaction=on_transaction))
            elif self.source_kind == "outbox":  # retries failed changes itself
                await cast(Any, source).prepare_serving()
                tg.start_soon(source.serve, Handling(self.router))
            else:
                tg.start_soon(source.serve, Handling(self.router, self._on_error))
            task_status.started()
            await self._stop.wait()
            log.info("stopping: finishing the batch in hand")
            source.stop()

    async def _handle_transaction(self, changes: list[Change]) -> None:
        for tables, handler in self._transaction_handlers:
            picked = [c for c in changes if tables is None or any(t.matches(c.schema, c.table) for t in tables)]
            if picked:
                await _call_safely(handler, picked, f"transaction {picked[0].xid}")

    async def _consume(self, source: Source, dispatcher: Dispatcher, scope: anyio.CancelScope) -> None:
        async for batch in source.batches():
            changes: list[Change] = []
            for event in batch:
                if isinstance(event, Notification):
                    await self._flush(dispatcher, changes)
                    changes = []
                    await self._handle_notification(event)
                elif event.op == "gap":
                    await self._flush(dispatcher, changes)
                    changes = []
                    await self._handle_gap(event)
                elif event.op == "ddl":
                    await self._flush(dispatcher, changes)
                    changes = []
                    for handler in self._ddl_handlers:
                        await _call_safely(handler, event, event.id)
                else:
                    changes.append(event)
            await self._flush(dispatcher, changes)
            await source.ack(changes)

    @staticmethod
    async def _flush(dispatcher: Dispatcher, changes: list[Change]) -> None:
        if changes:
            await dispatcher.dispatch(changes)

    async def _handle_notification(self, note: Notification) -> None:
        for handler in self._channel_handlers.get(note.channel, ()):
            await _call_safely(handler, note, f"notification on {note.channel!r}")

    async def _handle_gap(self, change: Change) -> None:
        log.warning("possible gap in changes: %s", (change.extra or {}).get("reason"))
        for handler in self._gap_handlers:
            await _call_safely(handler, change, change.id)

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


async def _call_safely(handler: Callable[[Any], Any], arg: Any, what: str) -> None:
    try:
        result = handler(arg)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("handler %s failed for %s", getattr(handler, "__qualname__", handler), what)
