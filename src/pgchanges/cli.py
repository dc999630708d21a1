"""The ``pgchanges`` command: install capture, tail changes, run an App, try the demo.

The DSN comes from ``--dsn``, else ``DATABASE_URL``, else libpq's ``PG*`` environment variables. Every failure
is one line on stderr with a non-zero exit status: no traceback, no password.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import anyio
import psycopg

from pgchanges import conninfo as ci
from pgchanges.app import App
from pgchanges.capture import ddl as ddl_capture
from pgchanges.capture import install as capture
from pgchanges.capture import logical_admin, outbox_admin
from pgchanges.db.connect import connect
from pgchanges.display import format_change
from pgchanges.errors import ConfigError, PgChangesError
from pgchanges.names import parse_table
from pgchanges.sources import poll_state
from pgchanges.sources.factory import SOURCES
from pgchanges.stream import stream

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", help="libpq connection string or URL (default: $DATABASE_URL, then PG* variables)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgchanges", description="Do something when rows in PostgreSQL change.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_capture_commands(sub)
    _add_stream_commands(sub)
    _add_outbox_commands(sub)
    return parser


def _add_capture_commands(sub: Any) -> None:
    p = sub.add_parser("install", help="install capture on tables (idempotent)")
    _common(p)
    p.add_argument("tables", nargs="*", metavar="TABLE")
    p.add_argument("--ddl", action="store_true", help="also install the DDL event triggers (needs a superuser)")
    p.add_argument("--source", default="notify", choices=capture.SOURCES)
    p.add_argument("--slot", help="logical: also create this replication slot")
    p.add_argument(
        "--replica-identity",
        choices=("default", "full"),
        default="default",
        help="logical: FULL sends whole old rows on update and delete",
    )
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("slots", help="list logical replication slots (WAL retained, lag), or drop one")
    _common(p)
    p.add_argument("action", nargs="?", choices=("list", "drop"), default="list")
    p.add_argument("name", nargs="?", help="slot to drop")
    p.set_defaults(func=cmd_slots)

    p = sub.add_parser("uninstall", help="remove capture (from TABLEs, or everything pgchanges created)")
    _common(p)
    p.add_argument("tables", nargs="*", metavar="TABLE")
    p.set_defaults(func=cmd_uninstall)

    p = sub.add_parser("status", help="show what is captured")
    _common(p)
    p.set_defaults(func=cmd_status)


def _add_stream_commands(sub: Any) -> None:
    p = sub.add_parser("tail", help="print changes as they happen")
    _common(p)
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
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("run", help="run an App: pgchanges run package.module:app")
    _common(p)
    p.add_argument("target", metavar="MODULE:APP")
    p.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="embedded PostgreSQL, a demo table, writes, and the changes on screen")
    _common(p)
    p.add_argument("--duration", type=float, default=15.0, help="seconds of writes (default 15)")
    p.add_argument("--rate", type=float, default=20.0, help="writes per second (default 20)")
    p.add_argument("--format", default="text", choices=("text", "json"))
    p.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    p.set_defaults(func=cmd_demo)


def _add_outbox_commands(sub: Any) -> None:
    p = sub.add_parser("dead-letters", help="list, retry or drop outbox events that failed too often")
    _common(p)
    p.add_argument("action", choices=("list", "retry", "drop"))
    p.add_argument("ids", nargs="*", type=int, metavar="EVENT_ID", help="only these events (default: all)")
    p.add_argument("--consumer", help="consumer name (required for retry and drop)")
    p.set_defaults(func=cmd_dead_letters)

    p = sub.add_parser("replay", help="deliver outbox events again to a consumer")
    _common(p)
    p.add_argument("--consumer", required=True)
    p.add_argument("--since", required=True, help="an event id, or an ISO 8601 time")
    p.set_defaults(func=cmd_replay)


def _conninfo(args: argparse.Namespace) -> str:
    return ci.resolve(args.dsn)


def cmd_install(args: argparse.Namespace) -> int:
    tables = [parse_table(t) for t in args.tables]
    if not tables and not args.ddl:
        raise ConfigError("name at least one TABLE, or --ddl")
    if args.ddl:
        with connect(_conninfo(args)) as conn:
            created = ddl_capture.install_ddl(conn)
        print("DDL event triggers " + ("installed" if created else "already installed"))
        if not tables:
            return 0
    if args.source == "logical":
        with connect(_conninfo(args)) as conn:
            publication = logical_admin.install_logical(conn, tables, args.slot, args.replica_identity == "full")
        print(
            f"logical capture installed on {', '.join(str(t) for t in tables)} (publication {publication}"
            + (f", slot {args.slot})" if args.slot else ")")
        )
        return 0
    with connect(_conninfo(args)) as conn:
        added = capture.install(conn, tables, args.source)
        now = {str(name): [str(t) for t, _ in capture.resolve(conn, [name])] for name in tables if name.is_pattern}
    for table in tables:
        if table.is_pattern:
            matched = ", ".join(now[str(table)]) or "no table yet"
            print(f"{args.source} capture installed for {table} (now: {matched}; tables created later too)")
            continue
        state = "installed" if table in added else "already installed"
        print(f"{args.source} capture {state} on {table}")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    tables = [parse_table(t) for t in args.tables] or None
    with connect(_conninfo(args)) as conn:
        removed = capture.uninstall(conn, tables)
    if not removed and tables is None:
        print("nothing to remove; schema pgchanges is gone")
    for table in removed:
        print(f"capture removed from {table}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with connect(_conninfo(args)) as conn:
        found = capture.captures(conn)
        rules = capture.rules(conn)
        following = ddl_capture.ddl_installed(conn)
        consumers = outbox_admin.consumer_status(conn) if found else []
        polling = poll_state.list_states(conn)
    if rules:
        how = "by the DDL event trigger" if following else "by consumers, every few seconds (install --ddl: at once)"
        print(f"capture rules (new and renamed tables are followed {how})")
        for rule in rules:
            publication = f" (publication {rule.publication})" if rule.publication else ""
            print(f"  {rule.source:<8} {rule.pattern}{publication}")
        print()
    if not found:
        print("nothing is captured")
    else:
        print("captured tables")
    for item in found:
        print(f"  {item.source:<8} {item.table}")
    if consumers:
        print()
        print(outbox_admin.format_status(consumers))
    if polling:
        print()
        print(f"{'polling consumer':<20} {'table':<32} {'watermark':<40} saved")
        for consumer, table, position, saved in polling:
            print(f"{consumer:<20} {table:<32} {position:<40} {saved:%Y-%m-%d %H:%M:%S}")
    return 0


def cmd_slots(args: argparse.Namespace) -> int:
    with connect(_conninfo(args)) as conn:
        if args.action == "drop":
            if not args.name:
                raise ConfigError("slots drop needs the slot name")
            logical_admin.drop_slot(conn, args.name)
            print(f"replication slot {args.name} dropped")
            return 0
        print(logical_admin.format_slots(logical_admin.list_slots(conn)))
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    ids = args.ids or None
    with connect(_conninfo(args)) as conn:
        if args.action == "list":
            rows = outbox_admin.dead_letters(conn, args.consumer)
            if not rows:
                print("no dead letters")
            for row in rows:
                print(row)
            return 0
        if not args.consumer:
            raise ConfigError(f"dead-letters {args.action} needs --consumer")
        if args.action == "retry":
            done = outbox_admin.retry_dead_letters(conn, args.consumer, ids)
            print(f"{len(done)} dead letter(s) of {args.consumer} queued again")
        else:
            done = outbox_admin.drop_dead_letters(conn, args.consumer, ids)
            print(f"{len(done)} dead letter(s) of {args.consumer} dropped")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    with connect(_conninfo(args)) as conn:
        count = outbox_admin.replay(conn, args.consumer, args.since)
    print(f"{count} event(s) queued again for {args.consumer}")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    ops = [op.strip() for op in args.ops.split(",")] if args.ops else None
    conninfo = _conninfo(args)
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
    )
    anyio.run(tail)
    return 0


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
) -> None:
    seen = 0
    async with stream(conninfo, tables=tables, source=source, ops=ops, auto_install=auto_install, **options) as changes:
        if on_ready:
            on_ready()
        what = ", ".join(tables) or "schema changes"
        print(f"-- tailing {what} ({source}); Ctrl-C to stop", file=sys.stderr, flush=True)
        async for change in changes:
            if change.op == "gap":
                print(format_change(change), file=sys.stderr, flush=True)
                if fmt == "text":
                    continue
            line = change.to_json() if fmt == "json" else format_change(change)
            print(line, flush=True)
            await changes.ack(change)
            seen += 1
            if count is not None and seen >= count:
                return


def cmd_run(args: argparse.Namespace) -> int:
    app = load_app(args.target)
    if args.dsn:  # overrides the DSN the module gave its App
        app.conninfo = ci.resolve(args.dsn)
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


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 0 if args.command in ("tail", "demo", "run") else EXIT_INTERRUPTED
    except PgChangesError as exc:
        print(f"pgchanges: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except psycopg.Error as exc:
        print(f"pgchanges: database error: {ci.describe_error(exc, getattr(args, 'dsn', '') or '')}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `pgchanges tail … | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
