"""The outbox triggers run as their owner, so a writer's search_path must not be able to redirect them."""

import pytest

import pgchanges
from tests.conftest import take

pytestmark = pytest.mark.anyio


async def test_hostile_search_path_cannot_hijack_the_trigger(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    async with pgchanges.stream(dsn, tables=["t"], source="outbox", consumer="c", lanes=1) as changes:
        db.execute("CREATE SCHEMA evil")
        db.execute("CREATE TABLE evil.stolen (what text)")
        db.execute("""CREATE FUNCTION evil.to_json(anyelement) RETURNS json LANGUAGE sql
                      AS $$ INSERT INTO evil.stolen VALUES ('to_json'); SELECT '{"hijacked": true}'::json $$""")
        db.execute("""CREATE FUNCTION evil.texteq(text, text) RETURNS boolean LANGUAGE sql
                      AS $$ INSERT INTO evil.stolen VALUES ('='); SELECT false $$""")
        db.execute("CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq)")
        db.execute("""CREATE FUNCTION evil.pg_notify(text, text) RETURNS void LANGUAGE sql
                      AS $$ INSERT INTO evil.stolen VALUES ('pg_notify') $$""")
        for name, args, returns in [
            ("pg_sequence_last_value", "regclass", "bigint"),
            ("date_part", "text, timestamptz", "double precision"),
            ("now", "", "timestamptz"),
        ]:
            db.execute(f"""CREATE FUNCTION evil.{name}({args}) RETURNS {returns} LANGUAGE sql
                           AS $$ INSERT INTO evil.stolen VALUES ('{name}'); SELECT NULL::{returns} $$""")
        # a worker asleep, so that the triggers NOTIFY too
        db.execute("SELECT pgchanges.sleep_v1('someone', 'asleep', 60)")
        db.execute("SET search_path = evil, pg_catalog, public")
        db.execute("INSERT INTO public.t VALUES (7)")
        db.execute("UPDATE public.t SET id = 8")
        db.execute("DELETE FROM public.t")
        db.execute("TRUNCATE public.t")
        db.execute("RESET search_path")
        got = await take(changes, 4)
        for change in got:
            await changes.ack(change)
    assert [c.op for c in got] == ["insert", "update", "delete", "truncate"]
    assert got[0].new == {"id": 7} and got[1].new == {"id": 8} and got[2].old == {"id": 8}
    assert db.execute("SELECT count(*) FROM evil.stolen").fetchone()[0] == 0
