"""Commands for outbox consumers: ``dead-letters list|retry|drop`` and ``replay``."""

from __future__ import annotations

import argparse
from typing import Any

from pgchanges.capture import outbox_admin
from pgchanges.cli.common import add_common, conninfo_of
from pgchanges.db.connect import connect
from pgchanges.errors import ConfigError
from pgchanges.ops.progress import Progress


def add_commands(sub: Any) -> None:
    p = sub.add_parser("dead-letters", help="list, retry or drop outbox events that failed too often")
    add_common(p)
    p.add_argument("action", choices=("list", "retry", "drop"))
    p.add_argument("ids", nargs="*", type=int, metavar="EVENT_ID", help="only these events (default: all)")
    p.add_argument("--consumer", help="consumer name (required for retry and drop)")
    p.set_defaults(func=cmd_dead_letters)

    p = sub.add_parser("replay", help="deliver outbox events again to a consumer")
    add_common(p)
    p.add_argument("--consumer", required=True)
    p.add_argument("--since", required=True, help="an event id, or an ISO 8601 time")
    p.set_defaults(func=cmd_replay)


def cmd_dead_letters(args: argparse.Namespace) -> int:
    ids = args.ids or None
    with connect(conninfo_of(args)) as conn:
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
    with connect(conninfo_of(args)) as conn, Progress(f"replay {args.consumer}", unit="events") as progress:
        count = outbox_admin.replay(conn, args.consumer, args.since, progress=progress)
    print(f"{count} event(s) queued again for {args.consumer}")
    return 0
