"""What the ``pgchanges`` schema consists of, read from the catalog, so two databases can be compared.

:func:`catalog` lists every object a migration can create or change in a schema, by name and definition,
never by oid: relations, columns in their logical order (dropped columns skipped, as in ``SELECT *``),
defaults, constraints, indexes, sequences with their state, functions (``pg_get_functiondef``: arguments,
body, volatility, security, SET clauses), views, triggers, rules, policies, types, comments, privileges,
event triggers calling the schema's functions, and the recorded migrations. :func:`pg_dump_schema` is the
second opinion: ``pg_dump --schema-only`` of the schema, normalised.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgchanges.capture import migrations
from pgchanges.embedded import LocalCluster

#: The notify triggers install puts on a table (not partitioned) since schema version 12, by name order:
#: statement triggers for INSERT and DELETE, the row trigger for UPDATE, and the TRUNCATE one.
NOTIFY_TRIGGERS = (
    "pgchanges_notify_delete",
    "pgchanges_notify_insert",
    "pgchanges_notify_truncate",
    "pgchanges_notify_update",
)

CATALOG_QUERIES: dict[str, str] = {
    "schema": """
        SELECT n.nspname, pg_get_userbyid(n.nspowner), n.nspacl::text FROM pg_namespace n WHERE n.oid = %(ns)s""",
    "relations": """
        SELECT c.relname, c.relkind, c.relpersistence, c.relreplident, c.relrowsecurity, c.reloptions::text,
               pg_get_userbyid(c.relowner), c.relacl::text, am.amname, c.relispartition
        FROM pg_class c LEFT JOIN pg_am am ON am.oid = c.relam
        WHERE c.relnamespace = %(ns)s ORDER BY 1""",
    "columns": """
        SELECT c.relname, row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum), a.attname,
               format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
               a.attidentity, a.attgenerated, co.collname, a.attacl::text, a.attstorage, a.attstattarget
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 0
        WHERE c.relnamespace = %(ns)s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2""",
    "constraints": """
        SELECT c.conrelid::regclass::text, c.conname, c.contype, pg_get_constraintdef(c.oid),
               c.condeferrable, c.condeferred, c.convalidated, c.connoinherit
        FROM pg_constraint c WHERE c.connamespace = %(ns)s ORDER BY 1, 2""",
    "indexes": """
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), i.indisprimary, i.indisunique,
               i.indisclustered, i.indisreplident
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relnamespace = %(ns)s ORDER BY 1""",
    "sequences": """
        SELECT s.seqrelid::regclass::text, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmax,
               s.seqmin, s.seqcache, s.seqcycle, pg_sequence_last_value(s.seqrelid)
        FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
        WHERE c.relnamespace = %(ns)s ORDER BY 1""",
    "functions": """
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), pg_get_userbyid(p.proowner), p.proacl::text,
               p.prosrc
        FROM pg_proc p WHERE p.pronamespace = %(ns)s AND p.prokind <> 'a' ORDER BY 1""",
    "views": """
        SELECT c.relname, pg_get_viewdef(c.oid) FROM pg_class c
        WHERE c.relnamespace = %(ns)s AND c.relkind IN ('v', 'm') ORDER BY 1""",
    "triggers": """
        SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        LEFT JOIN pg_proc p ON p.oid = t.tgfoid
        WHERE NOT t.tgisinternal AND (c.relnamespace = %(ns)s OR p.pronamespace = %(ns)s) ORDER BY 1, 2""",
    "event_triggers": """
        SELECT e.evtname, e.evtevent, e.evtfoid::regproc::text, e.evtenabled, e.evttags::text
        FROM pg_event_trigger e JOIN pg_proc p ON p.oid = e.evtfoid
        WHERE p.pronamespace = %(ns)s ORDER BY 1""",
    "rules": """
        SELECT r.ev_class::regclass::text, r.rulename, pg_get_ruledef(r.oid) FROM pg_rewrite r
        JOIN pg_class c ON c.oid = r.ev_class
        WHERE c.relnamespace = %(ns)s AND r.rulename <> '_RETURN' ORDER BY 1, 2""",
    "policies": """
        SELECT p.polrelid::regclass::text, p.polname, p.polcmd, p.polpermissive, p.polroles::text,
               pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
        FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
        WHERE c.relnamespace = %(ns)s ORDER BY 1, 2""",
    "types": """
        SELECT t.typname, t.typtype, format_type(t.typbasetype, t.typtypmod), t.typnotnull,
               pg_get_userbyid(t.typowner), t.typacl::text
        FROM pg_type t
        WHERE t.typnamespace = %(ns)s
          AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c')
          AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.oid = t.typelem AND e.typarray = t.oid)
        ORDER BY 1""",
    "comments": """
        SELECT d.classoid::regclass::text,
               coalesce(c.relname, p.oid::regprocedure::text, n.nspname, con.conname, t.typname), d.objsubid,
               d.description
        FROM pg_description d
        LEFT JOIN pg_class c ON d.classoid = 'pg_class'::regclass AND c.oid = d.objoid
        LEFT JOIN pg_proc p ON d.classoid = 'pg_proc'::regclass AND p.oid = d.objoid
        LEFT JOIN pg_namespace n ON d.classoid = 'pg_namespace'::regclass AND n.oid = d.objoid
        LEFT JOIN pg_constraint con ON d.classoid = 'pg_constraint'::regclass AND con.oid = d.objoid
        LEFT JOIN pg_type t ON d.classoid = 'pg_type'::regclass AND t.oid = d.objoid
        WHERE c.relnamespace = %(ns)s OR p.pronamespace = %(ns)s OR n.oid = %(ns)s
           OR con.connamespace = %(ns)s OR t.typnamespace = %(ns)s
        ORDER BY 1, 2, 3""",
    "default_privileges": """
        SELECT pg_get_userbyid(a.defaclrole), a.defaclobjtype, a.defaclacl::text FROM pg_default_acl a
        WHERE a.defaclnamespace = %(ns)s ORDER BY 1, 2""",
    "statistics": """
        SELECT s.stxname, pg_get_statisticsobjdef(s.oid) FROM pg_statistic_ext s
        WHERE s.stxnamespace = %(ns)s ORDER BY 1""",
    "extensions": """
        SELECT x.extname FROM pg_extension x WHERE x.extnamespace = %(ns)s ORDER BY 1""",
}


def catalog(conn: psycopg.Connection[Any], schema: str = "pgchanges") -> dict[str, list[tuple[Any, ...]]]:
    """Everything in ``schema`` that a migration can create or change, in a form to compare with ``==``."""
    row = conn.execute("SELECT to_regnamespace(%s)::oid", (schema,)).fetchone()
    assert row is not None and row[0] is not None, f"schema {schema} does not exist"
    params = {"ns": row[0]}
    out = {name: conn.execute(query, params).fetchall() for name, query in CATALOG_QUERIES.items()}
    # a sequence's state, beside pg_sequence_last_value (NULL until is_called): what setval() leaves
    out["sequence_state"] = [
        (name, *conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(sql.SQL(name))).fetchone())
        for name, *_ in out["sequences"]
    ]
    out["recorded_migrations"] = conn.execute(
        sql.SQL("SELECT version, name FROM {}.migrations ORDER BY 1").format(sql.Identifier(schema))
    ).fetchall()
    return out


def differences(
    left: dict[str, list[Any]], right: dict[str, list[Any]], labels: tuple[str, str] = ("left", "right")
) -> dict[str, dict[str, list[Any]]]:
    """Per part of the catalog, the rows only in ``left`` and only in ``right`` (empty when the same)."""
    only_left, only_right = (f"only_{label}" for label in labels)
    out: dict[str, dict[str, list[Any]]] = {}
    for part in sorted(set(left) | set(right)):
        a, b = left.get(part, []), right.get(part, [])
        if a != b:
            out[part] = {only_left: [r for r in a if r not in b], only_right: [r for r in b if r not in a]}
            if not out[part][only_left] and not out[part][only_right]:
                out[part]["order"] = [a, b]
    return out


def apply_one_by_one(conn: psycopg.Connection[Any], up_to: int) -> None:
    """The schema as releases with migrations 1..``up_to`` left it: each applied and recorded in its own
    transaction, as successive installs of pgchanges would (never the baseline)."""
    for migration in migrations.available():
        if migration.version > up_to:
            break
        with conn.transaction():
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO pgchanges.migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )


def pg_dump_binary(conn: psycopg.Connection[Any], bindir: Path | None = None) -> tuple[str | None, str]:
    """A ``pg_dump`` able to dump the server of ``conn`` (its cluster's own in ``bindir``, else the one on PATH):
    ``(path, "")``, or ``(None, why not)``; pg_dump refuses servers newer than itself."""
    server_major = conn.info.server_version // 10000
    why = "pg_dump is not on PATH"
    for candidate in ([str(bindir / "pg_dump")] if bindir else []) + [shutil.which("pg_dump") or ""]:
        if not candidate or not Path(candidate).exists():
            continue
        out = subprocess.run([candidate, "--version"], capture_output=True, text=True, check=True).stdout
        found = re.search(r"\(PostgreSQL\) (\d+)", out)
        if found is None:
            why = f"cannot tell the version of {candidate} from {out.strip()!r}"
        elif int(found.group(1)) < server_major:
            why = f"{candidate} ({found.group(1)}) cannot dump PostgreSQL {server_major}"
        else:
            return candidate, ""
    return None, why


_VOLATILE_LINE = re.compile(r"^(--.*|\\restrict .*|\\unrestrict .*|)$")


def pg_dump_schema(binary: str, dsn: str, schema: str = "pgchanges") -> list[str]:
    """``pg_dump --schema-only --schema=<schema>`` without comments, blank lines and per-run keys."""
    out = subprocess.run(
        [binary, "--schema-only", f"--schema={schema}", "--no-tablespaces", "-d", dsn],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if not _VOLATILE_LINE.match(line)]


_scratch_counter = itertools.count()


@contextlib.contextmanager
def scratch_database(cluster: LocalCluster) -> Iterator[str]:
    """A DSN for a new, empty database of ``cluster``, dropped afterwards (for tests needing several)."""
    name = f"s{os.getpid()}_{next(_scratch_counter)}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield cluster.dsn(name)
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
