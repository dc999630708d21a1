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


@pytest.mark.parametrize(
    ("pattern", "table", "expected"),
    [
        ("public.*", "public.orders", True),
        ("public.*", "sales.orders", False),
        ("sales.order_*", "sales.order_items", True),
        ("sales.order_*", "sales.orders", False),
        ("sales.order_?", "sales.order_x", True),
        ("sales.order_?", "sales.order_xy", False),
        ("*.audit", "any.audit", True),
        ("public.orders", "public.orders", True),
        ("public.orders", "public.orders2", False),
    ],
)
def test_patterns_match_like_globs(pattern, table, expected):
    name = parse_table(pattern)
    schema, _, rest = table.partition(".")
    assert name.matches(schema, rest) is expected


def test_patterns_become_escaped_like_patterns():
    name = parse_table("sales.order_*")
    assert name.is_pattern and not parse_table("sales.orders").is_pattern
    assert name.like_patterns == ("sales", "order\\_%")
    assert parse_table('"100%".x?').like_patterns == ("100\\%", "x_")
    assert str(name) == "sales.order_*" and name.channel == "pgchanges:sales.order_*"


@pytest.mark.parametrize("text", ["public.orders", "sales.order_*", 'x?."a%b"', 'public."back\\\\slash"'])
def test_like_patterns_read_back(text):
    name = parse_table(text)
    assert TableName.from_like_patterns(*name.like_patterns) == name
