"""``pgchanges grant ROLE --source …``: the printed statements, and that applying them is enough to consume.

Each source's test installs capture as a table owner who is not a superuser, applies the grants as that owner
(the owner of schema pgchanges) or, for ``ALTER ROLE … REPLICATION``, as a superuser, and then consumes as a
role that has nothing else: a change written by the owner arrives.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgchanges
from tests.cli_process import run as run_cli
from tests.conftest import take

pytestmark = pytest.mark.anyio

OPTIONS: dict[str, dict[str, Any]] = {
    "notify": {},
    "outbox": {"consumer": "granted"},
    "logical": {"slot": "granted"},
    "polling": {"column": "at", "consumer": "granted"},
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args)


class Roles:
    """Roles made for one test (roles belong to the cluster): dropped, with what they own, afterwards."""

    def __init__(self, dsn: str, db: psycopg.Connection[Any]) -> None:
        self.dsn = dsn
        self.db = db
        self.made: list[str] = []

    def make(self, prefix: str, *attributes: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.db.execute(sql.SQL("CREATE ROLE {} LOGIN " + " ".join(attributes)).format(sql.Identifier(name)))
        self.made.append(name)
        return name

    def dsn_of(self, role: str) -> str:
        return make_conninfo(self.dsn, user=role)

    def drop(self) -> None:
        for name in reversed(self.made):
            self.db.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
        for name in reversed(self.made):
            self.db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def roles(dsn: str, db: psycopg.Connection[Any]) -> Iterator[Roles]:
    made = Roles(dsn, db)
    try:
        yield made
    finally:
        db.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active"
                   " AND database = current_database()")  # fmt: skip
        made.drop()


def owner_with_table(roles: Roles, db: psycopg.Connection[Any]) -> str:
    """A role that may create schemas in this database and owns ``public.t``; not a superuser."""
    owner = roles.make("owner")
    name = db.execute("SELECT current_database()").fetchone()[0]
    db.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(name), sql.Identifier(owner)))
    db.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(owner)))
    with psycopg.connect(roles.dsn_of(owner), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
    return owner


def install_as(roles: Roles, owner: str, source: str) -> None:
    if source == "polling":
        return  # nothing is installed for polling
    slot = ["--slot", "granted"] if source == "logical" else []
    if slot:  # a slot needs REPLICATION; the owner gets it for the install only
        roles.db.execute(sql.SQL("ALTER ROLE {} REPLICATION").format(sql.Identifier(owner)))
    done = run("install", "public.t", "--source", source, *slot, "--dsn", roles.dsn_of(owner))
    assert done.returncode == 0, done.stderr
    if slot:
        roles.db.execute(sql.SQL("ALTER ROLE {} NOREPLICATION").format(sql.Identifier(owner)))


def test_grant_prints_the_statements_and_applies_nothing(dsn, db, roles) -> None:
    owner = owner_with_table(roles, db)
    install_as(roles, owner, "outbox")
    consumer = roles.make("reader")
    done = run("grant", consumer, "--source", "outbox", "--dsn", roles.dsn_of(owner))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("GRANT CONNECT ON DATABASE") and all(line.endswith(";") for line in lines)
    assert f'GRANT SELECT, DELETE ON TABLE "pgchanges"."events" TO "{consumer}";' in lines
    usable = db.execute("SELECT has_schema_privilege(%s, 'pgchanges', 'USAGE')", (consumer,)).fetchone()[0]
    assert usable is False, "printing must not grant anything"


def test_grant_names_a_missing_role_in_one_line(dsn) -> None:
    done = run("grant", "nobody_here", "--source", "polling", "public.t", "--dsn", dsn)
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == "pgchanges: error: role 'nobody_here' does not exist (CREATE ROLE nobody_here LOGIN first)"
    )


def test_polling_grants_need_the_tables(dsn, roles) -> None:
    reader = roles.make("reader")
    done = run("grant", reader, "--source", "polling", "--dsn", dsn)
    assert done.returncode == 1 and "name the TABLEs" in done.stderr


@pytest.mark.parametrize("source", ["notify", "outbox", "logical", "polling"])
async def test_the_applied_grants_are_enough_to_consume(dsn, db, roles, source) -> None:
    owner = owner_with_table(roles, db)
    install_as(roles, owner, source)
    consumer = roles.make("consumer")
    granter = dsn if source == "logical" else roles.dsn_of(owner)  # REPLICATION: a superuser gives it (PG ≤ 15)
    done = run("grant", consumer, "public.t", "--source", source, "--apply", "--dsn", granter)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"granted {consumer} what the {source} source needs")
    async with pgchanges.stream(
        roles.dsn_of(consumer), tables=["public.t"], source=source, auto_install=False, **OPTIONS[source]
    ) as changes:
        with psycopg.connect(roles.dsn_of(owner), autocommit=True) as conn:
            conn.execute("INSERT INTO t (id) VALUES (1)")
        [change] = await take(changes, 1, timeout=30)
        await changes.ack(change)
    assert change.new is not None and change.new["id"] == 1
    superuser = db.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (consumer,)).fetchone()[0]
    assert superuser is False
