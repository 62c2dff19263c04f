"""psycopg 3 against the engine host over TLS: types both ways, text and binary, cursors, transactions, errors.

Results are compared with a real PostgreSQL running the same SQL, so "correct" means "what Postgres says".
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import psycopg
import pytest
from psycopg.types.json import Json

# Expressions that mean the same in PostgreSQL and DuckDB, one per wire type the issue lists.
TYPED_EXPRESSIONS = [
    "CAST(-32768 AS SMALLINT)",
    "CAST(2147483647 AS INTEGER)",
    "CAST(-9223372036854775808 AS BIGINT)",
    "CAST(1.5 AS REAL)",
    "CAST(-0.1 AS DOUBLE PRECISION)",
    "CAST('12345.678' AS NUMERIC(12,3))",
    "CAST(NULL AS INTEGER)",
    "TRUE",
    "FALSE",
    "CAST('héllo, wörld' AS TEXT)",
    "CAST('v' AS VARCHAR)",
    "CAST('abc' AS BYTEA)",  # (hex escapes in literals differ between the dialects)
    "DATE '2024-02-29'",
    "TIME '13:14:15.123456'",
    "TIMESTAMP '2024-01-02 03:04:05.5'",
    "CAST('2024-01-02 03:04:05.123456+00' AS TIMESTAMPTZ)",
    "INTERVAL '1 year 2 months 3 days 04:05:06.5'",
    "CAST('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' AS UUID)",
    "CAST('{\"a\": [1, 2]}' AS JSON)",
    "ARRAY[1, 2, NULL]",
    "ARRAY['a b', 'x\"y', NULL, '']",
    "ARRAY[CAST(1.5 AS DOUBLE PRECISION)]",
    "ARRAY[DATE '2024-01-01']",
]


def _fetch(dsn: str, sql: str, *, binary: bool) -> list[tuple]:
    with psycopg.connect(dsn) as conn, conn.cursor(binary=binary) as cur:
        cur.execute(sql)
        return cur.fetchall()


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("expression", TYPED_EXPRESSIONS)
def test_result_values_match_postgres(engine_host, reference_pg, expression, binary):
    sql = f"SELECT {expression} AS v"
    assert _fetch(engine_host.dsn(), sql, binary=binary) == _fetch(reference_pg, sql, binary=binary)


PARAMETERS = [
    7,
    -(2**40),
    3.25,
    decimal.Decimal("-1234.5600"),
    True,
    "text with 'quotes' and ünïcode",
    b"\x00\x01binary\xff",
    dt.date(1999, 12, 31),
    dt.time(23, 59, 59, 999999),
    dt.datetime(2024, 5, 6, 7, 8, 9, 123456),
    dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
    dt.timedelta(days=3, seconds=4, microseconds=5),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    [1, 2, 3],
    ["a", None, "c"],
    None,
]


def _echo(dsn: str, value: object, binary: bool) -> object:
    with psycopg.connect(dsn) as conn, conn.cursor(binary=binary) as cur:
        cur.execute("SELECT %s AS v", [value], binary=binary)
        return cur.fetchone()[0]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("value", PARAMETERS, ids=lambda v: type(v).__name__)
def test_parameters_round_trip_as_postgres_does(engine_host, reference_pg, value, binary):
    expected = _echo(reference_pg, value, binary)
    assert _echo(engine_host.dsn(), value, binary) == expected
    if not isinstance(value, str | list):  # Postgres itself hands untyped text back as text
        assert expected == value


def test_json_parameter_round_trips(engine_host):
    with psycopg.connect(engine_host.dsn()) as conn:
        (got,) = conn.execute("SELECT %s::JSON AS v", [Json({"k": [1, None]})]).fetchone()
    assert got == {"k": [1, None]}


def test_parameters_filter_a_demo_table(engine_host):
    with psycopg.connect(engine_host.dsn()) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM crm.customers WHERE org_id = %s AND region = %s",
            ["org_acme", "eu-west"],
        ).fetchone()
        total = conn.execute("SELECT count(*) FROM crm.customers WHERE org_id = %s", ["org_acme"]).fetchone()
    assert 0 < rows[0] < total[0]


def test_prepared_statement_reused_many_times(engine_host):
    with psycopg.connect(engine_host.dsn(), prepare_threshold=0) as conn:
        for i in range(20):
            assert conn.execute("SELECT %s::INTEGER * 2", [i]).fetchone() == (i * 2,)


def test_server_side_cursor_streams_in_chunks(engine_host):
    with psycopg.connect(engine_host.dsn()) as conn:
        with conn.transaction(), conn.cursor(name="big") as cur:
            cur.itersize = 1000
            cur.execute("SELECT range AS i FROM range(25000)")
            assert cur.fetchmany(10) == [(i,) for i in range(10)]
            total = 10 + sum(1 for _ in cur)
        assert total == 25000


SERVER_CURSOR_QUERIES = [
    ("SELECT i, i * 2 AS j FROM range(1000) t(i) WHERE i >= %s AND i < %s ORDER BY i", (10, 500)),
    ("SELECT i FROM range(50) t(i) WHERE i = any(%s) ORDER BY i", ([3, 7, 42],)),
    ("SELECT %s::text || 'x' AS s, %s::date AS d", ("a'b", dt.date(2024, 2, 29))),
]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize(("sql", "params"), SERVER_CURSOR_QUERIES, ids=["range", "any-list", "typed"])
def test_server_side_cursor_with_parameters_matches_postgres(engine_host, reference_pg, sql, params, binary):
    # psycopg sends `DECLARE "c" CURSOR FOR <query with $n>` through Bind: the values belong to the query.
    def read(dsn: str) -> list[tuple]:
        with psycopg.connect(dsn) as conn, conn.cursor(name="c", binary=binary) as cur:
            cur.execute(sql.replace("range(1000) t(i)", "generate_series(0, 999) t(i)").replace(
                "range(50) t(i)", "generate_series(0, 49) t(i)") if dsn == reference_pg else sql, params)
            return cur.fetchall()

    rows = read(engine_host.dsn())
    assert rows and rows == read(reference_pg)


def test_server_side_cursor_error_keeps_postgres_position_and_aborts_transaction(engine_host, reference_pg):
    # The position counts from the DECLARE the client sent, and the failed DECLARE poisons the transaction,
    # so psycopg does not ask pg_cursors whether the cursor exists (and the syntax error reaches the caller).
    def fail(dsn: str) -> tuple[str | None, int | None, object]:
        with psycopg.connect(dsn) as conn:
            with pytest.raises(psycopg.errors.SyntaxError) as caught, conn.cursor(name="c") as cur:
                cur.execute("SELECT 1 FROM")
            return caught.value.sqlstate, caught.value.diag.statement_position, conn.info.transaction_status

    assert fail(engine_host.dsn()) == fail(reference_pg)


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "implicit-transaction"])
def test_transaction_rollback_discards_and_commit_keeps(engine_host, autocommit):
    # Without autocommit psycopg wraps transaction() blocks in SAVEPOINTs inside its own BEGIN.
    with psycopg.connect(engine_host.dsn(), autocommit=autocommit) as conn:
        conn.execute("DROP TABLE IF EXISTS main.tx_probe")
        conn.execute("CREATE TABLE IF NOT EXISTS main.tx_probe (id INTEGER)")
        conn.commit()
        with conn.transaction(force_rollback=True):
            conn.execute("INSERT INTO main.tx_probe VALUES (1)")
        assert conn.execute("SELECT count(*) FROM main.tx_probe").fetchone() == (0,)
        with conn.transaction():
            cur = conn.execute("INSERT INTO main.tx_probe VALUES (2), (3)")
            assert cur.rowcount == 2
        assert conn.execute("SELECT count(*) FROM main.tx_probe").fetchone() == (2,)


def test_error_in_transaction_requires_rollback(engine_host):
    with psycopg.connect(engine_host.dsn()) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_errors_carry_sqlstate_and_hd_code(engine_host):
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        conn.execute("SET hd.dialect = 'duckdb'")  # `//` is DuckDB's integer division
        with pytest.raises(psycopg.errors.DivisionByZero) as err:
            conn.execute("SELECT 1 // 0")
        conn.execute("RESET hd.dialect")
        assert err.value.diag.message_detail.startswith("HD_ERR_")
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("SELEKT 1")
        assert conn.execute("SELECT 'still fine'").fetchone() == ("still fine",)


def test_parameter_status_and_server_version(engine_host):
    with psycopg.connect(engine_host.dsn()) as conn:
        assert conn.info.server_version >= 150000
        assert conn.info.parameter_status("integer_datetimes") == "on"
        assert conn.info.parameter_status("standard_conforming_strings") == "on"
        assert conn.info.parameter_status("client_encoding") == "UTF8"
        conn.execute("SET application_name = 'probe'")
        assert conn.info.parameter_status("application_name") == "probe"


def test_empty_query_and_notices(engine_host):
    notices = []
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        conn.execute("")
        conn.execute("COMMIT")
    assert notices == ["there is no transaction in progress"]


def test_connection_is_encrypted(engine_host):
    with psycopg.connect(engine_host.dsn()) as conn:
        assert conn.pgconn.ssl_in_use
