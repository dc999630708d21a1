"""The pgoutput decoder: every message kind round-trips through a test encoder; bad bytes raise DecodeError."""

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgchanges import pgoutput as p
from pgchanges.errors import DecodeError
from tests.pgoutput_encoder import encode

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
names = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20)
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1)).map(
    lambda d: d.replace(tzinfo=UTC)
)
values = st.one_of(st.none(), st.just(p.UNCHANGED_TOAST), st.binary(max_size=50))
tuples = st.lists(values, max_size=6).map(lambda vs: p.TupleData(tuple(vs)))
binary_tuples = st.lists(st.binary(max_size=10), min_size=1, max_size=4).map(
    lambda vs: p.TupleData(tuple(vs), tuple(i % 2 == 0 for i in range(len(vs))))
)
columns = st.builds(
    p.Column, name=names, type_oid=u32, type_modifier=st.integers(-(2**31), 2**31 - 1), is_key=st.booleans()
)


def in_stream(xid_strategy):
    """Messages inside a streamed block carry an xid; outside they do not."""
    return st.one_of(st.none(), xid_strategy)


row_messages = st.one_of(
    st.builds(
        p.Relation,
        xid=in_stream(u32),
        oid=u32,
        namespace=names,
        name=names,
        replica_identity=st.sampled_from("dnfi"),
        columns=st.lists(columns, max_size=5).map(tuple),
    ),
    st.builds(p.Type, xid=in_stream(u32), oid=u32, namespace=names, name=names),
    st.builds(p.Insert, xid=in_stream(u32), relation_oid=u32, new=st.one_of(tuples, binary_tuples)),
    st.builds(p.Update, xid=in_stream(u32), relation_oid=u32, old_kind=st.none(), old=st.none(), new=tuples),
    st.builds(p.Update, xid=in_stream(u32), relation_oid=u32, old_kind=st.sampled_from("KO"), old=tuples, new=tuples),
    st.builds(p.Delete, xid=in_stream(u32), relation_oid=u32, old_kind=st.sampled_from("KO"), old=tuples),
    st.builds(p.Truncate, xid=in_stream(u32), options=st.integers(0, 3), relation_oids=st.lists(u32).map(tuple)),
    st.builds(
        p.LogicalMessage,
        xid=in_stream(u32),
        transactional=st.booleans(),
        lsn=u64,
        prefix=names,
        content=st.binary(max_size=100),
    ),
)
plain_messages = st.one_of(
    st.builds(p.Begin, final_lsn=u64, commit_time=times, xid=u32),
    st.builds(p.Commit, flags=st.just(0), commit_lsn=u64, end_lsn=u64, commit_time=times),
    st.builds(p.Origin, commit_lsn=u64, name=names),
    st.builds(p.StreamCommit, xid=u32, flags=st.just(0), commit_lsn=u64, end_lsn=u64, commit_time=times),
    st.builds(p.StreamAbort, xid=u32, subxid=u32),
)


@given(row_messages)
def test_row_messages_round_trip(message):
    decoder = p.Decoder()
    if message.xid is not None:
        assert decoder.decode(encode(p.StreamStart(message.xid, True))) == p.StreamStart(message.xid, True)
    assert decoder.decode(encode(message)) == message
    if message.xid is not None:
        assert decoder.decode(encode(p.StreamStop())) == p.StreamStop()
        assert not decoder.in_stream


@given(plain_messages)
def test_transaction_messages_round_trip(message):
    assert p.Decoder().decode(encode(message)) == message


@given(st.binary(max_size=60))
def test_arbitrary_bytes_decode_or_raise_decode_error(data):
    with contextlib.suppress(DecodeError):
        p.Decoder().decode(data)


@pytest.mark.parametrize("data", [b"", b"Z", b"B\x00", b"I\x00\x00\x00\x01X", b"R\x00\x00\x00\x01abc"])
def test_bad_bytes_raise_a_clear_error(data):
    with pytest.raises(DecodeError):
        p.Decoder().decode(data)


def test_truncated_tuple_is_an_error():
    message = encode(p.Insert(None, 1, p.TupleData((b"hello",))))
    with pytest.raises(DecodeError, match=r"ends after|does not fit"):
        p.Decoder().decode(message[:-2])


def test_lsn_text_form():
    assert p.lsn_to_str(0x16B3748) == "0/16B3748"
    assert p.str_to_lsn("1/FF") == (1 << 32) + 0xFF
    assert p.pg_timestamp(p.pg_micros(datetime(2024, 5, 1, tzinfo=UTC) + timedelta(microseconds=7))) == datetime(
        2024, 5, 1, 0, 0, 0, 7, tzinfo=UTC
    )


def test_invalid_utf8_name_is_a_decode_error():
    with pytest.raises(DecodeError, match="UTF-8"):
        p.Decoder().decode(b"O" + b"\0" * 8 + b"\xff\xfe\0")


def test_a_timestamp_out_of_range_is_a_decode_error():
    begin = b"B" + (0).to_bytes(8, "big") + (0x0381_0000_0000_0000).to_bytes(8, "big") + (0).to_bytes(4, "big")
    with pytest.raises(DecodeError, match="out of range"):
        p.Decoder().decode(begin)
