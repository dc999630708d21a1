"""Values arrive typed from every source: every column equals what psycopg itself reads from the table."""

from decimal import Decimal

import pytest

import pgchanges
from tests.conftest import take

pytestmark = pytest.mark.anyio

COLUMNS = {
    "c_int2": "int2",
    "c_int4": "int4",
    "c_int8": "int8",
    "c_numeric": "numeric",
    "c_numeric_scaled": "numeric(30,10)",
    "c_float4": "float4",
    "c_float8": "float8",
    "c_bool": "bool",
    "c_text": "text",
    "c_varchar": "varchar(10)",
    "c_char": "char(3)",
    "c_date": "date",
    "c_timestamp": "timestamp",
    "c_timestamptz": "timestamptz",
    "c_time": "time",
    "c_timetz": "timetz",
    "c_interval": "interval",
    "c_uuid": "uuid",
    "c_bytea": "bytea",
    "c_json": "json",
    "c_jsonb": "jsonb",
    "c_int_array": "int4[]",
    "c_text_array": "text[]",
    "c_numeric_array": "numeric[]",
    "c_tstz_array": "timestamptz[]",
    "c_nested": "int4[][]",
    "c_enum": "mood",
    "c_domain": "money_amount",
    "c_inet": "inet",
    "c_cidr": "cidr",
    "c_range": "int4range",
    "c_oid": "oid",
}
ROWS = [
    """(1, 32767, 2147483647, 9223372036854775807, 123456789012345678901234567890.123456789,
        1.2345678901, 1.5, 0.1, true, 'text ü 🐘', 'varchar', 'ab', '2024-02-29', '2024-02-29 12:34:56.789',
        '2024-02-29 12:34:56.789+05:30', '23:59:59.999999', '12:00:00+02', '1 year 2 mons 3 days 04:05:06',
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10', '{"a": [1, 2.5]}', '{"b": {"c": null}}',
        '{1,NULL,3}', '{"x","y z","q\\"uote"}', '{1.10,2.2000}', '{"2024-01-01 00:00+00"}', '{{1,2},{3,4}}',
        'happy', 12.50, '192.168.0.1/24', '10.0.0.0/8', '[1,10)', 42)""",
    "(2, " + ", ".join(["NULL"] * len(COLUMNS)) + ")",
    """(3, -32768, -1, -1, 'NaN', 0, 'NaN', '-Infinity', false, '', '', '', '0001-01-01', '1999-12-31 23:59:59',
        '1970-01-01 00:00:00.000001+14', '00:00', '00:00+00', '-1 day', '00000000-0000-0000-0000-000000000000',
        '', 'null', '[]',
        '{}', '{}', '{}', '{}', '{}', 'sad', 0, '::1', '::/0', 'empty', 0)""",
]


def same(a, b):
    if isinstance(a, float | Decimal) and type(a) is type(b) and a != a and b != b:  # NaN
        return True
    return a == b and type(a) is type(b)


SOURCE_OPTIONS = {"notify": {}, "outbox": {"consumer": "types"}, "logical": {}}


@pytest.mark.parametrize("source", list(SOURCE_OPTIONS))
async def test_every_type_arrives_as_psycopg_reads_it(dsn, db, source):
    db.execute("CREATE TYPE mood AS ENUM ('happy', 'sad')")
    db.execute("CREATE DOMAIN money_amount AS numeric(12,2) CHECK (VALUE >= 0)")
    columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
    db.execute(f"CREATE TABLE typed (id int PRIMARY KEY, {columns})")
    async with pgchanges.stream(dsn, tables=["typed"], source=source, **SOURCE_OPTIONS[source]) as changes:
        db.execute("SET TIME ZONE 'America/New_York'")  # the writer's zone must not matter
        for row in ROWS:
            db.execute(f"INSERT INTO typed VALUES {row}")
        got = await take(changes, len(ROWS))
        await changes.ack(*got)
    db.execute("RESET TIME ZONE")
    for change in got:
        expected = db.execute(f"SELECT {', '.join(COLUMNS)} FROM typed WHERE id = %s", (change.new["id"],)).fetchone()
        for name, want in zip(COLUMNS, expected, strict=True):
            have = change.new[name]
            assert same(have, want), f"row {change.new['id']} {name}: got {have!r}, psycopg reads {want!r}"


async def test_infinity_timestamps_stay_as_text(dsn, db):
    db.execute("CREATE TABLE t (id int, at timestamptz)")
    async with pgchanges.stream(dsn, tables=["t"]) as changes:
        db.execute("INSERT INTO t VALUES (1, 'infinity')")
        [change] = await take(changes, 1)
    assert change.new["at"] == "infinity"
