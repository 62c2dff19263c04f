"""Our text and binary encodings, byte for byte against what a real PostgreSQL produces.

Each case names a DuckDB type, the PostgreSQL type it is sent as, and literals both databases parse
to the same value. The value goes through DuckDB (so the Arrow arrays are exactly what the server
encodes) and through PostgreSQL, whose `x::text` and `*_send(x)` give the reference bytes. The same
reference bytes are then fed back through decode_parameter, which must yield the value psycopg
itself loads from them.

Needs a PostgreSQL server: $HD_TEST_PG_DSN, or the local default in tests/harness.py.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import duckdb
import numpy as np
import psycopg
import pyarrow as pa
import pytest

from engine_host.pgcompat.types.arrow_types import pg_type_for_arrow
from engine_host.pgcompat.types.decoding import decode_parameter
from engine_host.pgcompat.types.encoding import encode_column
from engine_host.pgcompat.types.table import pg_type_by_oid, pg_type_for_duckdb
from tests.harness import DEFAULT_PG_DSN, reference_postgres_dsn

PgConnection = psycopg.Connection[Any]

SESSION_SETTINGS = (
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, MDY'",
    "SET IntervalStyle = 'postgres'",
    "SET extra_float_digits = 1",
    "SET bytea_output = 'hex'",
)


@pytest.fixture(scope="module")
def pg() -> Iterator[PgConnection]:
    """A PostgreSQL connection with the session settings the server announces; skips when none is reachable."""
    dsn = reference_postgres_dsn()
    if dsn is None:
        tried = os.environ.get("HD_TEST_PG_DSN", DEFAULT_PG_DSN)
        pytest.skip(f"no PostgreSQL server was available to compare encodings against (tried {tried!r}); "
                    "point HD_TEST_PG_DSN at one, e.g. HD_TEST_PG_DSN='host=127.0.0.1 port=5432 dbname=test "
                    "user=postgres'")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in SESSION_SETTINGS:
            conn.execute(statement)
        yield conn


@pytest.fixture(scope="module")
def duck() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    yield con
    con.close()


def _row(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    row = cursor.fetchone()
    assert row is not None
    return tuple(row)


# A literal is a string both databases parse the same way, a (duckdb, postgres) pair where their
# syntaxes differ, or None for SQL NULL.
Literal = str | tuple[str, str] | None


@dataclass(frozen=True)
class Case:
    name: str
    duck_type: str
    pg_type: str
    send: str  # PostgreSQL's binary output function
    literals: tuple[Literal, ...]
    duck_expr: str = "CAST(v AS {t})"
    pg_expr: str = "CAST(v AS {t})"

    def duck_literals(self) -> list[str | None]:
        return [lit[0] if isinstance(lit, tuple) else lit for lit in self.literals]

    def pg_literals(self) -> list[str | None]:
        return [lit[1] if isinstance(lit, tuple) else lit for lit in self.literals]


def _random_doubles(count: int) -> tuple[str, ...]:
    rng = random.Random(20240102)
    values = [rng.uniform(-1, 1) * 10 ** rng.randint(-30, 30) for _ in range(count)]
    values += [float(rng.randint(1, 10**9)) for _ in range(count // 4)]
    values += [rng.randint(1, 99999) / 100 for _ in range(count // 4)]
    return tuple(repr(v) for v in values)


def _random_floats(count: int) -> tuple[str, ...]:
    rng = np.random.default_rng(20240102)
    values = (rng.uniform(-1, 1, count) * 10.0 ** rng.integers(-30, 30, count)).astype(np.float32)
    values = np.concatenate([values, rng.integers(1, 10**7, count // 4).astype(np.float32)])
    return tuple(np.format_float_scientific(v, unique=True) for v in values)


INT_EDGES = ("0", "1", "-1", "42", None)
FLOAT_EDGES = (
    "0", "-0", "0.1", "-0.1", "1", "1.5", "100", "123456", "1234567", "1e+20", "1e20", "1.5e-05", "0.0001",
    "0.00012", "1e-05", "1e-07", "1e14", "1e15", "1e16", "123456789012345", "1234567890123456",
    "999999999999999", "9.999999999999999e14", "1e+100", "-1e-100", "3.14159", "2.5", "1e-300",
    "Infinity", "-Infinity", "NaN", None,
)

CASES = [
    Case("int2", "SMALLINT", "int2", "int2send", (*INT_EDGES, "32767", "-32768")),
    Case("int4", "INTEGER", "int4", "int4send", (*INT_EDGES, "2147483647", "-2147483648")),
    Case("int8", "BIGINT", "int8", "int8send", (*INT_EDGES, "9223372036854775807", "-9223372036854775808")),
    Case("tinyint_as_int2", "TINYINT", "int2", "int2send", (*INT_EDGES, "127", "-128")),
    Case("uinteger_as_int8", "UINTEGER", "int8", "int8send", ("0", "4294967295", None)),
    Case("float8", "DOUBLE", "float8", "float8send",
         (*FLOAT_EDGES, "1.7976931348623157e308", "5e-324", "2.2250738585072014e-308", *_random_doubles(400))),
    Case("float4", "FLOAT", "float4", "float4send",
         (*(f for f in FLOAT_EDGES if f not in ("1e+100", "-1e-100", "1e-300")), "3.4028235e38", "1e-45",
          "1.1754944e-38", "16777216", "16777217", "0.3", "1e10", "1e30", *_random_floats(400))),
    Case("numeric_10_2", "DECIMAL(10,2)", "numeric(10,2)", "numeric_send",
         ("0", "1.5", "-0.05", "0.01", "-0.01", "12345678.99", "-99999999.99", "100", "10000.5", None)),
    Case("numeric_4_1", "DECIMAL(4,1)", "numeric(4,1)", "numeric_send", ("0", "-999.9", "0.1", "100.0", None)),
    Case("numeric_18_3", "DECIMAL(18,3)", "numeric(18,3)", "numeric_send",
         ("0", "999999999999999.999", "-999999999999999.999", "0.001", "1", "-1.5", "10000.0001", None)),
    Case("numeric_18_0", "DECIMAL(18,0)", "numeric(18,0)", "numeric_send",
         ("0", "999999999999999999", "-10000", "100000000", None)),
    Case("numeric_38_10", "DECIMAL(38,10)", "numeric(38,10)", "numeric_send",
         ("0", "1234567890123456789012345678.0123456789", "-9999999999999999999999999999.9999999999",
          "0.0000000001", "-0.00001", "1", None)),
    Case("numeric_38_0", "DECIMAL(38,0)", "numeric(38,0)", "numeric_send",
         ("0", "99999999999999999999999999999999999999", "-12345678901234567890123456789", None)),
    Case("numeric_5_5", "DECIMAL(5,5)", "numeric(5,5)", "numeric_send", ("0", "0.12345", "-0.00001", None)),
    Case("hugeint_as_numeric", "HUGEINT", "numeric", "numeric_send",
         ("0", "170141183460469231731687303715884105727", "-170141183460469231731687303715884105727",
          "18446744073709551616", "-1", "10000", None)),
    Case("ubigint_as_numeric", "UBIGINT", "numeric", "numeric_send", ("0", "18446744073709551615", "1", None)),
    Case("bool", "BOOLEAN", "bool", "boolsend", ("true", "false", None)),
    Case("text", "VARCHAR", "text", "textsend",
         ("a b", "", 'x"y', "back\\slash", "unicode é ✓ 😀", "NULL", "{}", "tab\there", "line\nbreak", None)),
    Case("bytea", "BLOB", "bytea", "byteasend", ("", "00", "0a0b", "00ff00", "deadbeef" * 10, None),
         duck_expr="unhex(v)", pg_expr="decode(v, 'hex')"),
    Case("date", "DATE", "date", "date_send",
         ("2024-01-02", "2000-01-01", "1999-12-31", "1970-01-01", "0001-01-01", "9999-12-31", "2000-02-29",
          "1900-03-01", "0099-07-04", ("10000-01-01", "10000-01-01"), ("0044-03-15 (BC)", "0044-03-15 BC"),
          "infinity", "-infinity", None)),
    Case("time", "TIME", "time", "time_send",
         ("00:00:00", "23:59:59.999999", "12:34:56.5", "01:02:03.000001", "10:00:00.1", "24:00:00", None)),
    Case("timestamp", "TIMESTAMP", "timestamp", "timestamp_send",
         ("2024-01-02 03:04:05.123456", "2000-01-01 00:00:00", "1999-12-31 23:59:59.999999",
          "1970-01-01 00:00:00", "2024-02-29 12:00:00.5", "0001-01-01 00:00:00", "9999-12-31 23:59:59.999999",
          "1900-01-01 00:00:00.01", ("0044-03-15 (BC) 12:00:00", "0044-03-15 12:00:00 BC"),
          ("10000-01-01 00:00:00", "10000-01-01 00:00:00"), "infinity", "-infinity", None)),
    Case("timestamp_ns", "TIMESTAMP_NS", "timestamp", "timestamp_send",
         (("2024-01-02 03:04:05.123456789", "2024-01-02 03:04:05.123456"), "1970-01-01 00:00:00",
          ("1969-12-31 23:59:59.999999999", "1969-12-31 23:59:59.999999"), None)),
    Case("timestamp_ms", "TIMESTAMP_MS", "timestamp", "timestamp_send",
         ("2024-01-02 03:04:05.123", "1960-06-01 00:00:00.5", None)),
    Case("timestamp_s", "TIMESTAMP_S", "timestamp", "timestamp_send", ("2024-01-02 03:04:05", "1901-01-01", None)),
    Case("timestamptz", "TIMESTAMPTZ", "timestamptz", "timestamptz_send",
         ("2024-01-02 03:04:05.123456+00", "2024-01-02 03:04:05+05:30", "2000-01-01 00:00:00-08",
          "1999-12-31 23:59:59.999999+00", "1970-01-01 00:00:00+00", "2024-06-30 12:00:00.1+02",
          ("0044-03-15 (BC) 12:00:00+00", "0044-03-15 12:00:00+00 BC"), "infinity", "-infinity", None)),
    Case("interval", "INTERVAL", "interval", "interval_send",
         ("14 months 3 days 14706500000 microseconds", "-1000000 microseconds", "0 microseconds",
          "-12 months", "-14 months", "1 month -1 day", "-1 day 3600000000 microseconds",
          "-1 year -2 months -3 days -4000000 microseconds", "11 months", "360000000000 microseconds",
          "1 year", "1 day", "1 microsecond", "2 years 1 month", "-10 months -3 days", None)),
    Case("uuid", "UUID", "uuid", "uuid_send",
         ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000",
          "ffffffff-ffff-ffff-ffff-ffffffffffff", None)),
    Case("json", "JSON", "json", "json_send",
         ('{"a":1}', '{"a": [1, 2.5, null], "b": "é"}', "[]", '"x"', "null", "3", None)),
]


def _duck_column(duck: duckdb.DuckDBPyConnection, case: Case) -> tuple[pa.ChunkedArray, object]:
    """The case's values as DuckDB returns them: (Arrow column, DuckDB type of the column)."""
    expr = case.duck_expr.format(t=case.duck_type)
    rel = duck.sql(
        f"SELECT {expr} AS x FROM (SELECT unnest($1::VARCHAR[]) AS v, unnest(range(len($1::VARCHAR[]))) AS i) "
        "ORDER BY i",
        params=[case.duck_literals()],
    )
    return rel.to_arrow_table().column(0), rel.types[0]


