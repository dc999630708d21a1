"""Security, checked like the chaos suite checks delivery (issue 16, item 6): with hostile input, not by reading.

- A hostile role that may create objects in ``public`` shadows every ``pg_catalog`` function and operator
  that any pgchanges function names (found in their bodies, so new code is covered without editing this
  test), puts ``public`` before ``pg_catalog`` in its ``search_path``, and then runs every statement that
  makes a pgchanges SECURITY DEFINER function or event trigger run (writes of every kind on captured tables,
  a payload big enough to spill, DDL that the capture rules follow). None of its functions may run as anyone
  but itself, and the capture must still be right.
- The set of SECURITY DEFINER functions and event triggers is read from the catalog and compared with the
  set that test exercises, so a new one fails here until it is covered.
- A table owner who is not a superuser installs capture; a role with only SELECT polls.
"""

from __future__ import annotations

import re
import select
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgchanges
from pgchanges.names import parse_table
from tests.cli_process import run
from tests.conftest import take

#: What the hostile test makes run: each SECURITY DEFINER function of schema pgchanges, and each event trigger.
EXERCISED_FUNCTIONS = {
    "notify_row_v2",
    "notify_rows_v3",
    "notify_truncate_v2",
    "outbox_insert_v1",
    "outbox_update_v1",
    "outbox_delete_v1",
    "outbox_truncate_v1",
    "ddl_end_v1",
    "ddl_drop_v1",
}
EXERCISED_EVENT_TRIGGERS = {"pgchanges_ddl_end", "pgchanges_ddl_drop"}

#: Types a shadow written in plpgsql cannot take or return.
_PSEUDO = re.compile(r'"any"|\b(internal|cstring|trigger|event_trigger|language_handler|record|pg_ddl_command)\b')


def install_everything(dsn: str, db: psycopg.Connection[Any]) -> None:
    db.execute("CREATE TABLE n (id int PRIMARY KEY, body text)")
    db.execute("CREATE TABLE o (id int PRIMARY KEY, body text)")
    for args in (
        ("public.n",),
        ("public.o", "--source", "outbox"),
        ("public.auto_*", "--source", "outbox"),  # a rule: tables created later are captured by the DDL trigger
        ("--ddl",),
    ):
        done = run("install", *args, "--dsn", dsn)
        assert done.returncode == 0, done.stderr


def definer_functions(db: psycopg.Connection[Any]) -> set[str]:
    rows = db.execute(
        "SELECT proname FROM pg_proc WHERE pronamespace = 'pgchanges'::regnamespace AND prosecdef"
    ).fetchall()
    return {r[0] for r in rows}


def event_triggers(db: psycopg.Connection[Any]) -> set[str]:
    rows = db.execute(
        """SELECT evtname FROM pg_event_trigger e JOIN pg_proc p ON p.oid = e.evtfoid
           WHERE p.pronamespace = 'pgchanges'::regnamespace"""
    ).fetchall()
    return {r[0] for r in rows}


