"""What every command shares: the connection options, and the DSN they resolve to."""

from __future__ import annotations

import argparse

from pgchanges import conninfo as ci


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