def _pg_wire_values(pg: PgConnection, sql: str, params: list[str | None], binary: bool) -> list[bytes | None]:
    """The first column exactly as PostgreSQL sends it in DataRows (text or binary result format)."""
    result = pg.pgconn.exec_params(
        sql.encode(), [None if p is None else p.encode() for p in params], result_format=1 if binary else 0)
    if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
        raise AssertionError(result.error_message.decode())
    return [result.get_value(row, 0) for row in range(result.ntuples)]


def _pg_reference(pg: PgConnection, case: Case, binary: bool) -> list[bytes | None]:
    """PostgreSQL's wire bytes for the case's literals; binary ones checked against its *_send function."""
    expr = case.pg_expr.format(t=case.pg_type)
    sql = f"SELECT {expr} FROM unnest($1::text[]) WITH ORDINALITY AS u(v, i) ORDER BY i"
    values = _pg_wire_values(pg, sql, [_pg_array_literal(case.pg_literals())], binary)
    if binary:
        sent = _pg_wire_values(pg, sql.replace(f"SELECT {expr}", f"SELECT {case.send}({expr})"),
                               [_pg_array_literal(case.pg_literals())], binary=False)
        assert [None if s is None else bytes.fromhex(s.decode()[2:]) for s in sent] == values
    return [None if v is None else bytes(v) for v in values]


