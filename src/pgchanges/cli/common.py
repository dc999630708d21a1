"""What every command shares: the connection options, and the DSN they resolve to."""

from __future__ import annotations

import argparse

from pgchanges import conninfo as ci


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", help="libpq connection string or URL (default: $DATABASE_URL, then PG* variables)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")


def conninfo_of(args: argparse.Namespace) -> str:
    return ci.resolve(args.dsn)
