"""Lists as parameters (`= any(%s)`, `<> all(%s)`) through psycopg, asyncpg and pg8000, as PostgreSQL 15 answers."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import uuid

import pg8000.native
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

LISTS = {
    "int": ([1, 2, 3], 2, 5),
    "text": (["a", "b", "c"], "b", "z"),
    "uuid": ([uuid.UUID(int=1), uuid.UUID(int=2)], uuid.UUID(int=2), uuid.UUID(int=9)),
    "date": ([dt.date(2024, 1, 1), dt.date(2024, 2, 29)], dt.date(2024, 2, 29), dt.date(2000, 1, 1)),
}
QUERIES = [
    "SELECT %(hit)s = any(%(list)s), %(miss)s = any(%(list)s)",
    "SELECT %(hit)s <> all(%(list)s), %(miss)s <> ALL(%(list)s)",
    "SELECT x FROM (VALUES (%(hit)s), (%(miss)s)) v(x) WHERE x = ANY(%(list)s)",
    "SELECT count(*) FROM (VALUES (%(hit)s)) v(x) WHERE x <> ALL(%(list)s)",
]


def _answers(dsn: str, binary: bool, sql: str, params: dict[str, object]) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.cursor(binary=binary).execute(sql, params).fetchall()


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("kind", list(LISTS))
@pytest.mark.parametrize("sql", QUERIES)
def test_psycopg_list_parameters_answer_as_postgres(engine_host, reference_pg, binary, kind, sql):
    values, hit, miss = LISTS[kind]
    params = {"list": values, "hit": hit, "miss": miss}
    assert _answers(engine_host.dsn(), binary, sql, params) == _answers(reference_pg, binary, sql, params)


def test_psycopg_binary_dumped_lists_and_array_constructors(engine_host, reference_pg):
    sql = "SELECT %b = any(%b), 3 = ANY(ARRAY[%s, %s]), 'x' <> ALL(ARRAY['a', %s])"
    params = ("b", ["a", "b"], 1, 3, "x")
    with psycopg.connect(engine_host.dsn(), autocommit=True) as ours, psycopg.connect(reference_pg) as pg:
        assert ours.execute(sql, params).fetchall() == pg.execute(sql, params).fetchall() == [(True, True, False)]


def test_psycopg_any_filters_a_demo_table_by_a_list(engine_host):
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT customer_id FROM crm.customers ORDER BY 1 LIMIT 3")]
        for binary in (False, True):
            rows = conn.cursor(binary=binary).execute(
                "SELECT customer_id FROM crm.customers WHERE customer_id = any(%s) ORDER BY 1", (ids[:2],)).fetchall()
            assert [r[0] for r in rows] == ids[:2]


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _asyncpg_options(dsn: str) -> dict[str, object]:
    options = conninfo_to_dict(dsn)
    return {"host": options.get("host"), "port": int(options.get("port") or 5432), "user": options.get("user"),
            "password": options.get("password"), "database": options.get("dbname")}


@pytest.mark.parametrize("kind", list(LISTS))
def test_asyncpg_list_for_any_and_all(engine_host, reference_pg, kind):
    import asyncpg

    values, hit, miss = LISTS[kind]

    async def run(ours: bool) -> list[tuple[object, ...]]:
        if ours:
            conn = await asyncpg.connect(host="127.0.0.1", port=engine_host.port, user=engine_host.user,
                                         password=engine_host.password, database="hd", ssl=_tls())
        else:
            conn = await asyncpg.connect(**_asyncpg_options(reference_pg))
        try:
            # asyncpg encodes by the types the server infers: int4[] from an int4 on the other side, as in PG
            rows = await conn.fetch(f"SELECT $2::{kind} = any($1), $3::{kind} = any($1), $3::{kind} <> all($1)",
                                    values, hit, miss)
            return [tuple(r) for r in rows]
        finally:
            await conn.close()

    assert asyncio.run(run(True)) == asyncio.run(run(False)) == [(True, False, True)]


def test_pg8000_list_for_any(engine_host, reference_pg):
    ours = pg8000.native.Connection(engine_host.user, host="127.0.0.1", port=engine_host.port, database="hd",
                                    password=engine_host.password, ssl_context=_tls())
    try:
        assert ours.run("SELECT 2 = any(:a), 'b' = any(:t), 5 <> all(:a)", a=[1, 2], t=["a", "b"]) == [
            [True, True, True]]
    finally:
        ours.close()
