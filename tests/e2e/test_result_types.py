"""Result column types as PostgreSQL declares them (issue 16): varchar and name columns, pg_typeof's regtype,
extract()'s numeric and date_part()'s double precision, and float(p) in DDL, each against PostgreSQL 15.

The same table exists on both sides (on PostgreSQL a temporary one); names, RowDescription type OIDs and
values must be equal.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.e2e.side_by_side import PgConnection, engine_table, postgres_table
from tests.harness import EngineHostProcess

TABLE = f"rtypes_{uuid.uuid4().hex[:8]}"
COLUMNS = "k integer, v varchar, ts timestamp, d date, n numeric(10,2)"
ROWS = "(1, 'abc', '2024-01-01 10:00:05.25', '2024-03-01', 2.50), (2, 'de', '1999-12-31 23:59:59.999999', " \
       "'1970-01-02', -1.25)"


@pytest.fixture(scope="module")
def engine(engine_host: EngineHostProcess) -> Iterator[PgConnection]:
    with engine_table(engine_host, TABLE, COLUMNS, ROWS) as conn:
        yield conn


@pytest.fixture(scope="module")
def postgres(reference_pg: str) -> Iterator[PgConnection]:
    with postgres_table(reference_pg, TABLE, COLUMNS, ROWS) as conn:
        yield conn


def _run(conn: PgConnection, sql: str, binary: bool = False) -> tuple[list[tuple[str, int]], list[tuple[Any, ...]]]:
    cur = conn.cursor(binary=binary)
    cur.execute(sql.replace("{t}", TABLE))
    assert cur.description is not None
    return [(d.name, d.type_code) for d in cur.description], cur.fetchall()


SAME_AS_POSTGRES = [
    # a varchar column is varchar (1043) directly, through a subquery, a CTE and a UNION; expressions are text
    "SELECT v, k FROM {t} ORDER BY k",
    "SELECT * FROM {t} ORDER BY k",
    "SELECT x.v FROM (SELECT v, k FROM {t}) AS x ORDER BY x.k",
    "WITH w AS (SELECT v AS z, k FROM {t}) SELECT z FROM w ORDER BY k",
    "SELECT v FROM {t} UNION ALL SELECT v FROM {t} ORDER BY 1",
    "SELECT v || 'x', lower(v), upper(v), substr(v, 1, 1) FROM {t} ORDER BY k",
    "SELECT string_agg(v, ',' ORDER BY v), max(v) FROM {t}",
    # casts: ::varchar and ::varchar(n) are varchar, ::text text, ::name name
    "SELECT 'a'::varchar, 'b'::text, 'c'::name, v::text, k::varchar, v::varchar(10) FROM {t} ORDER BY k",
    # pg_typeof is regtype and names PostgreSQL's types
    "SELECT pg_typeof(k), pg_typeof(n), pg_typeof(v), pg_typeof(v || 'x'), pg_typeof(ts), pg_typeof(1.5), "
    "pg_typeof(current_user), pg_typeof(k / 2) FROM {t} ORDER BY k",
    "SELECT pg_typeof(sum(k)), pg_typeof(count(*)), pg_typeof(array_agg(k)), pg_typeof(avg(k)) FROM {t}",
    # extract is numeric with PostgreSQL's scale, date_part double precision
    "SELECT extract(second FROM ts), extract(milliseconds FROM ts), extract(microseconds FROM ts), "
    "extract(epoch FROM ts), extract(epoch FROM d), extract(year FROM ts), extract(month FROM d), "
    "extract(dow FROM ts), extract(hour FROM ts) FROM {t} ORDER BY k",
    "SELECT date_part('second', ts), date_part('epoch', ts), date_part('year', d), date_part('day', ts), "
    "EXTRACT(minute FROM ts), DATE_PART('minute', ts) FROM {t} ORDER BY k",
]


@pytest.mark.parametrize("sql", SAME_AS_POSTGRES)
def test_result_column_types_are_postgres(engine: PgConnection, postgres: PgConnection, sql: str) -> None:
    assert _run(engine, sql) == _run(postgres, sql)


@pytest.mark.parametrize("sql", [
    "SELECT v, 'c'::name, pg_typeof(k), pg_typeof(v), current_schemas(true)::text FROM {t} ORDER BY k"])
def test_binary_format_values_of_declared_types_are_postgres(
        engine: PgConnection, postgres: PgConnection, sql: str) -> None:
    ours, theirs = _run(engine, sql, binary=True), _run(postgres, sql, binary=True)
    assert ours[0] == theirs[0]
    assert [r[:4] for r in ours[1]] == [r[:4] for r in theirs[1]]


@pytest.mark.parametrize("source", [" FROM {t} LIMIT 1", ""], ids=["with-from", "without-from"])
def test_session_functions_are_name_typed(engine: PgConnection, postgres: PgConnection, source: str) -> None:
    # Without FROM the catalog answers (pgcompat/catalog); the names and types must be the same either way.
    sql = ("SELECT current_user, session_user, user, current_role, current_database(), current_catalog, "
           "current_schema(), current_schemas(false)" + source)
    assert _run(engine, sql)[0] == _run(postgres, sql)[0]


@pytest.mark.parametrize("declared", ["float(53)", "float(25)", "float(24)", "float(1)", "float"])
def test_float_with_a_precision_is_real_or_double_as_in_postgres(
        engine: PgConnection, postgres: PgConnection, declared: str) -> None:
    name = f"rtypes_float_{uuid.uuid4().hex[:8]}"
    engine.execute(f"CREATE TABLE {name} (x {declared})")
    try:
        postgres.execute(f"CREATE TEMPORARY TABLE {name} (x {declared})")
        for conn in (engine, postgres):
            conn.execute(f"INSERT INTO {name} VALUES (0.1)")
        assert _run(engine, f"SELECT x FROM {name}") == _run(postgres, f"SELECT x FROM {name}")
    finally:
        engine.execute(f"DROP TABLE {name}")


@pytest.mark.parametrize("declared", ["float(54)", "float(0)"])
def test_float_precision_out_of_range_is_22023(engine: PgConnection, postgres: PgConnection, declared: str) -> None:
    def refusal(conn: PgConnection, temporary: str) -> psycopg.Error:
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(f"CREATE {temporary} TABLE rtypes_bad (x {declared})")
        return raised.value

    ours, theirs = refusal(engine, ""), refusal(postgres, "TEMPORARY")
    assert (ours.sqlstate, ours.diag.message_primary) == (theirs.sqlstate, theirs.diag.message_primary)
    assert "HD_ERR_INVALID_INPUT" in str(ours.diag.message_detail)


def test_pandas_to_sql_and_read_sql_round_trip_as_on_postgres(
        engine_host: EngineHostProcess, reference_pg: str) -> None:
    pandas = pytest.importorskip("pandas")
    sqlalchemy = pytest.importorskip("sqlalchemy")
    frame = pandas.DataFrame({"a": [1, 2], "f": [0.5, 1.25], "s": ["x", "y"]})
    name = f"rtypes_pandas_{uuid.uuid4().hex[:8]}"
    read = []
    for dsn in (engine_host.dsn(sslmode="disable"), reference_pg):
        url = sqlalchemy.engine.make_url("postgresql+psycopg://").set(**_url_parts(dsn))
        db = sqlalchemy.create_engine(url)
        try:
            frame.to_sql(name, db, index=False)  # CREATE TABLE ... (f FLOAT(53), ...)
            read.append(pandas.read_sql(f"SELECT * FROM {name} ORDER BY a", db))
            with db.begin() as conn:
                conn.execute(sqlalchemy.text(f"DROP TABLE {name}"))
        finally:
            db.dispose()
    pandas.testing.assert_frame_equal(read[0], read[1])
    pandas.testing.assert_frame_equal(read[0], frame)


def _url_parts(dsn: str) -> dict[str, Any]:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    parts: dict[str, Any] = {"host": info.get("host"), "port": int(str(info.get("port") or 5432)),
                             "database": info.get("dbname"), "username": info.get("user"),
                             "password": info.get("password")}
    if info.get("sslmode"):
        parts["query"] = {"sslmode": str(info["sslmode"])}
    return parts


def test_masked_string_columns_keep_their_declared_type(engine_host: EngineHostProcess) -> None:
    # A mask is an expression inside the governed subquery; the client still asked for a varchar column, and
    # the catalog (information_schema.columns) says so, whether or not a mask applies to this session.
    def described(person: str | None) -> dict[str, int]:
        dsn = engine_host.demo_dsn(person) if person else engine_host.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute("SELECT email, ssn, full_name, lower(email) AS e FROM crm.customers LIMIT 1")
            assert cur.description is not None
            return {d.name: d.type_code for d in cur.description}

    owner, analyst = described(None), described("acme-analyst")
    assert owner == analyst == {"email": 1043, "ssn": 1043, "full_name": 1043, "e": 25}
