"""PostgreSQL's meaning where clients depend on it (issue 16 item 4), statement by statement against PostgreSQL 15.

Each statement runs on the engine (the session's demo host) and on the reference PostgreSQL, and the
result column names, the RowDescription type OIDs and the values must be equal. Both sides read a
table `pgsem_numbers` with the same rows: on the engine a table of its own, on PostgreSQL a
temporary table of the test's connection.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Iterator
from decimal import ROUND_HALF_DOWN, ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
import pytest

from tests.e2e.side_by_side import PgConnection, engine_table, postgres_table
from tests.harness import EngineHostProcess

TABLE = f"pgsem_numbers_{uuid.uuid4().hex[:8]}"
COLUMNS = "s smallint, i integer, b bigint, n numeric(10,2), f double precision, r real, t text, ok boolean"
ROWS = "(1, 7, 10000000000, 2.50, 1.5, 0.5, 'abc', true), (2, -7, 3, -1.25, 2.25, 1.5, 'de', false), " \
       "(3, 0, 0, 0, 0, 0, '', true)"


@pytest.fixture(scope="module")
def engine(engine_host: EngineHostProcess) -> Iterator[PgConnection]:
    with engine_table(engine_host, TABLE, COLUMNS, ROWS) as conn:
        yield conn


@pytest.fixture(scope="module")
def postgres(reference_pg: str) -> Iterator[PgConnection]:
    with postgres_table(reference_pg, TABLE, COLUMNS, ROWS) as conn:
        yield conn


def _run(conn: PgConnection, sql: str) -> tuple[list[tuple[str, int]], list[tuple[Any, ...]]]:
    cur = conn.execute(sql.replace("{t}", TABLE))
    assert cur.description is not None
    return [(d.name, d.type_code) for d in cur.description], cur.fetchall()


def _sqlstate(conn: PgConnection, sql: str) -> tuple[str | None, str]:
    with pytest.raises(psycopg.Error) as raised:
        conn.execute(sql.replace("{t}", TABLE)).fetchall()
    return raised.value.sqlstate, str(raised.value.diag.message_primary)


# Statements whose result (names, types, values) must be PostgreSQL's exactly.
SAME_AS_POSTGRES = [
    # integer division truncates toward zero; float division is float division
    "SELECT 7/2, -7/2, 7/-2, 7 % 3, -7 % 3, 1.5::float8 / 2, 9::int2 / 2::int2, 10000000000 / 3",
    "SELECT i / 2, b / 2, s / 2, i % 2, f / 2, r / 2 FROM {t} ORDER BY s",
    "SELECT i FROM {t} WHERE i / 2 = -3",
    # result types of aggregates and functions
    "SELECT sum(s), sum(i), sum(b), sum(n), sum(f), sum(r), count(*), count(t), max(i), min(n) FROM {t}",
    "SELECT length(t), strpos(t, 'b'), position('e' in t), upper(t), lower(t) FROM {t} ORDER BY s",
    "SELECT i + i, i * 2, s + s, b - 1 FROM {t} ORDER BY s",
    "SELECT s + 1, 2 * s, s - 1, s % 2, s * s, s + s, -s, s + 1::int2 FROM {t} ORDER BY s",
    "SELECT sum(i) + 1, sum(i * 2) FROM {t}",
    # unaliased column names
    "SELECT string_agg(t, ',' ORDER BY t), array_agg(i ORDER BY i), bool_and(ok), bool_or(ok), count(DISTINCT i) "
    "FROM {t}",
    "SELECT coalesce(t, 'x'), nullif(i, 0), greatest(i, 1), least(i, 1), CASE WHEN ok THEN 1 ELSE 0 END, "
    "i::text, 1::int, '2'::bigint, 1.5::numeric(3,1), 2::double precision, "
    "substring(t from 1 for 1), substr(t, 1, 1), trim(t), btrim(t), t || 'x', -i, i IS NULL, NOT ok "
    "FROM {t} ORDER BY s",
    "SELECT date_trunc('month', TIMESTAMP '2024-02-29 10:00'), "
    "DATE '2024-01-01', INTERVAL '1 day', abs(-1), round(2.5), EXISTS (SELECT 1), ARRAY[1, 2], "
    "(SELECT 1 AS z), 1, 'text', NULL::int",
    "SELECT max(i) OVER (), row_number() OVER (ORDER BY s), count(*) FILTER (WHERE ok) OVER () FROM {t} ORDER BY s",
]


# numeric division and avg() with PostgreSQL's result scale (select_div_scale), values and types
NUMERIC_DIVISIONS = [
    "SELECT 1.0/3, 10.0/3, -1.5/2, 2/3.0, 1/3::numeric, 100000.0/7, 0.0001/3, 1/0.0003, 123456789.123/0.7",
    "SELECT n / 3, i / 2.0, n / i, n / n, 1.0 / i FROM {t} WHERE i <> 0 ORDER BY s",
    "SELECT avg(i), avg(n), avg(s), avg(b), avg(DISTINCT i), avg(f) FROM {t}",
    "SELECT ok, avg(i), avg(n) FROM {t} GROUP BY ok ORDER BY ok",
    "SELECT avg(i), avg(n) FROM {t} WHERE false",
]
SAME_AS_POSTGRES += NUMERIC_DIVISIONS


@pytest.mark.parametrize("sql", SAME_AS_POSTGRES)
def test_result_names_types_and_values_are_postgres(engine: PgConnection, postgres: PgConnection, sql: str) -> None:
    assert _run(engine, sql) == _run(postgres, sql)


DIVISIONS_BY_ZERO = ["SELECT 1/0", "SELECT 1.0/0", "SELECT 1 % 0", "SELECT 1.5::float8 / 0",
                     "SELECT i / 0 FROM {t}", "SELECT f / s FROM {t} WHERE s = (SELECT 0)",
                     "SELECT n / (s - 1) FROM {t}", "SELECT b % 0 FROM {t}"]


@pytest.mark.parametrize("sql", DIVISIONS_BY_ZERO)
def test_division_by_zero_is_22012_as_in_postgres(engine: PgConnection, postgres: PgConnection, sql: str) -> None:
    if "WHERE s = (SELECT 0)" in sql:  # no row has s = 0: both return nothing, no error
        assert _run(engine, sql) == _run(postgres, sql)
        return
    assert _sqlstate(engine, sql) == _sqlstate(postgres, sql) == ("22012", "division by zero")


def test_division_by_zero_carries_an_hd_code(engine: PgConnection) -> None:
    with pytest.raises(psycopg.errors.DivisionByZero) as raised:
        engine.execute("SELECT 1.0/0").fetchall()
    assert "HD_ERR_DIVISION_BY_ZERO" in str(raised.value.diag.message_detail)


def test_integer_overflow_is_22003_as_in_postgres(engine: PgConnection, postgres: PgConnection) -> None:
    sql = "SELECT 2147483647::int + 1"
    assert _sqlstate(engine, sql)[0] == _sqlstate(postgres, sql)[0] == "22003"


CLOCKS = [
    "SELECT current_date",
    "SELECT current_timestamp, localtimestamp, current_time, localtime, now()",
    "SELECT current_timestamp(0), localtimestamp(2), current_time(3), localtime(0)",
    "SELECT current_date, current_timestamp FROM {t} WHERE current_date > DATE '2000-01-01' ORDER BY s LIMIT 1",
    "SELECT count(*) FROM {t} WHERE localtimestamp > TIMESTAMP '2000-01-01' AND current_time IS NOT NULL",
]


@pytest.mark.parametrize("sql", CLOCKS)
def test_sql_value_functions_without_parentheses_read_the_clock_as_postgres(
        engine: PgConnection, postgres: PgConnection, sql: str) -> None:
    ours, ours_rows = _run(engine, sql)
    theirs, their_rows = _run(postgres, sql)
    assert ours == theirs
    for mine, reference in zip(ours_rows[0], their_rows[0], strict=True):
        assert type(mine) is type(reference)
        if isinstance(mine, dt.datetime):
            assert abs(mine.replace(tzinfo=None) - reference.replace(tzinfo=None)) < dt.timedelta(minutes=5)
        elif isinstance(mine, dt.date) or isinstance(mine, int):
            assert mine == reference
    precise = "(0)" in sql
    if precise:  # rounded to whole seconds, as PostgreSQL rounds
        assert ours_rows[0][0].microsecond == 0 and ours_rows[0][3].microsecond == 0
        assert ours_rows[0][1].microsecond % 10_000 == 0 and ours_rows[0][2].microsecond % 1_000 == 0


SESSION_FUNCTIONS = ("current_user, session_user, user, current_role, current_database(), current_catalog, "
                     "current_schema(), current_schema, current_schemas(false), current_schemas(true)")


@pytest.mark.parametrize("sql", [f"SELECT {SESSION_FUNCTIONS}, count(*) FROM {{t}}",
                                 f"SELECT {SESSION_FUNCTIONS} FROM {{t}} WHERE current_user = user LIMIT 1"])
def test_session_functions_return_the_sessions_values_in_any_query(
        engine: PgConnection, postgres: PgConnection, engine_host: EngineHostProcess, sql: str) -> None:
    ours, rows = _run(engine, sql)
    theirs, _ = _run(postgres, sql)
    assert [name for name, _ in ours] == [name for name, _ in theirs]
    user = engine_host.user
    assert rows[0][:10] == (user, user, user, user, "hd", "hd", "main", "main", ["main"], ["pg_catalog", "main"])


def test_current_schema_follows_the_search_path(engine_host: EngineHostProcess) -> None:
    with psycopg.connect(engine_host.dsn(sslmode="disable"), autocommit=True) as conn:
        conn.execute("SET search_path = nosuchschema, crm, main")
        assert conn.execute("SELECT current_schema, current_schemas(false), count(*) FROM crm.customers"
                            ).fetchone() == ("crm", ["crm", "main"], 500)
        conn.execute("SET search_path = nosuchschema")
        assert conn.execute("SELECT current_schema(), current_schemas(true) FROM crm.customers LIMIT 1"
                            ).fetchone() == (None, ["pg_catalog"])


VALUES_TABLE = f"pgsem_values_{uuid.uuid4().hex[:8]}"


def _many_values() -> list[tuple[str, int]]:
    """Seeded numeric(20,6) dividends and bigint divisors: negative, tiny, huge, and powers near 10000^k."""
    rng = random.Random(16)
    rows = [("0.000001", 3), ("-0.000001", 7), ("99999999999999.999999", 1), ("9999.999999", 9999),
            ("10000", 10000), ("1", 1000000000), ("-5", 2), ("0", 5), ("0.5", -3), ("12345678.9", 987654321)]
    for _ in range(60):
        whole = rng.randint(0, 10 ** rng.randint(0, 13))
        rows.append((f"{rng.choice(['', '-'])}{whole}.{rng.randint(0, 999999):06d}",
                     rng.choice([1, -1]) * rng.randint(1, 10 ** rng.randint(0, 9))))
    return rows


@pytest.fixture(scope="module")
def values_on_both(engine: PgConnection, postgres: PgConnection) -> Iterator[None]:
    rows = ", ".join(f"({k}, {a}, {b})" for k, (a, b) in enumerate(_many_values()))
    engine.execute(f"CREATE TABLE {VALUES_TABLE} (k integer, a numeric(20,6), b bigint)")
    engine.execute(f"INSERT INTO {VALUES_TABLE} VALUES {rows}")
    postgres.execute(f"CREATE TEMPORARY TABLE {VALUES_TABLE} (k integer, a numeric(20,6), b bigint)")
    postgres.execute(f"INSERT INTO {VALUES_TABLE} VALUES {rows}")
    yield
    engine.execute(f"DROP TABLE {VALUES_TABLE}")


@pytest.mark.parametrize("sql", [
    "SELECT k, a / b, a / 7, k / 3.5, a / 0.3, 1.0 / b, b / a FROM {v} WHERE a <> 0 ORDER BY k",
    "SELECT avg(a), avg(b), avg(k), avg(DISTINCT b) FROM {v}",
    "SELECT k % 3 AS g, avg(a), avg(b) FROM {v} GROUP BY k % 3 ORDER BY g",
    # A product's scale is the sum of its operands' (sqlglot types it as its left operand's).
    "SELECT k, a * 0.25 / b, (a - 1.125) / 3, (0.5 * a) / 7 FROM {v} ORDER BY k",
    "SELECT k % 3 AS g, sum(a * 0.25) / sum(b), avg(a * 0.5), sum(CASE WHEN b > 0 THEN a * 0.5 ELSE 0 END) / 3 "
    "FROM {v} GROUP BY k % 3 ORDER BY g",
    # Operand scales at each remainder mod 4: base-10000 digits are read from digits padded to a multiple of 4.
    "SELECT k, CAST(a AS numeric(20,1)) / CAST(b AS numeric(19,3)), "
    "CAST(a AS numeric(20,3)) / CAST(b AS numeric(19,2)), CAST(a AS numeric(20,2)) / 0.125, "
    "CAST(b AS numeric(19,1)) / CAST(a AS numeric(20,4)) FROM {v} WHERE abs(a) >= 0.001 ORDER BY k",
])
def test_numeric_division_matches_postgres_value_by_value(
        engine: PgConnection, postgres: PgConnection, values_on_both: None, sql: str) -> None:
    sql = sql.replace("{v}", VALUES_TABLE)
    ours, theirs = _run(engine, sql), _run(postgres, sql)
    assert ours[0] == theirs[0]
    for mine, reference in zip(ours[1], theirs[1], strict=True):
        for value, expected in zip(mine, reference, strict=True):
            assert _same_number_within_column_scale(value, expected), (mine, reference)


def _same_number_within_column_scale(value: Any, expected: Any) -> bool:
    """Equal as numbers (our column pads every value to one scale); a value whose PostgreSQL scale passes the
    column's (a tiny quotient: DuckDB's DECIMAL holds 38 digits) is the quotient rounded half away at the
    column's scale. PostgreSQL's value was itself rounded at its scale, so a trailing 5 there may stand for a
    quotient just below the tie: either neighbour of a tie is the exact quotient's rounding."""
    if value == expected or not isinstance(value, Decimal) or not isinstance(expected, Decimal):
        return bool(value == expected)
    scale = -int(value.as_tuple().exponent)
    unit = Decimal(1).scaleb(-scale)
    return -int(expected.as_tuple().exponent) > scale and value in (
        expected.quantize(unit, rounding=ROUND_HALF_UP), expected.quantize(unit, rounding=ROUND_HALF_DOWN))
