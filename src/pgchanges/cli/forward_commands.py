"""``pgchanges forward TABLE… --to URL``: deliver changes to NATS, Redis, RabbitMQ or a webhook.

With ``--slot NAME`` (logical) or a polling ``--consumer``, several processes may run the same command: one
holds the slot's advisory lock and forwards, the others wait and take over when it dies
(:mod:`pgchanges.standby`). The webhook secret comes from an environment variable, never the command line.
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from typing import Any

import anyio

from pgchanges.app import App
from pgchanges.cli.common import add_common, conninfo_of, first_error, source_options
from pgchanges.errors import ConfigError
from pgchanges.sinks.formats import FORMATS
from pgchanges.sinks.options import scheme_of
from pgchanges.sources.factory import SOURCES
from pgchanges.standby import SlotLock, lock_name, serve_holding

SECRET_VARIABLE = "PGCHANGES_WEBHOOK_SECRET"  # noqa: S105 - the name of the variable, not a secret


def add_commands(sub: Any) -> None:
    p = sub.add_parser("forward", help="forward changes to a broker or webhook (nats://, redis://, amqp://, http://)")
    add_common(p)
    p.add_argument("tables", nargs="+", metavar="TABLE")
    p.add_argument(
        "--to", required=True, metavar="URL", help="nats://host:4222, redis://host:6379/0, amqp://…, https://…"
    )
    p.add_argument("--source", default="logical", choices=SOURCES)
    p.add_argument("--slot", help="logical: the replication slot (a hot standby waits for whoever holds it)")
    p.add_argument("--consumer", default="pgchanges-forward", help="outbox/polling consumer name")
    p.add_argument("--subject", help="template of the subject / stream / routing key: {schema} {table} {op} {key}")
    p.add_argument("--format", default="json", choices=FORMATS)
    p.add_argument("--ops", help="comma-separated ops to forward (default: all)")
    p.add_argument("--window", type=int, help="changes in flight at once (default 1000)")
    p.add_argument("--stream", help="nats: the JetStream stream (created when missing; default PGCHANGES)")
    p.add_argument("--dedup-window", type=float, help="nats: seconds JetStream dedups by Nats-Msg-Id (default 120)")
    p.add_argument("--maxlen", type=int, help="redis: trim each stream to about this many entries (MAXLEN ~)")
    p.add_argument("--exchange", help="amqp: the durable topic exchange (default pgchanges)")
    p.add_argument("--batch-size", type=int, help="http: changes per POST (default 100)")
    p.add_argument("--linger", type=float, help="http: seconds to wait for a fuller batch (default 0)")
    p.add_argument("--dead-letter-table", help="logical/polling: refused changes go to this table instead of stopping")
    p.add_argument("--column", help="polling: the watermark column (e.g. updated_at)")
    p.add_argument("--interval", type=float, help="polling: seconds between polls (default 1)")
    p.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    p.set_defaults(func=cmd_forward)


def _sink_options(args: argparse.Namespace) -> dict[str, Any]:
    named = {
        "nats": {"stream": args.stream, "dedup_window": args.dedup_window},
        "redis": {"maxlen": args.maxlen},
        "amqp": {"exchange": args.exchange},
        "http": {"batch_size": args.batch_size, "linger": args.linger, "secret": os.environ.get(SECRET_VARIABLE)},
    }
    kind = {"https": "http", "amqps": "amqp", "rediss": "redis"}.get(scheme_of(args.to), scheme_of(args.to))
    chosen = named.get(kind, {})
    others = {k for other, opts in named.items() if other != kind for k, v in opts.items() if v is not None}
    others.discard("secret")
    if others:
        raise ConfigError(f"--{'/--'.join(sorted(o.replace('_', '-') for o in others))} do not apply to {kind}://")
    return {"subject": args.subject, **chosen}


def build_app(args: argparse.Namespace) -> App:
    """The App that ``pgchanges forward`` serves: only the forwarder's routes, no handler timeout."""
    app = App(
        conninfo_of(args),
        source=args.source,
        handler_timeout=None,
        application_name="pgchanges forward",
        **source_options(args),
    )
    ops = [op.strip() for op in args.ops.split(",")] if args.ops else None
    extra = {"window": args.window} if args.window else {}
    app.forward(
        args.tables,
        to=args.to,
        ops=ops,
        format=args.format,
        dead_letter_table=args.dead_letter_table,
        **extra,
        **_sink_options(args),
    )
    return app


def cmd_forward(args: argparse.Namespace) -> int:
    app = build_app(args)
    lock = None
    if args.source == "logical" and args.slot:
        lock = SlotLock(app.conninfo, lock_name(slot=args.slot), slot=args.slot)
    elif args.source == "polling":
        lock = SlotLock(app.conninfo, lock_name(consumer=args.consumer))
    try:
        anyio.run(partial(serve_holding, app, lock), backend=args.backend)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    return 0
