"""LazyRow: an Insert's values decoded on first read, equal to what the eager decoder gives."""

import pytest

from pgchanges import pgoutput as p
from pgchanges.rowtypes import text_converter
from pgchanges.sources.lazy_row import LazyRow
from tests.pgoutput_encoder import encode

INT8, TEXT, NUMERIC = 20, 25, 1700


def insert(*values: bytes | None) -> bytes:
    return encode(p.Insert(None, 16384, p.TupleData(tuple(values))))


def row(payload: bytes) -> LazyRow:
    converters = tuple(text_converter({}, oid) for oid in (INT8, TEXT, NUMERIC))
    return LazyRow(("id", "note", "amount"), converters, payload)


def test_values_are_typed_on_first_read_and_kept():
    payload = insert(b"7", None, b"1.50")
    assert p.is_plain_insert(payload) and p.insert_relation(payload) == 16384
    lazy = row(payload)
    assert lazy["id"] == 7 and lazy["note"] is None and str(lazy["amount"]) == "1.50"
    assert dict(lazy) == {"id": 7, "note": None, "amount": lazy["amount"]} and len(lazy) == 3
    assert "note" in lazy and "other" not in lazy and lazy == dict(lazy)
    with pytest.raises(TypeError):
        lazy["id"] = 8  # type: ignore[index]


def test_unchanged_toast_stays_explicit():
    lazy = row(encode(p.Insert(None, 16384, p.TupleData((b"1", p.UNCHANGED_TOAST, None)))))
    assert lazy["note"] is p.UNCHANGED_TOAST


def test_bad_bytes_raise_a_decode_error_when_read():
    lazy = row(insert(b"7", b"x", b"1")[:-1])  # one byte short
    with pytest.raises(p.DecodeError, match=r"inside a row|does not fit"):
        dict(lazy)
