import ipaddress
import json
import math
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgchanges.change import Change, freeze

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.floats(allow_nan=False)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.datetimes(timezones=st.just(UTC) | st.none())
    | st.dates()
    | st.times()
    | st.timedeltas(min_value=timedelta(days=-999), max_value=timedelta(days=999))
    | st.uuids()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=8,
)
rows = st.dictionaries(st.text(min_size=1, max_size=10), values, max_size=6)


def make(new, old=None, op="update"):
    return Change(
        id="notify:1",
        op=op,
        schema="public",
        table="t",
        new=freeze(new),
        old=freeze(old),
        changed=("a",),
        xid=42,
        commit_time=datetime(2024, 5, 1, tzinfo=UTC),
        position=1,
        source="notify",
    )


def leaf_types(value):
    if isinstance(value, list):
        return set().union(*(leaf_types(v) for v in value)) if value else set()
    return set() if value is None else {type(value)}


def homogeneous(value):
    """A column of an array type: every element, at any depth, has the array's one element type."""
    return len(leaf_types(value)) <= 1


@given(rows, rows)
def test_json_round_trip_keeps_values_and_types(new, old):
    if not all(homogeneous(v) for v in [*new.values(), *old.values()]):
        return
    change = make(new, old)
    restored = Change.from_json(change.to_json())
    assert restored == change
    for key, value in new.items():
        assert type(restored.new[key]) is type(value)


def test_json_is_readable_plain_values_with_types_sidecar():
    change = make({"id": 7, "price": Decimal("9.90"), "at": datetime(2024, 5, 1, 10, tzinfo=UTC), "tags": ["a"]})
    data = json.loads(change.to_json())
    assert data["new"] == {"id": 7, "price": "9.90", "at": "2024-05-01T10:00:00+00:00", "tags": ["a"]}
    assert data["types"] == {"new": {"price": "decimal", "at": "datetime"}}
    assert set(data) >= {
        "id",
        "op",
        "schema",
        "table",
        "new",
        "old",
        "changed",
        "xid",
        "commit_time",
        "position",
        "source",
    }


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        b"\x00\xff",
        uuid.uuid4(),
        date(1, 1, 1),
        time(23, 59, 59, 999999),
        datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        timedelta(days=-1, microseconds=1),
        ipaddress.ip_address("::1"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_interface("192.168.0.1/24"),
        [[Decimal("1.5"), None], [Decimal("2")]],
        [time(0, 0), []],  # ragged nesting: found by hypothesis
    ],
)
def test_special_values_round_trip(value):
    restored = Change.from_json(make({"v": value}).to_json()).new["v"]
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(restored)
    else:
        assert restored == value and type(restored) is type(value)


def test_change_is_immutable():
    change = make({"a": 1})
    with pytest.raises(AttributeError):
        change.op = "delete"
    with pytest.raises(TypeError):
        change.new["a"] = 2


def test_ragged_nested_lists_round_trip():
    """Found by hypothesis: an element shallower than the list's first one ([[date], date])."""
    row = {"0": [[date(2000, 1, 1)], date(2000, 1, 1)]}
    again = Change.from_json(make({}, row).to_json())
    assert dict(again.old) == row


json_objects = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats() | st.decimals(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.text(min_size=1, max_size=8), values | json_objects, max_size=6))
def test_to_json_writes_exactly_the_json_of_to_dict(row):
    """to_json leaves json objects to the encoder (encode_row_shallow); the text must be to_dict's, NaN,
    infinities and Decimals nested in json values included."""
    change = make(row, row)
    assert change.to_json() == json.dumps(change.to_dict(), ensure_ascii=False, separators=(",", ":"))