def shadows(db: psycopg.Connection[Any]) -> list[str]:
    """CREATE statements for a function in ``public`` with the signature of every pg_catalog function, and an
    operator for every pg_catalog operator, that the bodies of pgchanges' functions name. Each records its name
    and the role it runs as in ``public.stolen``, then returns NULL."""
    bodies = " ".join(
        r[0] for r in db.execute("SELECT prosrc FROM pg_proc WHERE pronamespace = 'pgchanges'::regnamespace")
    )
    names = sorted(set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*\(", bodies.lower())))
    symbols = sorted(set(re.findall(r"[-+*/<>=~!@#%^&|?]+", bodies)))
    functions = db.execute(
        """SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid), p.proretset
           FROM pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.prokind = 'f'
             AND p.proname = ANY(%s) AND NOT EXISTS (SELECT 1 FROM unnest(p.proargmodes) m WHERE m IN ('o', 't'))""",
        (names,),
    ).fetchall()
    out = []
    for name, args, result, retset in functions:
        if _PSEUDO.search(f"{args} {result}"):
            continue
        out.append(_shadow_function(f"public.{name}", args, result, retset, name))
    operators = db.execute(
        """SELECT o.oprname, format_type(o.oprleft, NULL), format_type(o.oprright, NULL),
                  format_type(o.oprresult, NULL)
           FROM pg_operator o WHERE o.oprnamespace = 'pg_catalog'::regnamespace AND o.oprname = ANY(%s)
             AND o.oprleft <> 0 AND o.oprright <> 0""",
        (symbols,),
    ).fetchall()
    for n, (symbol, left, right, result) in enumerate(operators):
        if _PSEUDO.search(f"{left} {right} {result}"):
            continue
        out.append(_shadow_function(f"public.shadow_op_{n}", f"{left}, {right}", result, False, symbol))
        out.append(f"CREATE OPERATOR public.{symbol} (LEFTARG = {left}, RIGHTARG = {right}, "
                   f"FUNCTION = public.shadow_op_{n})")  # fmt: skip
    return out


def _shadow_function(name: str, args: str, result: str, retset: bool, label: str) -> str:
    record = f"INSERT INTO public.stolen VALUES ({sql.quote(label)}, current_user)"
    done = "RETURN;" if retset or result == "void" else "RETURN NULL;"
    returns = f"SETOF {result.removeprefix('SETOF ')}" if retset else result
    return f"CREATE FUNCTION {name}({args}) RETURNS {returns} LANGUAGE plpgsql AS $$ BEGIN {record}; {done} END $$"


class Hostile:
    """A role that may create in ``public`` and write the captured tables; nothing else."""

    def __init__(self, dsn: str, db: psycopg.Connection[Any]) -> None:
        self.name = f"hostile_{uuid.uuid4().hex[:8]}"
        self.db = db
        ident = sql.Identifier(self.name)
        db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
        db.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(ident))
        db.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON n, o TO {}").format(ident))
        self.conn = psycopg.connect(make_conninfo(dsn, user=self.name), autocommit=True)

    def close(self) -> None:
        self.conn.close()
        ident = sql.Identifier(self.name)
        self.db.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(ident))
        self.db.execute(sql.SQL("DROP ROLE {}").format(ident))


@pytest.fixture
def hostile(dsn: str, db: psycopg.Connection[Any]) -> Iterator[Hostile]:
    install_everything(dsn, db)
    made = Hostile(dsn, db)
    try:
        yield made
    finally:
        made.close()


def test_every_security_definer_function_and_event_trigger_is_exercised(dsn, db) -> None:
    install_everything(dsn, db)
    assert definer_functions(db) == EXERCISED_FUNCTIONS, "cover the new SECURITY DEFINER function in the hijack test"
    assert event_triggers(db) == EXERCISED_EVENT_TRIGGERS, "cover the new event trigger in the hijack test"


def test_a_hostile_search_path_cannot_make_any_pgchanges_function_run_its_code(db, hostile) -> None:
    evil = hostile.conn
    evil.execute("CREATE TABLE public.stolen (what text, who name)")
    evil.execute("GRANT INSERT ON public.stolen TO PUBLIC")
    statements = shadows(db)
    assert len(statements) > 100, "the shadows should cover the functions and operators pgchanges names"
    for statement in statements:
        evil.execute(statement)
    for name in ("pgchanges_new", "pgchanges_old"):  # named as the notify triggers' transition tables
        evil.execute(f"CREATE TABLE public.{name} (id int, body text)")
    db.execute("SELECT pgchanges.sleep_v1('someone', 'asleep', 60)")  # a sleeping worker: the triggers NOTIFY too
    listener = psycopg.connect(db.info.dsn, autocommit=True)
    listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(parse_table("public.n").channel)))
    big = "x" * 9000  # over NOTIFY's limit: the notify trigger spills it
    evil.execute("SET search_path = public, pg_catalog")
    for table in ("n", "o"):  # no WHERE, no expressions: the hostile role's own statements call no shadow
        evil.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(sql.Identifier(table)), (7, big))
        evil.execute(sql.SQL("UPDATE {} SET id = 8").format(sql.Identifier(table)))
        evil.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
        evil.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
    evil.execute("CREATE TABLE public.auto_x (id int PRIMARY KEY)")  # followed: outbox capture installed
    evil.execute("INSERT INTO public.auto_x VALUES (%s)", (1,))
    evil.execute("ALTER TABLE public.auto_x ADD COLUMN v int")
    evil.execute("DROP TABLE public.auto_x")
    evil.execute("RESET search_path")
    stolen = db.execute("SELECT what, who FROM public.stolen").fetchall()
    as_others = [row for row in stolen if row[1] != hostile.name]
    assert as_others == [], f"hostile code ran as another role: {as_others[:10]}"
    events = db.execute(
        "SELECT op FROM pgchanges.events_named WHERE table_name IN ('o', 'auto_x') ORDER BY id"
    ).fetchall()
    assert [r[0] for r in events] == ["insert", "update", "delete", "truncate", "insert"]
    assert _notifications(listener, 4) == 4
    listener.close()


