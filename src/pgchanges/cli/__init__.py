"""The ``pgchanges`` command: install capture, tail changes, run an App, try the demo.

The DSN comes from ``--dsn``, else ``DATABASE_URL``, else libpq's ``PG*`` environment variables. Every failure
is one line on stderr with a non-zero exit status: no traceback, no password. Each group of commands is a
module of this package with an ``add_commands(subparsers)``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import psycopg

from pgchanges import conninfo as ci
from pgchanges.cli import (
    capture_commands,
    feed_commands,
    forward_commands,
    grant_commands,
    outbox_commands,
    stream_commands,
)
from pgchanges.errors import PgChangesError
from pgchanges.ops import logs

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
COMMAND_GROUPS = (capture_commands, stream_commands, outbox_commands, forward_commands, feed_commands, grant_commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgchanges", description="Do something when rows in PostgreSQL change.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
    return parser


def _configure_logging(verbosity: int, fmt: str = "text", dsn: str | None = None) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    for given in (dsn, os.environ.get("DATABASE_URL")):
        if given:
            logs.forget(given)  # its password is scrubbed from every line, whatever logs it
    logs.configure(level, fmt, sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, getattr(args, "log_format", "text"), getattr(args, "dsn", None))
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 0 if args.command in ("tail", "demo", "run", "feed") else EXIT_INTERRUPTED
    except PgChangesError as exc:
        print(f"pgchanges: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except psycopg.Error as exc:
        print(f"pgchanges: database error: {ci.describe_error(exc, getattr(args, 'dsn', '') or '')}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `pgchanges tail … | head`
        return 0
