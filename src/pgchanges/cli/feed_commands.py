"""``pgchanges feed TABLE… --http HOST:PORT``: serve the tables' changes over HTTP/SSE, with the dashboard at ``/``.

One capture (by default a logical slot; ``--source outbox`` an outbox consumer) feeds every client. Who may
read: the bearer tokens in the environment variable ``PGCHANGES_FEED_TOKENS`` (``alice=TOKEN,bob=TOKEN``:
principal, then token; never on the command line, where ``ps`` shows it), or ``--open`` (anyone: a trusted
network only). ``--window DIR`` keeps the retained log on disk so that clients resume across a restart; give
it ``--slot`` (or an outbox ``--consumer``) too, so that the capture resumes where it stopped.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from pgchanges.app import App
from pgchanges.cli.common import add_common, conninfo_of, first_error, source_options
from pgchanges.errors import ConfigError
from pgchanges.sources.factory import SOURCES

TOKENS_VARIABLE = "PGCHANGES_FEED_TOKENS"


def add_commands(sub: Any) -> None:
    p = sub.add_parser("feed", help="serve changes over HTTP/SSE (GET /v1/changes) with a dashboard at /")
    add_common(p)
    p.add_argument("tables", nargs="+", metavar="TABLE")
    p.add_argument("--http", required=True, metavar="HOST:PORT", help="where to listen (e.g. 127.0.0.1:8080)")
    p.add_argument("--source", default="logical", choices=SOURCES)
    p.add_argument("--slot", help="logical: the replication slot (default: a temporary one)")
    p.add_argument("--consumer", default="pgchanges-feed", help="outbox/polling consumer name")
    p.add_argument("--column", help="polling: the watermark column (e.g. updated_at)")
    p.add_argument("--window", metavar="DIR", help="keep the retained log in DIR: clients resume across restarts")
    p.add_argument("--no-fsync", action="store_true", help="with --window: do not sync each batch to disk")
    p.add_argument("--retain", type=int, default=100_000, help="changes the log retains (default 100000)")
    p.add_argument("--retain-bytes", default="256MB", help="JSON the log retains (default 256MB)")
    p.add_argument("--retain-seconds", type=float, help="forget changes older than this (default: no limit)")
    p.add_argument("--open", action="store_true", help="anyone may read (no tokens): for a trusted network only")
    p.add_argument("--stall-after", type=float, default=60.0, help="/readyz fails after this long without progress")
    p.add_argument("--max-retained", help="/readyz fails when the slot retains more WAL than this (e.g. 10GB)")
    p.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    p.set_defaults(func=cmd_feed)


def parse_tokens(text: str | None) -> dict[str, str]:
    """``alice=TOKEN,bob=TOKEN`` → {token: principal}; a malformed entry is a ConfigError (without the token)."""
    tokens: dict[str, str] = {}
    for number, item in enumerate((text or "").replace("\n", ",").split(","), start=1):
        if not item.strip():
            continue
        principal, sep, token = item.strip().partition("=")
        if not sep or not principal or not token:
            raise ConfigError(f"{TOKENS_VARIABLE}: entry {number} is not PRINCIPAL=TOKEN")
        tokens[token] = principal
    return tokens


def build_app(args: argparse.Namespace, environ: dict[str, str] | None = None) -> App:
    """The App that ``pgchanges feed`` serves: the feed's capture only, and the endpoint on ``--http``."""
    from pgchanges.feed import Retention  # noqa: PLC0415 - the feed extra
    from pgchanges.ops.service import parse_size  # noqa: PLC0415

    tokens = parse_tokens((os.environ if environ is None else environ).get(TOKENS_VARIABLE))
    if args.open and tokens:
        raise ConfigError(f"--open and {TOKENS_VARIABLE} exclude each other")
    if not args.open and not tokens:
        raise ConfigError(f"say who may read: set {TOKENS_VARIABLE}=principal=token,… or pass --open")
    app = App(
        conninfo_of(args),
        source=args.source,
        handler_timeout=None,
        application_name="pgchanges feed",
        http=args.http,
        stall_after=args.stall_after,
        max_retained=args.max_retained,
        **source_options(args),
    )
    retention = Retention(
        max_changes=args.retain, max_bytes=parse_size(args.retain_bytes) or 1, max_age=args.retain_seconds
    )
    access: dict[str, Any] = {"open": True} if args.open else {"tokens": tokens}
    app.feed(args.tables, retention=retention, window=args.window, fsync=not args.no_fsync, **access)
    return app


def cmd_feed(args: argparse.Namespace) -> int:
    try:
        build_app(args).run(backend=args.backend)
    except BaseExceptionGroup as group:
        raise first_error(group) from None  # e.g. the port is taken: one line, not a traceback
    return 0
