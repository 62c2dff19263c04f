"""Table extract: every reference accounted for, CTEs told apart from tables, actions per reference."""

from __future__ import annotations

import pytest

from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.governance.guard import parse_statement
from engine_host.pipeline.governance.tables import extract_tables
from hd_core.policies import Action
from tests.unit.pipeline.governance.conftest import resolve


def _refs(sql: str, dialect: str = "postgres") -> list[tuple[str, Action]]:
    return [(r.name, r.action) for r in extract_tables(parse_statement(sql, dialect), resolve)]


S, INS, U, D = Action.SELECT, Action.INSERT, Action.UPDATE, Action.DELETE


def test_cte_named_like_a_table_hides_the_table() -> None:
    assert _refs("WITH orders AS (SELECT * FROM sales.orders) SELECT * FROM orders") == [("sales.orders", S)]


def test_non_recursive_cte_does_not_see_itself() -> None:
    assert _refs("WITH notes AS (SELECT * FROM notes) SELECT * FROM notes") == [("main.notes", S)]


def test_recursive_cte_sees_itself() -> None:
    assert _refs("WITH RECURSIVE notes AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM notes WHERE n < 3) "
                 "SELECT * FROM notes") == []


def test_cte_sees_earlier_siblings_not_later_ones() -> None:
    assert _refs("WITH a AS (SELECT 1 AS x), notes AS (SELECT * FROM a) SELECT * FROM notes") == []
    assert _refs("WITH a AS (SELECT * FROM notes), notes AS (SELECT 1 AS x) SELECT * FROM a") == [("main.notes", S)]


def test_schema_qualified_name_is_never_a_cte() -> None:
    assert _refs("WITH notes AS (SELECT 1) SELECT * FROM main.notes") == [("main.notes", S)]


@pytest.mark.parametrize("name", ['"ORDERS"', "Orders", "sales.ORDERS", "hd.sales.orders", '"sales"."orders"'])
def test_identifiers_are_case_insensitive(name: str) -> None:
    spelled = name if "." in name else f"sales.{name}"
    assert _refs(f"SELECT * FROM {spelled}") == [("sales.orders", S)]


def test_unknown_table_reveals_nothing_else() -> None:
    with pytest.raises(QueryError) as info:
        _refs("SELECT * FROM crm.secret_table")
    assert (info.value.sqlstate, info.value.code) == ("42P01", "HD_ERR_UNKNOWN_TABLE")
    assert info.value.message == 'relation "crm.secret_table" does not exist'
    with pytest.raises(QueryError):
        _refs("SELECT * FROM otherdb.crm.customers")


def test_dml_targets_and_their_sources() -> None:
    assert _refs("INSERT INTO crm.customers SELECT * FROM crm.customers") == [
        ("crm.customers", INS), ("crm.customers", S)]
    assert sorted(_refs("UPDATE crm.customers c SET score = o.amount FROM sales.orders o "
                        "WHERE o.customer_id = c.customer_id")) == [("crm.customers", U), ("sales.orders", S)]
    assert sorted(_refs("DELETE FROM crm.customers USING sales.orders o WHERE "
                        "customers.customer_id IN (SELECT customer_id FROM notes)")) == [
        ("crm.customers", D), ("main.notes", S), ("sales.orders", S)]


def test_cte_named_like_the_target_is_not_the_target() -> None:
    assert sorted(_refs("WITH customers AS (SELECT 1 AS customer_id) DELETE FROM crm.customers "
                        "WHERE customer_id IN (SELECT customer_id FROM customers)")) == [("crm.customers", D)]


def test_ddl_actions() -> None:
    assert _refs("CREATE TABLE main.newt AS SELECT * FROM notes") == [("main.notes", S)]
    assert _refs("CREATE TABLE IF NOT EXISTS notes (a INT)") == [("main.notes", Action.CREATE)]
    assert _refs("DROP TABLE sales.orders") == [("sales.orders", Action.DROP)]
    assert _refs("DROP TABLE IF EXISTS sales.nothing") == []
    assert _refs("ALTER TABLE sales.orders ADD COLUMN note VARCHAR") == [("sales.orders", Action.ALTER)]
    with pytest.raises(QueryError) as info:
        _refs("DROP TABLE sales.nothing")
    assert info.value.code == "HD_ERR_UNKNOWN_TABLE"


def test_create_or_replace_of_existing_table_is_refused() -> None:
    with pytest.raises(QueryError) as info:
        _refs("CREATE OR REPLACE TABLE notes AS SELECT 1")
    assert info.value.sqlstate == "0A000"


def test_explain_reports_the_explained_statement_tables() -> None:
    assert _refs("EXPLAIN DELETE FROM notes") == [("main.notes", D)]


def test_table_functions_are_not_tables() -> None:
    assert _refs("SELECT * FROM generate_series(1, 3) g(x), notes") == [("main.notes", S)]
