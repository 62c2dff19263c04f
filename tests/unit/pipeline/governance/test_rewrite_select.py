"""Reads see masked values of permitted rows only, through every SQL construct."""

from __future__ import annotations

import duckdb
import pytest

from tests.unit.pipeline.governance.conftest import Run, governed_sql

ACME_SSNS = {"***", None}


def test_plain_select_masks_every_column_kind_and_filters_rows(run: Run) -> None:
    rows = run("SELECT customer_id, org_id, full_name, email, ssn, score FROM crm.customers ORDER BY 1")
    assert [r[0] for r in rows] == [1, 2, 4]
    assert {r[1] for r in rows} == {"org_acme"}
    assert rows[0][4] == "***" and rows[2][4] == "***"  # full mask: every row, NULL too
    assert rows[0][3] == "***e.io" and rows[2][3] is None  # partial: NULL stays NULL
    assert rows[0][2] != "Ada Lovelace" and len(rows[0][2]) == 32 and rows[2][2] != "Null Mail"
    assert {r[5] for r in rows} == {None}  # null mask


def test_alias_does_not_unmask(run: Run) -> None:
    assert {r[0] for r in run("SELECT ssn AS x FROM crm.customers")} == {"***"}


def test_function_over_masked_column_sees_masked_value(run: Run) -> None:
    assert {r[0] for r in run("SELECT substr(ssn, 1, 3) FROM crm.customers")} == {"***"}
    assert {r[0] for r in run("SELECT substr(email, 1, 4) AS p FROM crm.customers WHERE email IS NOT NULL")} == {"***e"}


def test_predicate_on_raw_value_leaks_no_rows(run: Run) -> None:
    assert run("SELECT customer_id FROM crm.customers WHERE ssn LIKE '1%'") == []
    assert run("SELECT count(*) FROM crm.customers WHERE full_name = 'Ada Lovelace'") == [(0,)]
    assert run("SELECT customer_id FROM crm.customers WHERE org_id = 'org_other'") == []


def test_group_by_and_order_by_masked_column(run: Run) -> None:
    assert run("SELECT ssn, count(*) FROM crm.customers GROUP BY ssn ORDER BY ssn") == [("***", 3)]
    ordered = run("SELECT email FROM crm.customers ORDER BY email NULLS LAST")
    assert ordered == [("***e.io",), ("***e.io",), (None,)]


def test_join_on_hashed_columns_across_tables_still_matches(run: Run) -> None:
    rows = run("SELECT c.customer_id, r.refund_id FROM crm.customers c JOIN sales.refunds r "
               "ON c.full_name = r.full_name")
    assert rows == [(1, 1)]


def test_join_and_aggregate_only_permitted_rows(run: Run) -> None:
    rows = run("SELECT c.customer_id, sum(o.amount) FROM crm.customers c JOIN sales.orders o "
               "ON o.customer_id = c.customer_id GROUP BY 1 ORDER BY 1")
    assert [(r[0], float(r[1])) for r in rows] == [(1, 125.5), (2, 50.0)]


def test_cte_named_like_a_table_is_the_cte() -> None:
    sql = governed_sql("WITH orders AS (SELECT * FROM sales.orders) SELECT * FROM orders")
    assert sql.count('"sales"."orders"') == 1


def test_cte_shadowing_both_ways(run: Run) -> None:
    # The CTE reads the base table it shadows (a non-recursive CTE does not see itself).
    rows = run("WITH customers AS (SELECT * FROM crm.customers) SELECT ssn FROM customers")
    assert {r[0] for r in rows} == {"***"} and len(rows) == 3
    # Inside a CTE body an unqualified name that matches a later sibling is not that sibling.
    assert run("WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT * FROM b") == [(1,)]


def test_cte_sees_earlier_sibling_and_unqualified_name_is_base_table(db: duckdb.DuckDBPyConnection) -> None:
    sql = governed_sql("WITH notes AS (SELECT * FROM notes) SELECT body FROM notes")
    assert '"main"."notes"' in sql
    assert db.execute(sql).fetchall() == [("hello",)]


def test_recursive_cte_over_masked_table(run: Run) -> None:
    rows = run("WITH RECURSIVE r(n, s) AS (SELECT 1, (SELECT min(ssn) FROM crm.customers) "
               "UNION ALL SELECT n + 1, s FROM r WHERE n < 3) SELECT DISTINCT s FROM r")
    assert rows == [("***",)]


def test_lateral_subquery_sees_masked_values(run: Run) -> None:
    rows = run("SELECT o.order_id, l.s FROM sales.orders o, LATERAL (SELECT c.ssn AS s FROM crm.customers c "
               "WHERE c.customer_id = o.customer_id) l ORDER BY 1")
    assert rows == [(10, "***"), (11, "***"), (13, "***")]


