"""Commands about what is installed: ``install``, ``uninstall``, ``status``, ``slots``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pgchanges import standby
from pgchanges.capture import ddl as ddl_capture
from pgchanges.capture import install as capture
from pgchanges.capture import logical_admin, outbox_admin
from pgchanges.cli.common import add_common, conninfo_of
from pgchanges.db.connect import connect
from pgchanges.errors import ConfigError
from pgchanges.names import parse_table
from pgchanges.ops import status as ops_status
from pgchanges.ops.progress import Progress
from pgchanges.sources import poll_state


def add_commands(sub: Any) -> None:
    p = sub.add_parser("install", help="install capture on tables (idempotent)")
    add_common(p)
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
    add_common(p)
    p.add_argument("action", nargs="?", choices=("list", "drop"), default="list")
    p.add_argument("name", nargs="?", help="slot to drop")
    p.set_defaults(func=cmd_slots)

    p = sub.add_parser("uninstall", help="remove capture (from TABLEs, or everything pgchanges created)")
    add_common(p)
    p.add_argument("tables", nargs="*", metavar="TABLE")
    p.set_defaults(func=cmd_uninstall)

    p = sub.add_parser("status", help="show what is captured, backlogs, lag, slots and who holds them")
    add_common(p)
    p.add_argument("--format", default="text", choices=("text", "json"), help="json: one object, for scripts")
    p.set_defaults(func=cmd_status)


def cmd_install(args: argparse.Namespace) -> int:
    tables = [parse_table(t) for t in args.tables]
    if not tables and not args.ddl:
        raise ConfigError("name at least one TABLE, or --ddl")
    if args.ddl:
        with connect(conninfo_of(args)) as conn:
            created = ddl_capture.install_ddl(conn)
        print("DDL event triggers " + ("installed" if created else "already installed"))
        if not tables:
            return 0
    if args.source == "logical":
        with connect(conninfo_of(args)) as conn:
            publication = logical_admin.install_logical(conn, tables, args.slot, args.replica_identity == "full")
        print(
            f"logical capture installed on {', '.join(str(t) for t in tables)} (publication {publication}"
            + (f", slot {args.slot})" if args.slot else ")")
        )
        return 0
    with connect(conninfo_of(args)) as conn:
        with Progress(f"install {args.source}", unit="tables") as progress:
            added = capture.install(conn, tables, args.source, progress=progress)
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
    with connect(conninfo_of(args)) as conn:
        removed = capture.uninstall(conn, tables)
    if not removed and tables is None:
        print("nothing to remove; schema pgchanges is gone")
    for table in removed:
        print(f"capture removed from {table}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.format == "json":
        with connect(conninfo_of(args)) as conn:
            print(json.dumps(ops_status.gather(conn), default=str))
        return 0
    with connect(conninfo_of(args)) as conn:
        slots = ops_status.slot_rows(conn)
        found = capture.captures(conn)
        rules = capture.rules(conn)
        following = ddl_capture.ddl_installed(conn)
        consumers = outbox_admin.consumer_status(conn) if found else []
        polling = poll_state.list_states(conn)
        forwarders = standby.holders(conn)
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
    if slots:
        print()
        print(ops_status.format_slots(slots))
    if polling:
        print()
        print(f"{'polling consumer':<20} {'table':<32} {'watermark':<40} saved")
        for consumer, table, position, saved in polling:
            print(f"{consumer:<20} {table:<32} {position:<40} {saved:%Y-%m-%d %H:%M:%S}")
    if forwarders:
        print()
        print(standby.format_holders(forwarders))
    return 0


def cmd_slots(args: argparse.Namespace) -> int:
    with connect(conninfo_of(args)) as conn:
        if args.action == "drop":
            if not args.name:
                raise ConfigError("slots drop needs the slot name")
            logical_admin.drop_slot(conn, args.name)
            print(f"replication slot {args.name} dropped")
            return 0
        print(logical_admin.format_slots(logical_admin.list_slots(conn)))
    return 0
