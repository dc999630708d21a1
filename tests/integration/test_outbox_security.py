"""The outbox triggers run as their owner, so a writer's search_path must not be able to redirect them."""

import pytest

import pgchanges
from tests.conftest import take

pytestmark = pytest.mark.anyio


async def test_hostile_search_path_cannot_hijack_the_trigger(dsn, db):
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    async with pgchanges.stream(dsn, tables=["t"], source="outbox", consumer="c") as changes:
        db.execute("CREATE SCHEMA evil")
        db.execute("CREATE TABLE evil.stolen (what text)")
        db.execute("""CREATE FUNCTION evil.to_json(anyelement) RETURNS json LANGUAGE sql
                      AS $$ INSERT INTO evil.stolen VALUES ('to_json'); SELECT '{"hijacked": true}'::json $$""")
        db.execute("""CREATE FUNCTION evil.texteq(text, text) RETURNS boolean LANGUAGE sql
                      AS $$ INSERT INTO evil.stolen VALUES ('='); SELECT false $$""")
        db.execute("CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq)")
        db.execute("""CREATE FUNCTION evil.pg_notify(text, text) RETURNS void LANGUAGE sql
                      AS $$ INSERT INTO evil.stolen VALUES ('pg_notify') $$""")
        # a consumer asleep, so that the wake-up trigger NOTIFYs too
        db.execute("INSERT INTO pgchanges.sleepers (consumer, worker) VALUES ('someone', 'asleep')")
        db.execute("SET search_path = evil, pg_catalog, public")
        db.execute("INSERT INTO public.t VALUES (7)")
        db.execute("RESET search_path")
        [change] = await take(changes, 1)
        await changes.ack(change)
    assert change.op == "insert" and change.new == {"id": 7}
    assert db.execute("SELECT count(*) FROM evil.stolen").fetchone()[0] == 0