def test_union_with_another_table(run: Run) -> None:
    rows = run("SELECT ssn FROM crm.customers UNION SELECT org_id FROM sales.orders")
    assert set(rows) == {("***",), ("org_acme",)}


def test_subqueries_in_where_select_list_and_exists(run: Run) -> None:
    assert run("SELECT order_id FROM sales.orders WHERE customer_id IN "
               "(SELECT customer_id FROM crm.customers WHERE ssn = '987-65-4321')") == []
    rows = run("SELECT order_id, (SELECT max(ssn) FROM crm.customers c WHERE c.customer_id = o.customer_id) "
               "FROM sales.orders o ORDER BY 1")
    assert rows == [(10, "***"), (11, "***"), (13, "***")]
    assert run("SELECT 1 WHERE EXISTS (SELECT 1 FROM crm.customers WHERE ssn LIKE '9%')") == []
    assert run("SELECT count(*) FROM sales.orders o WHERE EXISTS "
               "(SELECT 1 FROM crm.customers c WHERE c.customer_id = o.customer_id)") == [(3,)]


def test_window_and_having_see_masked_values(run: Run) -> None:
    rows = run("SELECT DISTINCT first_value(ssn) OVER (ORDER BY customer_id) FROM crm.customers")
    assert rows == [("***",)]
    assert run("SELECT org_id FROM crm.customers GROUP BY org_id HAVING max(ssn) LIKE '9%'") == []


@pytest.mark.parametrize("name", ['crm."CUSTOMERS"', "CRM.Customers", "hd.crm.customers", '"crm"."customers"'])
def test_every_spelling_of_a_table_is_governed(run: Run, name: str) -> None:
    rows = run(f"SELECT ssn, org_id FROM {name}")
    assert set(rows) == {("***", "org_acme")} and len(rows) == 3


def test_schema_qualified_column_keeps_working(run: Run) -> None:
    assert set(run("SELECT crm.customers.ssn FROM crm.customers")) == {("***",)}
    assert set(run("SELECT hd.crm.customers.ssn FROM hd.crm.customers")) == {("***",)}


def test_whole_row_reference_is_masked(run: Run) -> None:
    rows = run("SELECT c FROM crm.customers c WHERE customer_id = 1")
    assert rows[0][0]["ssn"] == "***" and rows[0][0]["email"] == "***e.io"


def test_column_alias_list_of_a_reference_is_kept(run: Run) -> None:
    rows = run("SELECT e FROM crm.customers AS c(i, o, n, e, s) WHERE i = 1")
    assert rows == [("***e.io",)]


def test_ungoverned_table_is_named_canonically() -> None:
    sql = governed_sql("SELECT body FROM NOTES")
    assert '"main"."notes"' in sql and "__hd_src" not in sql


def test_governed_table_is_not_rewritten_twice() -> None:
    sql = governed_sql("SELECT * FROM crm.customers a, crm.customers b")
    assert sql.count('FROM "hd_data"."crm"."customers" AS "__hd_src"') == 2


def test_placeholders_survive(db: duckdb.DuckDBPyConnection) -> None:
    sql = governed_sql("SELECT customer_id FROM crm.customers WHERE customer_id = $1 OR customer_id = $2")
    assert "$1" in sql and "$2" in sql
    assert db.execute(sql, [3, 1]).fetchall() == [(1,)]


def test_hash_uses_redacted_macro_under_explain() -> None:
    sql = governed_sql("EXPLAIN SELECT full_name FROM crm.customers")
    assert sql.startswith("EXPLAIN ") and "hd_mask_hash_redacted" in sql
    assert "hd_mask_hash(" not in sql


def test_explain_runs(db: duckdb.DuckDBPyConnection) -> None:
    plan = db.execute(governed_sql("/* c */ explain SELECT full_name FROM crm.customers")).fetchall()
    assert plan


def test_create_table_as_materialises_masked_rows(db: duckdb.DuckDBPyConnection) -> None:
    db.execute(governed_sql("CREATE TABLE main.copy AS SELECT * FROM crm.customers"))
    rows = db.execute("SELECT org_id, ssn FROM hd_data.main.copy").fetchall()
    assert set(rows) == {("org_acme", "***"), ("org_acme", "***")} and len(rows) == 3


def test_input_tree_is_untouched() -> None:
    from engine_host.pipeline.governance.guard import parse_statement
    from engine_host.pipeline.governance.rewrite import apply_policies
    from engine_host.pipeline.governance.tables import extract_tables
    from tests.unit.pipeline.governance.conftest import policies, resolve

    parsed = parse_statement("SELECT ssn FROM crm.customers")
    before = parsed.tree.sql()
    apply_policies(parsed, extract_tables(parsed, resolve), policies())
    assert parsed.tree.sql() == before
