"""Commands that serve changes: ``tail`` (print them), ``run`` (an App from a module), ``demo``."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio

from pgchanges import conninfo as ci
from pgchanges.app import App
from pgchanges.cli.common import add_common, add_ops_arguments, conninfo_of, first_error
from pgchanges.display import format_change
from pgchanges.errors import ConfigError
from pgchanges.sources.factory import SOURCES
from pgchanges.stream import stream


def add_commands(sub: Any) -> None:
    p = sub.add_parser("tail", help="print changes as they happen")
    add_common(p)
    p.add_argument("tables", nargs="*", metavar="TABLE")
    p.add_argument("--ddl", action="store_true", help="also show schema changes (CREATE/ALTER/DROP)")
    p.add_argument("--source", default="notify", choices=SOURCES)
    p.add_argument("--format", default="text", choices=("text", "json"))
    p.add_argument("--ops", help="comma-separated ops to show (default: all)")
    p.add_argument("--count", type=int, help="exit after this many changes")
    p.add_argument("--no-install", action="store_true", help="fail instead of installing missing capture")
    p.add_argument(
        "--consumer", default="pgchanges-tail", help="outbox/polling consumer name (resumes where it stopped)"
    )
    p.add_argument("--slot", help="logical: replication slot (resumes where it stopped; default: a temporary one)")
    p.add_argument("--column", help="polling: the watermark column (e.g. updated_at)")
    p.add_argument("--interval", type=float, default=1.0, help="polling: seconds between polls (default 1)")
    p.add_argument("--soft-delete", help="polling: column that marks deleted rows (e.g. deleted_at)")
    p.add_argument(
        "--late-window",
        type=float,
        default=300.0,
        help="polling: how far behind the watermark late commits are looked for (seconds; default 300)",
    )
    p.add_argument("--state-file", help="polling: keep the watermark in this file (default: a table, else a file)")
    p.add_argument("--from-now", action="store_true", help="polling: a new consumer skips existing rows")
    add_ops_arguments(p)
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("run", help="run an App: pgchanges run package.module:app")
    add_common(p)
    p.add_argument("target", metavar="MODULE:APP")
    p.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    add_ops_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="embedded PostgreSQL, a demo table, writes, and the changes on screen")
    add_common(p)
    p.add_argument("--duration", type=float, default=15.0, help="seconds of writes (default 15)")
    p.add_argument("--rate", type=float, default=20.0, help="writes per second (default 20)")
    p.add_argument("--format", default="text", choices=("text", "json"))
    p.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    p.set_defaults(func=cmd_demo)


def cmd_tail(args: argparse.Namespace) -> int:
    ops = [op.strip() for op in args.ops.split(",")] if args.ops else None
    conninfo = conninfo_of(args)
    tail = partial(
        _tail,
        conninfo,
        tables=args.tables,
        source=args.source,
        fmt=args.format,
        ops=ops,
        count=args.count,
        auto_install=not args.no_install,
        options=_tail_options(args),
        ops_config=ops_config_of(args),
    )
    anyio.run(_until_signalled, tail)
    return 0


async def _until_signalled(run: Callable[[], Awaitable[None]]) -> None:
    """``run()`` until it returns or SIGINT/SIGTERM comes; then the stream closes (acknowledged work stays).

    Not KeyboardInterrupt: on asyncio that is a native task cancellation, which an anyio cancel scope whose
    deadline passes at the same moment (the logical source's heartbeat timer) can take for its own and absorb,
    so a Ctrl-C was lost now and then (CI saw ``tail`` ignore SIGINT for 30 s). An anyio cancel scope is
    level-triggered on both event loops.
    """
    try:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch)
            await run()
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # the task group wraps what run() raised
        raise first_error(group) from None


def ops_config_of(args: argparse.Namespace) -> Any:
    """The operator endpoint's settings from ``--http`` (None without it); the ops extra is checked here."""
    if not getattr(args, "http", None):
        return None
    from pgchanges.ops.service import OpsConfig, parse_size, require_extra  # noqa: PLC0415 - the optional extra

    require_extra()
    return OpsConfig(args.http, stall_after=args.stall_after, max_retained_bytes=parse_size(args.max_retained))


def _tail_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.ddl:
        if args.source != "notify":
            raise ConfigError("--ddl works with the notify source")
        return {"ddl": True}
    if not args.tables:
        raise ConfigError("name at least one TABLE, or --ddl")
    if args.source == "outbox":
        return {"consumer": args.consumer, "batch_size": 1, "lanes": 1}  # a terminal shows commit order
    if args.source == "logical":
        return {"slot": args.slot}
    if args.source == "polling":
        if not args.column:
            raise ConfigError("--source polling needs --column (the watermark column, e.g. updated_at)")
        return {
            "column": args.column,
            "consumer": args.consumer,
            "interval": args.interval,
            "soft_delete": args.soft_delete,
            "late_window": args.late_window,
            "state_file": args.state_file,
            "start": "now" if args.from_now else "beginning",
        }
    return {}


async def _tail(
    conninfo: str,
    *,
    tables: list[str],
    source: str,
    fmt: str,
    ops: list[str] | None,
    count: int | None,
    auto_install: bool,
    options: dict[str, Any],
    on_ready: Callable[[], Any] | None = None,
    ops_config: Any = None,
) -> None:
    async with stream(conninfo, tables=tables, source=source, ops=ops, auto_install=auto_install, **options) as changes:
        if on_ready:
            on_ready()
        what = ", ".join(tables) or "schema changes"
        print(f"-- tailing {what} ({source}); Ctrl-C to stop", file=sys.stderr, flush=True)
        if ops_config is None:
            await _print_changes(changes, fmt=fmt, count=count)
            return
        from pgchanges.ops.service import Ops  # noqa: PLC0415 - the optional extra

        endpoint = Ops(conninfo, ops_config, consumer=options.get("consumer") if source == "outbox" else None)
        observer = endpoint.attach_stream(changes.source)
        async with anyio.create_task_group() as tg:
            await tg.start(endpoint.run)
            await _print_changes(changes, fmt=fmt, count=count, observer=observer)
            tg.cancel_scope.cancel()


async def _print_changes(changes: Any, *, fmt: str, count: int | None, observer: Any = None) -> None:
    """Print (and acknowledge) each change; with an ``observer`` (``--http``), report each to it."""
    seen = 0
    async for change in changes:
        if change.op == "gap":
            print(format_change(change), file=sys.stderr, flush=True)
            if fmt == "text":
                continue
        token = None if observer is None else observer.run_started()
        line = change.to_json() if fmt == "json" else format_change(change)
        print(line, flush=True)
        await changes.ack(change)
        if observer is not None:
            observer.run_finished(token, [change])
            observer.settled()
        seen += 1
        if count is not None and seen >= count:
            return


def cmd_run(args: argparse.Namespace) -> int:
    app = load_app(args.target)
    if args.dsn:  # overrides the DSN the module gave its App
        app.conninfo = ci.resolve(args.dsn)
    if args.http:
        app.enable_ops(args.http, stall_after=args.stall_after, max_retained=args.max_retained)
    app.run(backend=args.backend)
    return 0


def load_app(target: str) -> App:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"expected MODULE:APP (e.g. shop.events:app), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        raise ConfigError(f"{target} is not a pgchanges.App (found {type(app).__name__})")
    return app


def cmd_demo(args: argparse.Namespace) -> int:
    from pgchanges.demo import run_demo  # noqa: PLC0415 - only the demo needs the embedded server

    return run_demo(args)