def _mismatches(case: Case, ours: list[bytes | None], theirs: list[bytes | None]) -> list[str]:
    return [
        f"{case.literals[i]!r}: ours {mine!r} postgres {ref!r}"
        for i, (mine, ref) in enumerate(zip(ours, theirs, strict=True))
        if mine != ref
    ]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_type_maps_to_the_postgres_type_of_the_column(pg: PgConnection, duck: duckdb.DuckDBPyConnection,
                                                      case: Case) -> None:
    column, duck_type = _duck_column(duck, case)
    expected_oid = _row(pg.execute(f"SELECT '{case.pg_type}'::regtype::oid::int"))[0]
    assert pg_type_for_duckdb(duck_type).oid == expected_oid
    if case.duck_type not in ("UUID", "JSON"):  # DuckDB's default Arrow export sends these as plain strings
        assert pg_type_for_arrow(column.type).oid == expected_oid


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_text_encoding_matches_postgres(pg: PgConnection, duck: duckdb.DuckDBPyConnection, case: Case) -> None:
    column, duck_type = _duck_column(duck, case)
    reference = _pg_reference(pg, case, binary=False)
    ours = encode_column(column, pg_type_for_duckdb(duck_type), binary=False).to_pylist()
    assert _mismatches(case, ours, reference) == []


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_binary_encoding_matches_postgres(pg: PgConnection, duck: duckdb.DuckDBPyConnection,
                                          case: Case) -> None:
    column, duck_type = _duck_column(duck, case)
    reference = _pg_reference(pg, case, binary=True)
    ours = encode_column(column, pg_type_for_duckdb(duck_type), binary=True).to_pylist()
    assert _mismatches(case, ours, reference) == []


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_encoding_with_the_arrow_derived_type_matches_postgres_text(
        pg: PgConnection, duck: duckdb.DuckDBPyConnection, case: Case) -> None:
    """The simple-query path types columns from Arrow alone; the text must still match."""
    column, _ = _duck_column(duck, case)
    reference = _pg_reference(pg, case, binary=False)
    ours = encode_column(column, pg_type_for_arrow(column.type), binary=False).to_pylist()
    assert _mismatches(case, ours, reference) == []


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_one_row_batches_match_postgres(pg: PgConnection, duck: duckdb.DuckDBPyConnection, case: Case,
                                        binary: bool) -> None:
    """Point lookups send one-row batches, which take the value-by-value path: every value must still match."""
    column, duck_type = _duck_column(duck, case)
    reference = _pg_reference(pg, case, binary)
    whole = column.combine_chunks()
    pgtype = pg_type_for_duckdb(duck_type)
    ours = [encode_column(whole.slice(i, 1), pgtype, binary).to_pylist()[0] for i in range(len(whole))]
    assert _mismatches(case, ours, reference) == []