def _notifications(conn: psycopg.Connection[Any], wanted: int, timeout: float = 10.0) -> int:
    """How many notifications arrived (stops at ``wanted``, or after ``timeout`` without one)."""
    got = 0
    while got < wanted and select.select([conn.pgconn.socket], [], [], timeout)[0]:
        got += sum(1 for _ in conn.notifies(timeout=0.1, stop_after=wanted - got))
    return got


def test_a_table_owner_who_is_not_a_superuser_installs_capture(dsn, db) -> None:
    owner = f"owner_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(owner)
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    try:
        database = sql.Identifier(db.info.dbname)
        db.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(database, ident))
        db.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(ident))
        as_owner = make_conninfo(dsn, user=owner)
        with psycopg.connect(as_owner, autocommit=True) as conn:
            conn.execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
            conn.execute("CREATE TABLE c (id int PRIMARY KEY)")
        for args in (("public.a",), ("public.b", "--source", "outbox"), ("public.c", "--source", "logical")):
            done = run("install", *args, "--dsn", as_owner)
            assert done.returncode == 0, done.stderr
        triggers = db.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid IN ('a'::regclass, 'b'::regclass)")
        assert triggers.fetchone()[0] >= 2
        published = db.execute("SELECT count(*) FROM pg_publication_tables WHERE tablename = 'c'").fetchone()[0]
        assert published == 1
        schema_owner = db.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'pgchanges'")
        assert schema_owner.fetchone()[0] == owner
        done = run("install", "--ddl", "--dsn", as_owner)
        assert done.returncode == 1 and "superuser" in done.stderr  # event triggers need one: said in one line
    finally:
        db.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(ident))
        db.execute(sql.SQL("DROP ROLE {}").format(ident))


@pytest.mark.anyio
async def test_a_role_with_only_select_polls(dsn, db, tmp_path) -> None:
    db.execute("CREATE TABLE p (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
    reader = f"reader_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(reader)
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    try:
        db.execute(sql.SQL("GRANT SELECT ON p TO {}").format(ident))  # PUBLIC already may connect and use public
        db.execute("INSERT INTO p (id) VALUES (1), (2)")
        state = tmp_path / "watermark.json"
        async with pgchanges.stream(
            make_conninfo(dsn, user=reader), tables=["p"], source="polling", column="at", state_file=str(state)
        ) as changes:
            got = await take(changes, 2)
            for change in got:
                await changes.ack(change)
        assert sorted(c.new["id"] for c in got) == [1, 2]
        privileges = db.execute(
            "SELECT has_table_privilege(%s, 'p', 'INSERT, UPDATE, DELETE, TRUNCATE'), "
            "has_database_privilege(%s, current_database(), 'CREATE')",
            (reader, reader),
        ).fetchone()
        assert privileges == (False, False)
        assert db.execute("SELECT to_regnamespace('pgchanges')").fetchone()[0] is None, "polling installs nothing"
    finally:
        db.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(ident))
        db.execute(sql.SQL("DROP ROLE {}").format(ident))
