"""json and jsonb values arrive exactly as psycopg reads them, from every source: fractions as float, not Decimal.

Triggers write rows as JSON, and numeric columns need every digit, so the JSON sources once parsed every
fraction as Decimal: a fraction inside a json value then arrived as ``Decimal('0.1')`` where psycopg (and the
logical source) give ``0.1``, and ``Decimal('0.1') != 0.1``. Each value is compared with psycopg's reading of
the same row, types included at every depth, beside numeric columns that must stay exact Decimals: narrow ones
(at most 15 digits, which a float keeps) and wider ones (which make the row be parsed again with every digit).
"""

from decimal import Decimal
from typing import Any

import pytest

import pgchanges
from pgchanges.rowtypes import NUMERIC_OID, JsonConverters, fetch_type_info
from pgchanges.sources.rows import parse_json
from tests.conftest import take

pytestmark = pytest.mark.anyio

COLUMNS = {
    "j": "json",
    "jb": "jsonb",
    "jb_array": "jsonb[]",
    "amount": "numeric(12,2)",
    "exact": "numeric",
    "ratio": "float8",
    "amounts": "numeric(5,2)[]",
    "tiny": "numeric(15,15)",
    "wide": "numeric(17,2)",
}
ROWS = [
    # fractions at the top, nested in objects and arrays, beside integers, strings, booleans and null
    (
        1,
        '{"a": 0.1, "b": [1, 2.5, 0.3, {"c": -0.7}], "d": "0.1", "e": null, "f": true}',
        '{"x": 0.1, "y": [0.2]}',
        ['{"z": 0.1}', "1.25"],
        "10.10",
        "123456789012345678901234567890.000000000001",
        0.1,
        [Decimal("1.10"), None, Decimal("-999.99")],
        Decimal("0.123456789012345"),
        Decimal("123456789012345.67"),
    ),
    # bare fractions, exponents, tiny and huge floats
    (2, "0.1", "1e-7", ["3.14159"], "0.00", "0.1", 1.7976931348623157e308, [], Decimal("-0.000000000000001"), 0),
    # integers beyond 64 bits inside json, and in numeric: exact ints, not floats
    (
        3,
        '{"big": 123456789012345678901234567890, "f": 0.5}',
        "[18446744073709551616, 0.25]",
        [],
        "-0.01",
        "-98765432109876543210",
        -0.0,
        None,
        None,
        Decimal("-0.01"),
    ),
]


def same(have: Any, want: Any) -> bool:
    """Equal, with the same type at every depth (``{"a": Decimal('2.5')} == {"a": 2.5}`` would pass)."""
    if type(have) is not type(want):
        return False
    if isinstance(want, dict):
        return have.keys() == want.keys() and all(same(have[k], want[k]) for k in want)
    if isinstance(want, list):
        return len(have) == len(want) and all(same(h, w) for h, w in zip(have, want, strict=True))
    return bool(have == want)


SOURCES = {
    "notify": {},
    "outbox": {"consumer": "json_values"},
    "logical": {},
    "polling": {"column": "updated_at", "interval": 0.05, "consumer": "json_values"},
}


@pytest.mark.parametrize("source", list(SOURCES))
async def test_fractions_inside_json_values_arrive_as_psycopg_reads_them(dsn, db, source):
    columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
    db.execute(f"CREATE TABLE docs (id int PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT now(), {columns})")
    placeholders = ", ".join(["%s"] * (len(COLUMNS) + 1))
    names = ", ".join(["id", *COLUMNS])
    async with pgchanges.stream(dsn, tables=["docs"], source=source, **SOURCES[source]) as changes:
        for row in ROWS:
            db.execute(f"INSERT INTO docs ({names}) VALUES ({placeholders})", row)
        got = await take(changes, len(ROWS))
        await changes.ack(*got)
    assert sorted(c.new["id"] for c in got) == [r[0] for r in ROWS]
    for change in got:
        expected = db.execute(f"SELECT {', '.join(COLUMNS)} FROM docs WHERE id = %s", (change.new["id"],)).fetchone()
        assert expected is not None
        for name, want in zip(COLUMNS, expected, strict=True):
            have = change.new[name]
            assert same(have, want), f"row {change.new['id']} {name}: got {have!r}, psycopg reads {want!r}"


