"""Parameters written without spaces (`%s,%s`, `$1,$2`) through every client path, answered as PostgreSQL answers."""

from __future__ import annotations

import asyncio
import ssl
import uuid

import pg8000.native
import psycopg
import pytest

SELECTS = [
    ("SELECT %s,%s", (1, 2)), ("SELECT (%s,%s) = (%s,%s)", (1, 2, 1, 2)),
    ("SELECT %s::int", ("7",)), ("SELECT %s||'x'", ("a",)), ("SELECT -%s", (3,)),
    ("SELECT x FROM (VALUES (%s),(%s)) v(x) ORDER BY 1", (1, 2)),
    ("SELECT 1 WHERE 2 IN (%s,%s,%s)", (1, 2, 3)), ("SELECT 1 LIMIT %s OFFSET %s", (1, 0)),
    ("SELECT CASE WHEN %s=1 THEN %s ELSE %s END", (1, "a", "b")), ("SELECT coalesce(%s,%s)", (None, 4)),
    ("SELECT ARRAY[%s,%s]", (1, 2)), ("WITH w AS (SELECT %s::int AS a) SELECT a+%s FROM w", (1, 2)),
    ("SELECT '$1,$2', %s,%s -- $3,$4", (1, 2)), ("SELECT %s>%s, %s=%s", (2, 1, 3, 3)),
    ("SELECT x FROM (VALUES (%s)) v(x)", ("text",)),
]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize(("sql", "params"), SELECTS, ids=[s for s, _ in SELECTS])
def test_psycopg_placements_answer_as_postgres(engine_host, reference_pg, binary, sql, params):
    with psycopg.connect(engine_host.dsn(), autocommit=True) as ours, psycopg.connect(reference_pg) as pg:
        mine = ours.cursor(binary=binary).execute(sql, params)
        theirs = pg.cursor(binary=binary).execute(sql, params)
        assert mine.fetchall() == theirs.fetchall()


@pytest.fixture(scope="module")
def table(engine_host):
    name = f"params_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (a int, b text)")
        yield name
        conn.execute(f"DROP TABLE {name}")


def test_psycopg_executemany_pipeline_update_delete_without_spaces(engine_host, table):
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        conn.cursor().executemany(f"INSERT INTO {table} VALUES (%s,%s)", [(i, f"r{i}") for i in range(5)])
        with conn.pipeline():
            conn.execute(f"INSERT INTO {table} VALUES (%s,%s),(%s,%s)", (10, "x", 11, "y"))
            conn.execute(f"UPDATE {table} SET b=%s WHERE a=%s", ("z", 10))
        conn.execute(f"DELETE FROM {table} WHERE a=%s OR a=%s", (0, 11))
        rows = conn.cursor(binary=True).execute(f"SELECT a,b FROM {table} WHERE a>%s ORDER BY a", (-1,)).fetchall()
    assert rows == [(1, "r1"), (2, "r2"), (3, "r3"), (4, "r4"), (10, "z")]


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_asyncpg_dollar_parameters_without_spaces(engine_host):
    import asyncpg

    async def run() -> list[object]:
        conn = await asyncpg.connect(host="127.0.0.1", port=engine_host.port, user=engine_host.user,
                                     password=engine_host.password, database="hd", ssl=_tls())
        try:
            return [await conn.fetchval("SELECT $1::int+$2::int", 1, 2),
                    await conn.fetchval("SELECT ($1::text||$2::text)", "a", "b"),
                    await conn.fetchval("SELECT x FROM (VALUES ($1::int)) v(x)", 5)]
        finally:
            await conn.close()

    assert asyncio.run(run()) == [3, "ab", 5]


def test_pg8000_parameters_without_spaces(engine_host):
    conn = pg8000.native.Connection(engine_host.user, host="127.0.0.1", port=engine_host.port, database="hd",
                                    password=engine_host.password, ssl_context=_tls())
    try:
        assert conn.run("SELECT CAST(:a AS int)+CAST(:b AS int),:c||:d", a=1, b=2, c="x", d="y") == [[3, "xy"]]
    finally:
        conn.close()


def test_dollar_parameter_without_values_is_postgres_undefined_parameter(engine_host, reference_pg):
    for dsn in (engine_host.dsn(), reference_pg):
        with psycopg.connect(dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.UndefinedParameter, match=r"there is no parameter \$1"):
                conn.execute("SELECT x FROM (VALUES ($1)) v(x)")
            with pytest.raises(psycopg.errors.ProtocolViolation, match="bind message supplies 0 parameters"):
                conn.cursor(binary=True).execute("SELECT x FROM (VALUES ($1)) v(x)")