# --- parameters: PostgreSQL's own bytes decode to the value psycopg loads --------------------------

_DECODE_CASES = [c for c in CASES if c.name in (
    "int2", "int4", "int8", "float8", "numeric_10_2", "numeric_38_10", "hugeint_as_numeric", "bool", "text",
    "bytea", "date", "time", "timestamp", "timestamptz", "uuid", "json")]


def _comparable(value: object) -> object:
    """NaN-aware comparison key (NaN != NaN would fail equal lists)."""
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, Decimal) and value.is_nan():
        return "NaN"
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


@pytest.mark.parametrize("case", _DECODE_CASES, ids=[c.name for c in _DECODE_CASES])
@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_decoding_postgres_output_gives_the_value_psycopg_loads(pg: PgConnection, case: Case,
                                                                binary: bool) -> None:
    expr = case.pg_expr.format(t=case.pg_type)
    oid = _row(pg.execute(f"SELECT '{case.pg_type}'::regtype::oid::int"))[0]
    wire = _pg_reference(pg, case, binary)
    checked = 0
    for literal, data in zip(case.pg_literals(), wire, strict=True):
        try:
            loaded = _row(pg.execute(f"SELECT {expr} FROM (SELECT %s::text AS v) s", [literal]))[0]
        except psycopg.DataError:
            continue  # beyond Python's types (year 10000, BC, 24:00): covered by the unit tests
        if case.pg_type == "json":
            loaded = None if literal is None else literal  # psycopg parses json; the parameter stays text
        assert _comparable(decode_parameter(data, oid, binary)) == _comparable(loaded), literal
        checked += 1
    assert checked >= 3


def test_interval_binary_from_postgres_decodes_to_months_days_and_microseconds(pg: PgConnection) -> None:
    raw = _row(pg.execute("SELECT interval_send('1 year 2 mons 3 days 04:05:06.5'::interval)"))[0]
    assert decode_parameter(bytes(raw), 1186, True) == "14 months 3 days 14706500000 microseconds"
    raw = _row(pg.execute("SELECT interval_send('-3 days 00:00:01'::interval)"))[0]
    assert decode_parameter(bytes(raw), 1186, True) == dt.timedelta(days=-3, seconds=1)


