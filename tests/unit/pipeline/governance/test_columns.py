"""Columns read per base table: precise when the optimizer can qualify the query, never under-reported."""

from __future__ import annotations

from engine_host.pipeline.governance.columns import referenced_columns
from engine_host.pipeline.governance.guard import parse_statement
from engine_host.pipeline.governance.tables import extract_tables
from tests.unit.pipeline.governance.conftest import COLUMNS, resolve

TABLE_COLUMNS = {name: [c for c, _ in cols] for name, cols in COLUMNS.items()}
ALL_CUSTOMER = set(TABLE_COLUMNS["crm.customers"])


def _read(sql: str, dialect: str = "postgres") -> dict[str, set[str]]:
    parsed = parse_statement(sql, dialect)
    return referenced_columns(parsed, extract_tables(parsed, resolve), TABLE_COLUMNS)


def test_precise_columns_through_aliases_joins_and_ctes() -> None:
    assert _read("SELECT ssn AS x FROM crm.customers") == {"crm.customers": {"ssn"}}
    assert _read("WITH c AS (SELECT customer_id, email FROM crm.customers) SELECT o.amount FROM c "
                 "JOIN sales.orders o ON o.customer_id = c.customer_id") == {
        "crm.customers": {"customer_id", "email"}, "sales.orders": {"amount", "customer_id"}}


def test_star_expands_to_every_column() -> None:
    assert _read("SELECT * FROM crm.customers") == {"crm.customers": ALL_CUSTOMER}


def test_count_star_reads_no_column() -> None:
    assert _read("SELECT count(*) FROM crm.customers") == {"crm.customers": set()}


def test_predicates_count_as_reads() -> None:
    assert _read("SELECT customer_id FROM crm.customers WHERE ssn LIKE '9%'") == {
        "crm.customers": {"customer_id", "ssn"}}


def test_whole_row_reference_reads_every_column() -> None:
    assert _read("SELECT c FROM crm.customers c") == {"crm.customers": ALL_CUSTOMER}


def test_columns_expression_reads_every_column() -> None:
    assert _read("SELECT COLUMNS('s.*') FROM crm.customers", "duckdb") == {"crm.customers": ALL_CUSTOMER}


def test_dml_falls_back_conservatively() -> None:
    read = _read("UPDATE crm.customers SET full_name = ssn WHERE email = 'x'")
    assert {"ssn", "email"} <= read["crm.customers"]
    assert _read("DELETE FROM crm.customers RETURNING *") == {"crm.customers": ALL_CUSTOMER}


def test_quoted_and_schema_qualified_names() -> None:
    assert _read('SELECT crm.customers."SSN" FROM crm."CUSTOMERS"') == {"crm.customers": {"ssn"}}
