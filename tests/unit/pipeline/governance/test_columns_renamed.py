"""Columns read under names that are not theirs: alias column lists and DuckDB's positional `#n` references.

Both once escaped the PHI check end to end (`SELECT d FROM clinical.encounters AS e(a, b, c, d)` and,
in the duckdb dialect, `SELECT #4 FROM clinical.encounters` returned patient_name without a grant).
"""

from __future__ import annotations

import pytest

from engine_host.pipeline.governance.columns import referenced_columns
from engine_host.pipeline.governance.guard import parse_statement
from engine_host.pipeline.governance.tables import extract_tables
from tests.unit.pipeline.governance.conftest import COLUMNS, resolve

TABLE_COLUMNS = {name: [c for c, _ in cols] for name, cols in COLUMNS.items()}
ALL_CUSTOMER = set(TABLE_COLUMNS["crm.customers"])  # customer_id, org_id, full_name, email, ssn, score


def _read(sql: str, dialect: str = "postgres") -> dict[str, set[str]]:
    parsed = parse_statement(sql, dialect)
    return referenced_columns(parsed, extract_tables(parsed, resolve), TABLE_COLUMNS)


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT e FROM crm.customers AS c(a, b, c, d, e)", {"ssn"}),
    ("SELECT a FROM crm.customers AS c(a, b, c, d, e)", {"customer_id"}),
    ("SELECT x.d FROM crm.customers x(a, b, c, d) WHERE x.a > 1", {"customer_id", "email"}),
    ("SELECT count(*) FROM crm.customers AS x(a, b, c, d, e) WHERE e = '1'", {"ssn"}),
    ("SELECT * FROM crm.customers AS c(a, b)", ALL_CUSTOMER),
])
def test_alias_column_lists_map_back_to_the_table_columns(sql: str, expected: set[str]) -> None:
    assert _read(sql)["crm.customers"] >= expected


def test_alias_columns_in_a_join_and_in_dml() -> None:
    read = _read("SELECT x.d FROM sales.orders o JOIN crm.customers AS x(a, b, c, d) ON o.customer_id = x.a")
    assert {"email", "customer_id"} <= read["crm.customers"]
    dml = _read("DELETE FROM sales.orders WHERE customer_id IN (SELECT e FROM crm.customers x(a, b, c, d, e))")
    assert "ssn" in dml["crm.customers"]


@pytest.mark.parametrize("sql", [
    "SELECT #5 FROM crm.customers",
    "FROM crm.customers SELECT #1 WHERE #5 = 'x'",
    "SELECT count(*) FROM crm.customers ORDER BY #5",
])
def test_positional_references_read_every_column(sql: str) -> None:
    assert _read(sql, "duckdb")["crm.customers"] == ALL_CUSTOMER
