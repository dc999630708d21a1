"""Row mappings and tuple splitting: the compiled and the pure-Python implementation, against each other."""

from __future__ import annotations

import json
import os
import pickle
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pgchanges import pgoutput as p
from pgchanges import rowmaps
from pgchanges.errors import DecodeError
from pgchanges.rowtypes import text_converter
from tests.pgoutput_encoder import encode

INT8, TEXT, NUMERIC = 20, 25, 1700
NAMES = ("id", "note", "amount")
CONVERTERS = tuple(text_converter({}, oid) for oid in (INT8, TEXT, NUMERIC))

IMPLEMENTATIONS = ["python"] + (["c"] if rowmaps.IMPLEMENTATION == "c" else [])


def test_the_compiled_rows_are_in_use():
    """The install builds the extension (pyproject.toml: ext-modules); only PGCHANGES_PURE_PYTHON turns it off."""
    expected = "python" if os.environ.get("PGCHANGES_PURE_PYTHON") else "c"
    assert expected == rowmaps.IMPLEMENTATION


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> Any:
    if request.param == "python":
        return rowmaps.PyRow, rowmaps.py_split_tuple, rowmaps.py_tuple_end
    return rowmaps.Row, rowmaps.split_tuple, rowmaps.tuple_end


def insert(*values: bytes | object | None) -> bytes:
    return encode(p.Insert(None, 16384, p.TupleData(tuple(values))))  # type: ignore[arg-type]


def test_values_are_typed_on_first_read_and_kept(impl: Any) -> None:
    row_type = impl[0]
    row = row_type(NAMES, CONVERTERS, insert(b"7", None, b"1.50"), 6, True)
    assert isinstance(row, Mapping)
    assert row["id"] == 7 and row["note"] is None and row["amount"] == Decimal("1.50")
    assert dict(row) == {"id": 7, "note": None, "amount": Decimal("1.50")} and len(row) == 3
    assert "note" in row and "other" not in row and list(row) == list(NAMES)
    assert row == dict(row) and dict(row) == row and row == MappingProxyType(dict(row)) and row != {"id": 7}
    assert row.get("id") == 7 and row.get("x") is None and row.get("x", 1) == 1
    assert list(row.keys()) == list(NAMES) and next(iter(row.values())) == 7 and dict(row.items()) == dict(row)
    assert repr(row) == repr(dict(row)) and pickle.loads(pickle.dumps(row)) == dict(row)
    with pytest.raises(KeyError, match="other"):
        row["other"]
    with pytest.raises(TypeError):
        row["id"] = 8
    with pytest.raises(TypeError):
        hash(row)


def test_unchanged_toast_and_binary_values_stay_as_sent(impl: Any) -> None:
    row_type, split, _ = impl
    row = row_type(NAMES, CONVERTERS, insert(b"1", p.UNCHANGED_TOAST, None), 6, True)
    assert row["note"] is p.UNCHANGED_TOAST and row["amount"] is None
    data = encode(p.Insert(None, 1, p.TupleData((b"\x00\x01", b"x"), (True, False))))
    assert split(data, 6) == ((b"\x00\x01", b"x"), (True, False), len(data))
    assert split(insert(b"a", None), 6)[1] == ()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (insert(b"7", b"x", b"1")[:-1], r"does not fit"),
        (insert(b"7")[:7], r"inside a row"),
        (insert(b"7") + b"!", r"1 unexpected trailing bytes"),
        (insert(b"7")[:8] + b"z", r"unknown tuple value kind 'z'"),
        (insert()[:6] + b"\xff\xff", r"negative column count -1"),
    ],
)
def test_bad_bytes_raise_a_decode_error_when_read(impl: Any, payload: bytes, message: str) -> None:
    row = impl[0](NAMES, CONVERTERS, payload, 6, True)  # no error yet: rows are read lazily
    with pytest.raises(DecodeError, match=message):
        dict(row)


def test_a_key_only_old_row_is_followed_by_the_new_one(impl: Any) -> None:
    _, _, end_of = impl
    data = encode(p.Update(None, 1, "K", p.TupleData((b"1", None, None)), p.TupleData((b"1", b"n", b"2"))))
    end = end_of(data, 6)
    assert data[end : end + 1] == b"N"
    assert p.plain_update(data) == (6, end + 1)
    assert p.plain_update(encode(p.Update(None, 1, None, None, p.TupleData((b"1",))))) == (-1, 6)
    assert p.plain_update(encode(p.Update(None, 1, "O", p.TupleData((b"1",)), p.TupleData((b"1",))))) is None


def test_deferred_and_loaded_rows(impl: Any) -> None:
    row_type = impl[0]
    calls: list[str] = []

    def load(text: str) -> dict[str, Any]:
        calls.append(text)
        return {"a": text}

    row = row_type.deferred(load, "x")
    assert calls == []
    assert dict(row) == {"a": "x"} and row["a"] == "x" and calls == ["x"]
    assert row_type.loaded({"b": 1}) == {"b": 1}
    with pytest.raises(TypeError, match="not a dict"):
        dict(row_type.deferred(lambda _: [1], None))
    with pytest.raises(ValueError, match="boom"):
        dict(row_type.deferred(lambda _: (_ for _ in ()).throw(ValueError("boom")), None))


