"""Change.to_json from C (pgchanges._jsonwrite) against the Python path it replaces: the same bytes, or the same
refusal, for any change."""

from __future__ import annotations

import ipaddress
import os
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pgchanges import change as change_module
from pgchanges import rowmaps
from pgchanges.change import Change

compiled = pytest.mark.skipif(change_module._WRITE is None, reason="pgchanges._jsonwrite is not in use")


def test_the_compiled_writer_is_in_use() -> None:
    """The install builds it (pyproject.toml: ext-modules); only PGCHANGES_PURE_PYTHON turns it off."""
    assert (change_module._WRITE is None) == bool(os.environ.get("PGCHANGES_PURE_PYTHON"))


class Odd:
    """A value of a type nothing knows: written as its str(), tagged "text"."""

    def __str__(self) -> str:
        return "odd <value>"


class Text(str):
    pass


TZ = timezone(timedelta(hours=-3, minutes=-30))
texts = st.text(st.characters(codec="utf-8") | st.sampled_from('"\\\n\r\t\b\f\x00\x1f\x7f\u2028é😀'))
floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e-05, 1e16, -0.0, 5e-324, 0.1])
ints = st.integers() | st.sampled_from([2**63, -(2**63) - 1, 2**64])
json_scalars = st.none() | st.booleans() | ints | floats | texts
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(texts, inner, max_size=4)
        | st.dictionaries(st.integers(0, 3), inner, max_size=2)
    ),  # a key json would turn into text
    max_leaves=12,
)
tagged = (
    st.decimals(allow_nan=True, allow_infinity=True)
    | st.datetimes(timezones=st.sampled_from([None, UTC, TZ]))
    | st.dates()
    | st.times()
    | st.timedeltas()
    | st.uuids()
    | st.binary(max_size=8)
    | st.builds(lambda b: memoryview(bytes(b)), st.binary(max_size=4))
    | st.sampled_from([ipaddress.ip_address("10.0.0.1"), ipaddress.ip_network("::/64")])
    | st.just(ipaddress.ip_interface("10.1.2.3/8"))
    | st.builds(Odd)
    | st.builds(Text, texts)
)
column_values = (
    json_values
    | tagged
    | st.lists(tagged | json_scalars, max_size=3)
    | st.tuples(tagged, json_scalars)
    | st.dictionaries(texts, tagged | json_scalars, max_size=3)  # typed values inside a mapping (composites)
)
row_dicts = st.dictionaries(st.text(max_size=6), column_values, max_size=6)


def as_row(kind: str, values: dict[str, Any]) -> Any:
    if kind == "dict":
        return values
    if kind == "proxy":
        return MappingProxyType(values)
    return rowmaps.Row.loaded(values) if rowmaps.IMPLEMENTATION == "c" else rowmaps.PyRow.loaded(values)


rows = st.none() | st.builds(as_row, st.sampled_from(["dict", "proxy", "row"]), row_dicts)
changes = st.builds(
    Change,
    id=texts,
    op=st.sampled_from(["insert", "update", "delete", "truncate", "gap"]),
    schema=st.none() | texts,
    table=st.none() | texts,
    new=rows,
    old=rows,
    changed=st.lists(texts, max_size=3).map(tuple),
    xid=st.none() | ints,
    commit_time=st.none() | st.datetimes(timezones=st.sampled_from([UTC, TZ])),
    position=st.none() | ints | texts | st.builds(Odd),
    source=st.sampled_from(["logical", "notify", "outbox", "polling"]),
    extra=st.none() | rows,
)


def outcome(write: Callable[[], bytes]) -> tuple[str, Any]:
    try:
        return "wrote", write()
    except Exception as exc:
        return "raised", type(exc)


@compiled
@given(changes)
@example(Change("a", "insert", "s", "t", {"x": float("nan")}, None, (), None, None, None, "logical"))
@example(Change("a", "insert", "s", "t", {"j": {"x": float("inf")}}, None, (), None, None, None, "logical"))
@example(Change("a", "insert", "s", "t", {"j": {1: "a"}}, None, (), None, None, None, "logical"))
@example(Change("a", "insert", "s", "t", {"s": "\ud800"}, None, (), None, None, None, "logical"))
@example(Change("a", "insert", "s", "t", {"i": 10**30, "e": Odd()}, None, (), None, None, "0/1", "logical", {}))
def test_the_compiled_writer_writes_what_the_python_path_writes(change: Change) -> None:
    assert outcome(change.to_json_bytes) == outcome(lambda: change._to_json_python().encode())


@compiled
@given(changes)
def test_the_compiled_writer_refuses_only_what_the_standard_encoder_refuses(change: Change) -> None:
    """Where C writes, the shallow Python encoding writes the same (it is not more lenient); where C refuses,
    the Python path takes its exact walk, as it would have without C."""
    assert change_module._WRITE is not None
    mine = outcome(lambda: change_module._WRITE(change))  # type: ignore[misc]
    if mine[0] == "wrote":
        shallow = change._encoded(change_module.valuecodec.encode_row_shallow)
        assert mine[1] == change_module._JSON_SHALLOW(shallow).encode()


def test_json_round_trips_with_either_writer() -> None:
    new = {"id": 7, "price": Decimal("9.90"), "at": datetime(2024, 5, 1, 10, tzinfo=UTC), "d": date(2024, 1, 2),
           "t": time(1, 2, 3), "gap": timedelta(days=1, seconds=5), "u": uuid.UUID(int=5), "b": b"\x00\xff",
           "j": {"a": [1, 2.5, None, "x"]}, "f": float("-inf"), "s": 'quote " and \\ and \n'}  # fmt: skip
    row = MappingProxyType(new)
    change = Change("0/1:0", "update", "public", "t", row, None, ("price",), 9, None, "0/1", "logical")
    assert Change.from_json(change.to_json()) == change
    assert change.to_json_bytes() == change.to_json().encode() == change._to_json_python().encode()
