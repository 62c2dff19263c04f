"""The catalog queries DBeaver, Metabase, Grafana and Tableau send, replayed on the engine and PostgreSQL.

Each query (tests/e2e/bi_connect_queries.py) must run without error on both, answer the same column
names, and, for the columns its entry names, the same rows over `bi_probe`'s tables, created in both.
Other columns hold what must differ between two servers (OIDs, owners, the database's name, settings,
physical sizes) or list objects only one server has.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.e2e.bi_connect_queries import (
    BI_CONNECT_QUERIES,
    SCHEMA,
    TABLEAU_CURSOR_SESSION,
    BiQuery,
)
from tests.e2e.side_by_side import create_schema_tables

TABLES_DDL = (
    f"CREATE TABLE {SCHEMA}.parent (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, score NUMERIC(12,2), "
    "seen TIMESTAMP, active BOOLEAN, UNIQUE (name))",
    f"CREATE TABLE {SCHEMA}.child (id INTEGER PRIMARY KEY, "
    f"parent_id INTEGER NOT NULL REFERENCES {SCHEMA}.parent (id), qty SMALLINT)",
)


def _create_tables(dsn: str, *, fresh_schema: bool) -> None:
    create_schema_tables(dsn, SCHEMA, TABLES_DDL, ("child", "parent"), fresh_schema=fresh_schema)


@pytest.fixture(scope="module")
def servers(engine_host, reference_pg) -> Iterator[tuple[psycopg.Connection, psycopg.Connection]]:
    """(engine, PostgreSQL) connections, both holding bi_probe's tables."""
    _create_tables(engine_host.dsn(), fresh_schema=False)
    _create_tables(reference_pg, fresh_schema=True)
    with psycopg.connect(engine_host.dsn(), autocommit=True) as engine, \
            psycopg.connect(reference_pg, autocommit=True) as pg:
        yield engine, pg
        pg.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def _answer(conn: psycopg.Connection, sql: str) -> tuple[list[str], list[tuple]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        assert cur.description is not None
        return [c.name for c in cur.description], cur.fetchall()


def _project(columns: list[str], rows: list[tuple], wanted: tuple[str, ...]) -> list[tuple]:
    positions = [columns.index(name) for name in wanted]
    return [tuple(row[i] for i in positions) for row in rows]


def _cases() -> list:
    return [pytest.param(q, id=f"{q.tool}: {q.source}") for q in BI_CONNECT_QUERIES]


@pytest.mark.parametrize("query", _cases())
def test_bi_query_answers_as_postgres_does(servers, query: BiQuery):
    engine, pg = servers
    pg_columns, pg_rows = _answer(pg, query.sql)
    columns, rows = _answer(engine, query.sql)
    assert columns == pg_columns
    if query.compare is not None:
        assert pg_rows, "a compared query must have rows to compare"
        assert _project(columns, rows, query.compare) == _project(pg_columns, pg_rows, query.compare)


def test_tableau_declare_fetch_session_answers_as_postgres_does(servers):
    engine, pg = servers

    def replay(conn: psycopg.Connection) -> list[tuple]:
        fetched = []
        with conn.cursor() as cur:
            for statement in TABLEAU_CURSOR_SESSION:
                cur.execute(statement)
                if statement.startswith("fetch"):
                    fetched = cur.fetchall()
        return fetched

    assert replay(engine) == replay(pg) == [("child", "r"), ("child_pkey", "i"), ("parent", "r"),
                                            ("parent_name_key", "i"), ("parent_pkey", "i")]


def test_bi_catalog_answers_hide_what_the_session_may_not_read(engine_host, servers):
    """The same queries as globex's analyst: acme's bi_probe tables are not listed, not even by a tool."""
    with psycopg.connect(engine_host.demo_dsn("globex-analyst"), autocommit=True) as globex:
        for query in BI_CONNECT_QUERIES:
            if query.compare is None:
                continue
            _, rows = _answer(globex, query.sql)
            assert not [row for row in rows if "parent" in row or "child" in row], query.source
