"""The bound-plan check accepts exactly the scans the governed plan produced, on real DuckDB plans."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.governance.plan_check import check_bound_plan, statement_shape
from tests.unit.pipeline.governance.conftest import governed_sql


@pytest.fixture
def con(db: duckdb.DuckDBPyConnection, tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The rewrite fixture's database plus a Parquet-backed view, explaining as the engine does (all plans)."""
    parquet = tmp_path / "part-0.parquet"
    db.execute(f"COPY (SELECT 1 AS id, 'x' AS v) TO '{parquet}'")
    db.execute(f"CREATE VIEW hd_data.main.files AS SELECT * FROM read_parquet(['{parquet}'])")
    db.execute("SET GLOBAL explain_output = 'all'")
    yield db


def logical_plan(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    rows = con.execute(f"EXPLAIN (FORMAT json) {sql}", params).fetchall()
    plan = json.loads(dict(rows)["logical_plan"])
    return plan if isinstance(plan, list) else [plan]


CUSTOMERS = {"crm.customers": False}


@pytest.mark.parametrize("sql", [
    "SELECT ssn FROM crm.customers",
    "WITH c AS MATERIALIZED (SELECT * FROM crm.customers) SELECT count(*) FROM c a, c b",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r, crm.customers",
    "SELECT * FROM crm.customers, LATERAL (SELECT * FROM range(customer_id)) AS g",
    "SELECT unnest([1, 2]), * FROM (VALUES (1)) AS v(a), crm.customers",
    "SELECT * FROM crm.customers WHERE customer_id IN (SELECT * FROM generate_series(1, 3))",
    "SELECT * FROM crm.customers WHERE 1 = 0",
])
def test_governed_reads_pass(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    check_bound_plan(logical_plan(con, governed_sql(sql)), CUSTOMERS)


def test_writes_pass_when_the_target_is_named(con: duckdb.DuckDBPyConnection) -> None:
    tables = {"crm.customers": False, "main.notes": False}
    for sql in ("INSERT INTO main.notes SELECT customer_id, ssn FROM crm.customers",
                "UPDATE crm.customers SET score = 1 WHERE customer_id = 1",
                "DELETE FROM crm.customers USING main.notes WHERE note_id = customer_id"):
        check_bound_plan(logical_plan(con, governed_sql(sql)), tables)


def test_a_folded_parameter_cannot_hide_a_scan(con: duckdb.DuckDBPyConnection) -> None:
    # NULL for $1 folds the filter to false: the optimised plan has no scan at all, the binder's does.
    plan = logical_plan(con, governed_sql("SELECT * FROM main.notes WHERE note_id = $1"), [None])
    with pytest.raises(QueryError) as caught:
        check_bound_plan(plan, CUSTOMERS)
    assert caught.value.code == "HD_ERR_PLAN_REJECTED" and "main.notes" in caught.value.message


def test_a_table_the_plan_does_not_list_is_refused(con: duckdb.DuckDBPyConnection) -> None:
    plan = logical_plan(con, "SELECT * FROM hd_data.crm.customers, hd_data.main.notes")
    with pytest.raises(QueryError) as caught:
        check_bound_plan(plan, CUSTOMERS)
    assert (caught.value.sqlstate, caught.value.code) == ("42501", "HD_ERR_PLAN_REJECTED")


def test_parquet_scans_need_a_parquet_table_in_the_plan(con: duckdb.DuckDBPyConnection) -> None:
    plan = logical_plan(con, "SELECT * FROM hd_data.main.files")
    check_bound_plan(plan, {"main.files": True})
    with pytest.raises(QueryError):
        check_bound_plan(plan, CUSTOMERS)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM duckdb_tables()",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM pg_catalog.pg_class",
    "SELECT * FROM sniff_csv('/dev/null')",
    "SELECT * FROM repeat_row(1, num_rows := 3)",
    "SELECT * FROM memory.hd_pg_stand_in",
])
def test_other_sources_are_refused(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    con.execute("CREATE TABLE IF NOT EXISTS memory.main.hd_pg_stand_in (x INTEGER)")
    try:
        plan = logical_plan(con, sql)
    except duckdb.Error:
        pytest.skip("DuckDB refuses to bind it at all")
    with pytest.raises(QueryError) as caught:
        check_bound_plan(plan, CUSTOMERS)
    assert caught.value.code == "HD_ERR_PLAN_REJECTED"


def test_catalog_answers_may_read_the_catalog_but_never_data(con: duckdb.DuckDBPyConnection) -> None:
    check_bound_plan(logical_plan(con, "SELECT * FROM duckdb_tables()"), {}, catalog=True)
    with pytest.raises(QueryError):
        check_bound_plan(logical_plan(con, "SELECT * FROM duckdb_tables(), hd_data.main.notes"), {}, catalog=True)
    with pytest.raises(QueryError):
        check_bound_plan(logical_plan(con, "SELECT * FROM hd_data.main.files"), {}, catalog=True)


def test_an_unreadable_plan_is_refused() -> None:
    with pytest.raises(QueryError):
        check_bound_plan(["not a node"], CUSTOMERS)  # type: ignore[list-item]


@pytest.mark.parametrize("sql", [
    "WITH RECURSIVE notes AS (SELECT * FROM notes) SELECT * FROM notes",
    "WITH RECURSIVE customers AS (SELECT * FROM customers) SELECT ssn FROM customers",
    "WITH a AS (SELECT * FROM b), b AS (SELECT * FROM notes) SELECT * FROM a",
    "WITH RECURSIVE a AS (SELECT * FROM notes), notes AS (SELECT * FROM a) SELECT * FROM notes",
])
def test_a_name_the_rewrite_leaves_alone_never_reaches_data(db: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Whatever sqlglot's scoping decides, a name it leaves unrewritten resolves in the empty default catalog."""
    try:
        governed = governed_sql(sql)
    except QueryError as refused:
        assert refused.sqlstate == "42P01"
        return
    with pytest.raises(duckdb.Error):
        db.execute(governed).fetchall()


def test_client_names_do_not_resolve_to_the_data_catalog(db: duckdb.DuckDBPyConnection) -> None:
    for sql in ("SELECT * FROM crm.customers", "SELECT * FROM customers", "SELECT * FROM notes"):
        with pytest.raises(duckdb.CatalogException):
            db.execute(sql)


def test_statement_shape_blanks_literals_and_counts_parameters() -> None:
    one, count = statement_shape(
        """SELECT "t 1"."a2", 'it''s $3 ?' FROM "hd_data"."main"."t 1" WHERE x = 42 AND y = $2""")
    other, _ = statement_shape("""SELECT "t 1"."a2", 'other' FROM "hd_data"."main"."t 1" WHERE x = 7.5e3 AND y = $2""")
    assert one == other and count == 2
    assert statement_shape('SELECT * FROM "hd_data"."main"."t 2"')[0] != statement_shape(
        'SELECT * FROM "hd_data"."main"."t 1"')[0]
    assert statement_shape("SELECT ?, ? FROM t")[1] == 2


def test_quoted_table_names_are_matched_as_duckdb_prints_them(con: duckdb.DuckDBPyConnection) -> None:
    con.execute('CREATE TABLE hd_data.main."copy" (a INTEGER); CREATE TABLE hd_data.main."odd.Name" (a INTEGER)')
    check_bound_plan(logical_plan(con, 'SELECT * FROM hd_data.main."copy"'), {"main.copy": False})
    check_bound_plan(logical_plan(con, 'SELECT * FROM hd_data.main."odd.Name"'), {"main.odd.name": False})
    with pytest.raises(QueryError):
        check_bound_plan(logical_plan(con, 'SELECT * FROM hd_data.main."odd.Name"'), {"main.odd": False})