def test_a_row_read_by_many_threads_at_once_is_decoded_whole_for_each(impl: Any) -> None:
    # The first read decodes, running Python (converters, a deferred load); other threads reading the same row
    # meanwhile must each get the whole row, and none a half-cleared one.
    row_type = impl[0]
    started = threading.Barrier(8)

    def slow(value: bytes) -> int:
        os.sched_yield()  # let the other threads in while this row is being decoded
        return int(value)

    def load(text: str) -> dict[str, Any]:
        os.sched_yield()
        return {"a": text}

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        _read_by_threads(row_type, slow, load, started)
    finally:
        sys.setswitchinterval(interval)


def _read_by_threads(row_type: Any, slow: Any, load: Any, started: threading.Barrier) -> None:
    for _ in range(50):
        tuple_row = row_type(NAMES, (slow, *CONVERTERS[1:]), insert(b"7", None, b"1.50"), 6, True)
        deferred = row_type.deferred(load, "x")
        got: list[Any] = []

        def read(tuple_row: Any = tuple_row, deferred: Any = deferred, got: list[Any] = got) -> None:
            started.wait(timeout=10)
            got.append((dict(tuple_row), dict(deferred)))

        threads = [threading.Thread(target=read) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert got == [({"id": 7, "note": None, "amount": Decimal("1.50")}, {"a": "x"})] * 8


values = st.one_of(st.none(), st.just(p.UNCHANGED_TOAST), st.binary(max_size=20))


@given(st.lists(values, max_size=8), st.binary(max_size=4))
def test_both_splitters_agree_on_any_bytes(columns: list[Any], tail: bytes) -> None:
    data = insert(*columns)
    for candidate in (data, data + tail, data[: max(6, len(data) - len(tail))]):
        outcomes = []
        for split in (rowmaps.py_split_tuple, rowmaps.split_tuple):
            try:
                outcomes.append(split(candidate, 6))
            except DecodeError as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1]


CONVERTER_PAIRS = [(rowmaps.py_json_from_text, rowmaps.PyGuarded)] + (
    [(rowmaps.json_from_text, rowmaps.Guarded)] if rowmaps.IMPLEMENTATION == "c" else []
)


@pytest.mark.parametrize(("json_from_text", "guarded"), CONVERTER_PAIRS)
def test_converters_give_what_psycopg_gives(json_from_text: Any, guarded: Any) -> None:
    for text in [b'{"a": 1.5, "b": [1, 2.25e3], "c": null}', b' {"a": 1} ', b'"x"', b"123456789012345678901234", b"[]"]:
        assert json_from_text(text) == json.loads(text)
        assert type(json_from_text(text)) is type(json.loads(text))
    for bad in [b"", b"[1,", b"{} x"]:
        with pytest.raises(json.JSONDecodeError):
            json_from_text(bad)

    def refuse(value: bytes) -> Any:
        raise ValueError(value)

    keep = guarded(refuse, bytes.decode, (ValueError,))
    assert keep(b"infinity") == "infinity"
    assert guarded(int, bytes.decode, (ValueError,))(b"12") == 12
    with pytest.raises(KeyError):
        guarded(lambda v: {}[v], bytes.decode, (ValueError,))(b"k")  # other errors are not caught


def test_rows_take_keywords_and_refuse_wrong_arguments(impl: Any) -> None:
    row_type = impl[0]
    payload = insert(b"7", None, b"1")
    row = row_type(names=NAMES, converters=CONVERTERS, data=payload, offset=6, whole=True)
    assert row == {"id": 7, "note": None, "amount": Decimal(1)}
    assert row_type(NAMES, CONVERTERS, payload, 6) == row  # whole defaults to False
    with pytest.raises(TypeError):
        row_type(NAMES, CONVERTERS, payload)


FIRST = p.pg_micros(datetime(1, 1, 1, tzinfo=UTC))
LAST = p.pg_micros(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))


@pytest.mark.skipif(rowmaps.compiled_pg_timestamp is None, reason="the extension is not built")
@example(FIRST)
@example(FIRST - 1)
@example(LAST)
@example(LAST + 1)
@example(-1)
@example(86_400_000_000)
@given(st.integers(-(2**63), 2**63 - 1) | st.integers(-63_000_000_000_000_000, 252_000_000_000_000_000))
def test_the_compiled_timestamps_are_the_timedelta_sums(micros: int) -> None:
    compiled = rowmaps.compiled_pg_timestamp
    assert compiled is not None
    try:
        expected = p.py_pg_timestamp(micros)
    except OverflowError:
        with pytest.raises(OverflowError):
            compiled(micros)
        return
    got = compiled(micros)
    assert got == expected and got.tzinfo is expected.tzinfo and got.isoformat() == expected.isoformat()


json_texts = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
).map(lambda value: json.dumps(value, separators=(", ", ": ")).encode())

JSONB_CONVERTERS = [rowmaps.py_jsonb_from_text] + ([rowmaps.jsonb_from_text] if rowmaps.IMPLEMENTATION == "c" else [])


@pytest.mark.parametrize("jsonb_from_text", JSONB_CONVERTERS)
@example(text=b"123456789012345678901234567890")
@example(text=b"[1e400]")
@example(text=b'{"a": 18446744073709551616}')
@given(text=json_texts)
def test_jsonb_values_are_what_json_loads_gives(jsonb_from_text: Any, text: bytes) -> None:
    """orjson reads what json.loads reads, but integers beyond 64 bits as floats: those take the scanner."""
    got, expected = jsonb_from_text(text), json.loads(text)
    assert got == expected and repr(got) == repr(expected)
