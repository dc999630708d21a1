import anyio
import pytest

import pgchanges
from tests.conftest import outbox_pending, take, wait_until

pytestmark = pytest.mark.anyio


async def test_stream_delivers_and_ack_persists(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric)")
    async with pgchanges.stream(dsn, tables=["orders"], source="outbox", consumer="c1") as changes:
        db.execute("INSERT INTO orders VALUES (1, 1.5), (2, 2.5)")
        got = await take(changes, 2)
        await changes.ack(*got)
    assert sorted(c.new["id"] for c in got) == [1, 2]  # two rows: no order between them (lanes)
    assert got[0].id.startswith("outbox:") and got[0].source == "outbox"
    assert outbox_pending(db) == 0


async def test_app_outbox_handler(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    app = pgchanges.App(dsn, source="outbox", consumer="billing")
    seen = []

    @app.on("orders")
    async def h(change):
        seen.append(change.new["id"])

    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO orders VALUES (1)")
        await wait_until(lambda: seen == [1], "first change")
        db.execute("INSERT INTO orders VALUES (2)")
        await wait_until(lambda: seen == [1, 2], "second change")
        app.stop()
