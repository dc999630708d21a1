from decimal import Decimal

import pytest

import pgchanges
from tests.conftest import take

pytestmark = pytest.mark.anyio


async def test_logical_insert_update_delete(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric)")
    async with pgchanges.stream(dsn, tables=["orders"], source="logical") as changes:
        db.execute("INSERT INTO orders VALUES (1, 'new', 9.90)")
        db.execute("UPDATE orders SET status = 'paid' WHERE id = 1")
        db.execute("DELETE FROM orders WHERE id = 1")
        got = await take(changes, 3)
        await changes.ack(*got)
    assert [c.op for c in got] == ["insert", "update", "delete"]
    assert got[0].new == {"id": 1, "status": "new", "total": Decimal("9.90")}
    assert got[0].source == "logical" and got[0].commit_time is not None and got[0].xid
    assert got[2].old["id"] == 1
