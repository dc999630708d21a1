"""Every payload format, field by field: json (exactly Change.to_json), CloudEvents 1.0, the Debezium envelope."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from pgchanges.change import Change, freeze
from pgchanges.errors import ConfigError
from pgchanges.sinks.formats import lsn_number, make_formatter

COMMITTED = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def change(op="update", **fields) -> Change:
    base = {
        "id": "0/16B3748:2",
        "op": op,
        "schema": "public",
        "table": "orders",
        "new": freeze({"id": 7, "total": Decimal("9.90"), "at": COMMITTED}),
        "old": freeze({"id": 7, "total": Decimal("1.00"), "at": COMMITTED}),
        "changed": ("total",),
        "xid": 1234,
        "commit_time": COMMITTED,
        "position": "0/16B3748",
        "source": "logical",
    }
    return Change(**{**base, **fields})


def test_json_is_exactly_what_tail_prints():
    c = change()
    assert make_formatter("json", database="shop")(c) == c.to_json().encode()


def test_cloudevents_structured_mode():
    c = change()
    event = json.loads(make_formatter("cloudevents", database="shop")(c))
    assert event == {
        "specversion": "1.0",
        "id": "0/16B3748:2",
        "source": "/pgchanges/shop",
        "type": "pgchanges.update",
        "time": "2024-05-01T10:00:00+00:00",
        "subject": "public.orders",
        "datacontenttype": "application/json",
        "data": json.loads(c.to_json()),
    }
    assert Change.from_dict(event["data"]) == c


def test_cloudevents_time_without_a_commit_time_is_when_it_was_forwarded():
    event = json.loads(make_formatter("cloudevents", database="shop")(change(commit_time=None, source="outbox")))
    assert abs(datetime.fromisoformat(event["time"]) - datetime.now(UTC)).total_seconds() < 60


@pytest.mark.parametrize(
    ("op", "new", "old", "expected"),
    [
        ("insert", {"id": 1}, None, "c"),
        ("update", {"id": 1}, {"id": 1}, "u"),
        ("upsert", {"id": 1}, None, "u"),
        ("delete", None, {"id": 1}, "d"),
        ("truncate", None, None, "t"),
    ],
)
def test_debezium_ops(op, new, old, expected):
    c = change(op, new=freeze(new), old=freeze(old))
    envelope = json.loads(make_formatter("debezium", database="shop")(c))
    assert envelope["op"] == expected
    assert envelope["before"] == old and envelope["after"] == new


def test_debezium_envelope_field_by_field():
    c = change()
    envelope = json.loads(make_formatter("debezium", database="shop")(c))
    assert set(envelope) == {"before", "after", "source", "op", "ts_ms", "transaction"}
    assert envelope["after"] == {"id": 7, "total": "9.90", "at": "2024-05-01T10:00:00+00:00"}
    assert envelope["before"]["total"] == "1.00"
    assert abs(envelope["ts_ms"] - datetime.now(UTC).timestamp() * 1000) < 60_000
    assert envelope["transaction"] is None
    source = envelope["source"]
    assert source["connector"] == "postgresql" and source["name"] == "shop" and source["db"] == "shop"
    assert source["schema"] == "public" and source["table"] == "orders" and source["txId"] == 1234
    assert source["ts_ms"] == int(COMMITTED.timestamp() * 1000)
    assert source["lsn"] == 0x16B3748 and source["snapshot"] == "false" and source["sequence"] is None
    assert source["pgchanges"] == {"id": c.id, "source": "logical", "position": "0/16B3748"}
    assert "version" in source and source["xmin"] is None


def test_debezium_snapshot_rows_are_reads():
    c = change("insert", old=None, extra=freeze({"snapshot": True, "key": [7]}))
    envelope = json.loads(make_formatter("debezium", database="shop")(c))
    assert envelope["op"] == "r" and envelope["source"]["snapshot"] == "true"


def test_debezium_outbox_changes_have_no_lsn():
    c = change(source="outbox", position=12, commit_time=None)
    source = json.loads(make_formatter("debezium", database="shop")(c))["source"]
    assert source["lsn"] is None and source["ts_ms"] is None


def test_lsn_numbers():
    assert lsn_number("1/0") == 1 << 32
    assert lsn_number("0/0") == 0
    assert lsn_number(17) is None and lsn_number("x/y") is None


def test_unknown_format():
    with pytest.raises(ConfigError, match="unknown format 'avro'"):
        make_formatter("avro", database="shop")