@pytest.mark.parametrize("literal", [
    "1 year 2 mons 3 days 04:05:06.5", "-00:00:01", "-1 years -2 mons +3 days -04:05:06", "1 mon -1 days",
    "100:00:00", "@ 1 hour 30 mins ago", "P1Y2M3DT4H5M6.5S", "1.5 days", "0.5 months", "1 week", "2 decades",
    "-1 day +01:00:00", "00:00:00.000001", "1 day 2 hours 3 minutes 4.5 seconds", "1-2", "-1-2", "3 04:05:06",
    "1-2 3 04:05:06", "5", "1.5", "2 weeks ago", "1 millisecond", "-1.25 hours",
])
def test_interval_text_parameter_matches_postgres_parsing(pg: PgConnection, literal: str) -> None:
    raw = _row(pg.execute("SELECT interval_send(%s::interval)", [literal]))[0]
    us, days, months = struct.unpack("!qii", bytes(raw))
    decoded = decode_parameter(literal.encode(), 1186, False)
    assert decoded == decode_parameter(struct.pack("!qii", us, days, months), 1186, True)


@pytest.mark.parametrize(("element", "values"), [
    ("int4", ["1", "2", None, "-2147483648"]),
    ("int8", ["9223372036854775807", None]),
    ("int2", ["1"]),
    ("float8", ["1.5", "NaN", "-Infinity", "1e+20", None]),
    ("float4", ["0.1", None]),
    ("numeric(10,2)", ["1.50", "-0.05", None]),
    ("bool", ["true", "false", None]),
    ("text", ["a b", 'x"y', None, "", "NULL", "null", "a,b", "a\\b", "{", " ", "é", "\t"]),
    ("varchar", ["plain", "with space"]),
    ("bytea", ["\\x00ff", "\\x", None]),
    ("date", ["2024-01-02", "infinity", None]),
    ("time", ["01:02:03.5", None]),
    ("timestamp", ["2024-01-02 03:04:05.5", None]),
    ("timestamptz", ["2024-01-02 03:04:05+02", None]),
    ("interval", ["1 day", "-00:00:01", None]),
    ("uuid", ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", None]),
    ("json", ['{"a": 1}', "[]", None]),
    ("int4", []),
    ("text", []),
    ("int4", [None]),
])
def test_one_dimensional_array_matches_postgres(pg: PgConnection, duck: duckdb.DuckDBPyConnection,
                                                element: str, values: list[str | None]) -> None:
    duck_element = {"int2": "SMALLINT", "int4": "INTEGER", "int8": "BIGINT", "float8": "DOUBLE", "float4": "FLOAT",
                    "numeric(10,2)": "DECIMAL(10,2)", "bool": "BOOLEAN", "text": "VARCHAR", "varchar": "VARCHAR",
                    "bytea": "BLOB", "date": "DATE", "time": "TIME", "timestamp": "TIMESTAMP",
                    "timestamptz": "TIMESTAMPTZ", "interval": "INTERVAL", "uuid": "UUID", "json": "JSON"}[element]
    pg_element = "text" if element == "varchar" else element
    duck_values = [] if element == "bytea" else values
    if element == "bytea":
        duck_items = ", ".join("NULL" if v is None else f"unhex('{v[2:]}')" for v in values)
    else:
        duck_items = ", ".join(f"CAST(${i + 1} AS {duck_element})" for i in range(len(values)))
    duck_sql = f"SELECT CAST([{duck_items}] AS {duck_element}[]) AS x"
    rel = duck.sql(duck_sql, params=duck_values)
    column = rel.to_arrow_table().column(0)
    pgtype = pg_type_for_duckdb(rel.types[0])
    text, raw = _row(pg.execute(
        f"SELECT CAST(%s AS {pg_element}[])::text, array_send(CAST(%s AS {pg_element}[]))",
        [_pg_array_literal(values), _pg_array_literal(values)],
    ))
    assert encode_column(column, pgtype, binary=False).to_pylist() == [text.encode()]
    assert encode_column(column, pgtype, binary=True).to_pylist() == [bytes(raw)]
    oid = pgtype.oid
    assert _comparable(decode_parameter(text.encode(), oid, False)) == _comparable(
        decode_parameter(bytes(raw), oid, True))


def _pg_array_literal(values: list[str | None]) -> str:
    def quote(v: str | None) -> str:
        if v is None:
            return "NULL"
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "{" + ",".join(quote(v) for v in values) + "}"


def test_two_dimensional_array_matches_postgres(pg: PgConnection, duck: duckdb.DuckDBPyConnection) -> None:
    rel = duck.sql("SELECT [[1, 2], [3, NULL]]::INTEGER[][] AS x")
    column = rel.to_arrow_table().column(0)
    pgtype = pg_type_for_duckdb(rel.types[0])
    text, raw = _row(pg.execute("SELECT x::text, array_send(x) FROM (SELECT '{{1,2},{3,NULL}}'::int4[] AS x) s"))
    assert encode_column(column, pgtype, binary=False).to_pylist() == [text.encode()]
    assert encode_column(column, pgtype, binary=True).to_pylist() == [bytes(raw)]
    assert decode_parameter(bytes(raw), 1007, True) == [[1, 2], [3, None]]


def test_time_with_time_zone_matches_postgres_when_duckdb_exports_the_offset(
        pg: PgConnection) -> None:
    con = duckdb.connect()
    con.execute("SET arrow_lossless_conversion = true")
    literals = ["01:02:03.5+05:30", "01:02:03-08", "00:00:00+00", "23:59:59.999999-15:59"]
    for literal in literals:
        rel = con.sql(f"SELECT TIMETZ '{literal}' AS x")
        column = rel.to_arrow_table().column(0)
        pgtype = pg_type_for_arrow(column.type)
        assert pgtype == pg_type_by_oid(1266)
        text, raw = _row(pg.execute("SELECT %s::timetz::text, timetz_send(%s::timetz)", [literal, literal]))
        assert encode_column(column, pgtype, binary=False).to_pylist() == [text.encode()], literal
        assert encode_column(column, pgtype, binary=True).to_pylist() == [bytes(raw)], literal


def test_bit_string_matches_postgres(pg: PgConnection, duck: duckdb.DuckDBPyConnection) -> None:
    for literal in ["101", "0", "11111111", "000000001", "1010101010101010101"]:
        rel = duck.sql(f"SELECT '{literal}'::BIT AS x")
        column = rel.to_arrow_table().column(0)
        pgtype = pg_type_for_duckdb(rel.types[0])
        text, raw = _row(pg.execute("SELECT %s::varbit::text, varbit_send(%s::varbit)", [literal, literal]))
        assert encode_column(column, pgtype, binary=False).to_pylist() == [text.encode()]
        assert encode_column(column, pgtype, binary=True).to_pylist() == [bytes(raw)]
        assert decode_parameter(bytes(raw), 1562, True) == literal


def test_jsonb_binary_is_version_byte_and_text_like_postgres(pg: PgConnection) -> None:
    raw = _row(pg.execute("SELECT jsonb_send('{\"a\": 1}'::jsonb)"))[0]
    jsonb = pg_type_by_oid(3802)
    assert jsonb is not None
    assert encode_column(pa.array(['{"a": 1}']), jsonb, binary=True).to_pylist() == [bytes(raw)]
    assert decode_parameter(bytes(raw), 3802, True) == '{"a": 1}'


def test_uuid_parameter_round_trips_postgres_binary(pg: PgConnection) -> None:
    value = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    raw = _row(pg.execute("SELECT uuid_send(%s::uuid)", [str(value)]))[0]
    assert decode_parameter(bytes(raw), 2950, True) == value


def test_numeric_special_values_decode_like_postgres(pg: PgConnection) -> None:
    for literal in ["NaN", "Infinity", "-Infinity", "0.000", "-123.4500", "1e-30", "12345678901234567890.5"]:
        raw = _row(pg.execute("SELECT numeric_send(%s::numeric)", [literal]))[0]
        decoded = decode_parameter(bytes(raw), 1700, True)
        assert isinstance(decoded, Decimal)
        expected = Decimal(literal)
        assert (decoded.is_nan() and expected.is_nan()) or str(decoded) == str(expected) or decoded == expected


def test_timestamptz_parameter_with_offset_is_the_same_instant_postgres_stores(pg: PgConnection) -> None:
    literal = "2024-01-02 03:04:05.123456+05:30"
    raw = _row(pg.execute("SELECT timestamptz_send(%s::timestamptz)", [literal]))[0]
    assert decode_parameter(literal.encode(), 1184, False) == decode_parameter(bytes(raw), 1184, True)
    assert decode_parameter(literal.encode(), 1184, False) == dt.datetime(2024, 1, 1, 21, 34, 5, 123456, tzinfo=dt.UTC)
