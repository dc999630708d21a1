from __future__ import annotations

import pytest

import pgchanges
from tests.conftest import take

pytestmark = pytest.mark.anyio


async def test_insert_update_delete_arrive_in_order(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric)")
    async with pgchanges.stream(dsn, tables=["orders"]) as changes:
        db.execute("INSERT INTO orders VALUES (1, 'new', 9.90)")
        db.execute("UPDATE orders SET status = 'paid' WHERE id = 1")
        db.execute("DELETE FROM orders WHERE id = 1")
        got = await take(changes, 3)
    assert [c.op for c in got] == ["insert", "update", "delete"]
    insert, update, delete = got
    assert insert.new == {"id": 1, "status": "new", "total": __import__("decimal").Decimal("9.90")}
    assert update.changed == ("status",)
    assert update.old["status"] == "new" and update.new["status"] == "paid"
    assert delete.new is None and delete.old["id"] == 1
    assert insert.schema == "public" and insert.table == "orders" and insert.source == "notify"
    assert len({c.id for c in got}) == 3
