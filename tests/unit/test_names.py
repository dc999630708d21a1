import pytest

from pgchanges.errors import ConfigError
from pgchanges.names import MAX_IDENTIFIER_BYTES, TableName, channel_name, parse_table


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("orders", TableName("public", "orders")),
        ("Orders", TableName("public", "orders")),
        ("sales.orders", TableName("sales", "orders")),
        ('"Sales"."Order Items"', TableName("Sales", "Order Items")),
        ('"we""ird".t', TableName('we"ird', "t")),
        ('"dotted.name"', TableName("public", "dotted.name")),
        ("ünïcode.tåble", TableName("ünïcode", "tåble")),
    ],
)
def test_parse_table(text, expected):
    assert parse_table(text) == expected


@pytest.mark.parametrize("text", ["", "a.", ".b", "a.b.c", '"open', 'a"b'])
def test_parse_table_rejects(text):
    with pytest.raises(ConfigError):
        parse_table(text)


def test_display_quotes_only_when_needed():
    assert str(TableName("public", "orders")) == "public.orders"
    assert str(TableName("Sales", "Order Items")) == '"Sales"."Order Items"'
    assert parse_table(str(TableName("Sales", 'a"b'))) == TableName("Sales", 'a"b')


def test_long_channel_names_fit_and_do_not_collide():
    a = channel_name("s." + "x" * 60 + "a")
    b = channel_name("s." + "x" * 60 + "b")
    assert a != b
    assert len(a.encode()) <= MAX_IDENTIFIER_BYTES and len(b.encode()) <= MAX_IDENTIFIER_BYTES
    multibyte = channel_name("ü" * 40)
    assert len(multibyte.encode()) <= MAX_IDENTIFIER_BYTES