@pytest.mark.parametrize("source", ["notify", "outbox", "logical"])
async def test_an_update_keeps_float_fractions_in_both_rows_and_exact_numerics(dsn, db, source):
    db.execute("CREATE TABLE docs (id int PRIMARY KEY, doc jsonb, amount numeric(12,2))")
    options = {"consumer": "json_update"} if source == "outbox" else {}
    if source == "logical":
        db.execute("ALTER TABLE docs REPLICA IDENTITY FULL")
    async with pgchanges.stream(dsn, tables=["docs"], source=source, **options) as changes:
        db.execute("""INSERT INTO docs VALUES (1, '{"v": 0.1}', 1.10)""")
        db.execute("""UPDATE docs SET doc = '{"v": 0.2}', amount = 2.20 WHERE id = 1""")
        insert, update = await take(changes, 2)
        await changes.ack(insert, update)
    assert same(dict(update.old), {"id": 1, "doc": {"v": 0.1}, "amount": Decimal("1.10")})
    assert same(dict(update.new), {"id": 1, "doc": {"v": 0.2}, "amount": Decimal("2.20")})
    assert update.changed == ("doc", "amount")
    assert same(insert.new["doc"]["v"], 0.1)


NARROW = ["numeric(1,0)", "numeric(5,2)", "numeric(12,2)", "numeric(15,0)", "numeric(15,7)", "numeric(15,15)"]


def test_narrow_numerics_typed_from_floats_are_the_decimals_psycopg_reads(db):
    """numeric(p, s) with p <= 15 is typed from the fast parse's float by its column's scale (no second parse):
    every value of each such column, at its extremes and at random, comes out as the Decimal psycopg reads."""
    columns = ", ".join(f"c{i} {kind}" for i, kind in enumerate(NARROW))
    db.execute(f"CREATE TABLE narrow (id int, {columns})")
    for i, kind in enumerate(NARROW):
        precision, scale = (int(p) for p in kind[len("numeric(") : -1].split(","))
        biggest = format(Decimal(10**precision - 1).scaleb(-scale), "f")
        db.execute(
            f"""INSERT INTO narrow (id, c{i})
                SELECT g, CASE g WHEN 0 THEN %(big)s::numeric WHEN 1 THEN -%(big)s::numeric WHEN 2 THEN 0
                              ELSE round((random() * 2 - 1)::numeric * %(big)s::numeric, %(scale)s::int) END
                FROM generate_series(0, 2000) g""",
            {"big": biggest, "scale": scale},
        )
    types = fetch_type_info(db, {NUMERIC_OID})
    builder = JsonConverters(types)
    attributes = "SELECT attname, atttypmod FROM pg_attribute WHERE attrelid = 'narrow'::regclass AND attnum > 0"
    mods = dict(db.execute(attributes).fetchall())
    for i in range(len(NARROW)):
        convert = builder.for_oid(NUMERIC_OID, mods[f"c{i}"])
        assert convert is not None and not builder.needs_digits(NUMERIC_OID, mods[f"c{i}"])
        rows = db.execute(f"SELECT c{i}, to_json(c{i})::text FROM narrow WHERE c{i} IS NOT NULL").fetchall()
        assert len(rows) == 2001
        for want, text in rows:
            have = convert(parse_json(text))
            assert str(have) == str(want) and type(have) is Decimal, f"{NARROW[i]} {text}: {have!r} != {want!r}"
    wide = builder.needs_digits(NUMERIC_OID, mods["c0"] + (1 << 16) * 15)  # numeric(16,0): a float may lose digits
    assert wide and builder.needs_digits(NUMERIC_OID, -1)


@pytest.mark.parametrize("source", ["notify", "logical", "polling"])
async def test_json_that_orjson_refuses_arrives_as_psycopg_reads_it(dsn, db, source):
    """A json value json.loads reads and orjson refuses (a number beyond a double, a lone surrogate escape):
    the trigger's payload holds it as written, and parsing it must not fail. (The outbox keeps rows as jsonb,
    which refuses the surrogate and rewrites the number: a limitation of its own.)"""
    db.execute("CREATE TABLE odd (id int PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT now(), j json)")
    text = '{"huge": 1e400, "s": "\\ud800", "f": 0.5}'
    async with pgchanges.stream(dsn, tables=["odd"], source=source, **SOURCES[source]) as changes:
        db.execute("INSERT INTO odd (id, j) VALUES (1, %s)", (text,))
        [change] = await take(changes, 1)
        await changes.ack(change)
    want = db.execute("SELECT j FROM odd").fetchone()[0]
    assert same(change.new["j"], want), f"got {change.new['j']!r}, psycopg reads {want!r}"
