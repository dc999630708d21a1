"""What every command shares: the connection options, the DSN they resolve to, the source options of the
commands that serve a source (forward, feed), and the one error a task group's failure is reported as."""

from __future__ import annotations

import argparse
from typing import Any

from pgchanges import conninfo as ci
from pgchanges.errors import ConfigError, PgChangesError


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", help="libpq connection string or URL (default: $DATABASE_URL, then PG* variables)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument(
        "--log-format", default="text", choices=("text", "json"), help="json: one object per line (for machines)"
    )


def add_ops_arguments(parser: argparse.ArgumentParser) -> None:
    """``--http`` and what readiness checks: for commands that serve changes (run, tail, forward)."""
    parser.add_argument("--http", metavar="HOST:PORT", help="serve /metrics, /healthz and /readyz here (ops extra)")
    stall = "/readyz fails when changes are pending and the position has not advanced this long (default 60 s)"
    parser.add_argument("--stall-after", type=float, default=60.0, help=stall)
    parser.add_argument("--max-retained", help="/readyz fails when the slot retains more WAL than this (e.g. 10GB)")


def conninfo_of(args: argparse.Namespace) -> str:
    return ci.resolve(args.dsn)


def source_options(args: argparse.Namespace) -> dict[str, Any]:
    """The App options of ``--source`` from ``--slot``, ``--consumer``, ``--column`` (and ``--interval``)."""
    if args.source == "logical":
        return {"slot": args.slot}
    if args.source == "outbox":
        return {"consumer": args.consumer}
    if args.source == "polling":
        if not args.column:
            raise ConfigError("--source polling needs --column (the watermark column, e.g. updated_at)")
        given = {"column": args.column, "consumer": args.consumer, "interval": getattr(args, "interval", None)}
        return {k: v for k, v in given.items() if v is not None}
    return {}


def first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """What to report of a group: the first pgchanges error in it (one line on stderr), else the group."""
    for member in group.exceptions:
        found = first_error(member) if isinstance(member, BaseExceptionGroup) else member
        if isinstance(found, PgChangesError | KeyboardInterrupt):
            return found
    return group
