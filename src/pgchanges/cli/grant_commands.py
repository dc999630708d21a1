"""``pgchanges grant ROLE --source … [--apply] [TABLE…]``: the least privileges a consuming role needs.

Prints the statements by default (to review, or to put into a migration of your own); ``--apply`` runs them,
all in one transaction. Run it as a role that may grant them: the owner of schema pgchanges and of the tables,
or a superuser (``ALTER ROLE … REPLICATION`` for logical needs a superuser on PostgreSQL 15 and older).
What each line is for: docs/privileges.md, and :mod:`pgchanges.capture.grants`.
"""

from __future__ import annotations

import argparse
from typing import Any

from pgchanges.capture import grants
from pgchanges.cli.common import add_common, conninfo_of
from pgchanges.db.connect import connect
from pgchanges.names import parse_table


class _Intermixed(argparse.ArgumentParser):
    """A parser that takes positionals after options too (``grant ROLE --source polling TABLE``): plain argparse
    fills every positional from the first run of them, and then refuses the TABLEs that come later."""

    _parsing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._parsing:  # parse_known_intermixed_args calls back here
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


def add_commands(sub: Any) -> None:
    p = sub.add_parser("grant", help="print (or --apply) the least privileges ROLE needs to consume with a source")
    p.__class__ = _Intermixed
    add_common(p)
    p.add_argument("role", metavar="ROLE")
    p.add_argument("tables", nargs="*", metavar="TABLE", help="logical and polling: the tables the role reads")
    p.add_argument("--source", required=True, choices=grants.SOURCES)
    p.add_argument("--apply", action="store_true", help="run the statements (in one transaction) instead of printing")
    p.set_defaults(func=cmd_grant)


def cmd_grant(args: argparse.Namespace) -> int:
    tables = [parse_table(t) for t in args.tables]
    with connect(conninfo_of(args)) as conn:
        statements = grants.statements(conn, args.role, args.source, tables)
        if args.apply:
            grants.apply(conn, statements)
            print(f"granted {args.role} what the {args.source} source needs ({len(statements)} statements)")
            return 0
        for statement in statements:
            print(statement.as_string(conn) + ";")
    return 0
