"""Transpile: DuckDB SQL generated from the tree, PostgreSQL output names, other dialects run."""

from __future__ import annotations

import duckdb
import pytest

from engine_host.pipeline.governance.guard import parse_statement
from engine_host.pipeline.governance.transpile import to_duckdb
from tests.unit.pipeline.governance.conftest import Run, governed_sql


def _names(db: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    cursor = db.execute(governed_sql(sql))
    return [d[0] for d in cursor.description]


def test_postgres_output_names(db: duckdb.DuckDBPyConnection) -> None:
    assert _names(db, "SELECT count(*), sum(amount), order_id, o.org_id, amount::int, 1 + 1, max(amount) AS m, "
                      "substr(org_id, 1, 2) FROM sales.orders o GROUP BY order_id, o.org_id, amount") == [
        "count", "sum", "order_id", "org_id", "amount", "?column?", "m", "substr"]


def test_set_operation_takes_names_from_the_first_select(db: duckdb.DuckDBPyConnection) -> None:
    assert _names(db, "SELECT count(*) FROM sales.orders UNION ALL SELECT 1") == ["count"]


def test_other_dialects_keep_duckdb_names(db: duckdb.DuckDBPyConnection) -> None:
    cursor = db.execute(governed_sql("SELECT order_id FROM sales.orders LIMIT 1", "duckdb"))
    assert [d[0] for d in cursor.description] == ["order_id"]


def test_client_text_is_never_passed_through() -> None:
    parsed = parse_statement("select   1  -- comment")
    assert to_duckdb(parsed.tree, parsed) == 'SELECT 1 AS "?column?"'


@pytest.mark.parametrize(("sql", "dialect", "expected"), [
    ("SELECT TOP 2 IFF(ssn = '***', 'masked', 'raw') AS m FROM crm.customers ORDER BY customer_id", "snowflake",
     [("masked",), ("masked",)]),
    ("SELECT SAFE_DIVIDE(SUM(amount), COUNT(*)) AS a FROM `sales.orders` WHERE org_id = 'org_other'", "bigquery",
     [(None,)]),
    ("SELECT NVL(email, 'none') AS e FROM crm.customers WHERE customer_id = 4", "redshift", [("none",)]),
    ("SELECT COUNT(*) FROM crm.customers QUALIFY ROW_NUMBER() OVER () = 1", "snowflake", [(3,)]),
    ("FROM crm.customers SELECT ssn LIMIT 1", "duckdb", [("***",)]),
])
def test_dialects_transpile_and_run_governed(run: Run, sql: str, dialect: str, expected: list[tuple]) -> None:
    assert [tuple(float(v) if v is not None and not isinstance(v, str) else v for v in row)
            for row in run(sql, dialect)] == expected


def test_dialect_dml_runs_governed(db: duckdb.DuckDBPyConnection, run: Run) -> None:
    run("DELETE FROM sales.orders WHERE order_id = 12", "snowflake")
    assert db.execute("SELECT count(*) FROM hd_data.sales.orders").fetchone() == (4,)
