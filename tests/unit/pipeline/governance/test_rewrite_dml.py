"""Data-changing statements only touch permitted rows, see masked values, and cannot move rows out of the filter."""

from __future__ import annotations

import duckdb
import pytest

from engine_host.pipeline.governance.rewrite import is_row_filter_violation
from tests.unit.pipeline.governance.conftest import Run, governed_sql


def _all(db: duckdb.DuckDBPyConnection, sql: str = "SELECT * FROM hd_data.crm.customers ORDER BY customer_id") -> list:
    return db.execute(sql).fetchall()


def test_delete_touches_only_filtered_rows(db: duckdb.DuckDBPyConnection, run: Run) -> None:
    run("DELETE FROM crm.customers")
    assert [r[0] for r in _all(db)] == [3]


def test_delete_predicate_on_masked_column_is_no_oracle(db: duckdb.DuckDBPyConnection, run: Run) -> None:
    run("DELETE FROM crm.customers WHERE ssn = '123-45-6789'")
    assert len(_all(db)) == 4
    run("DELETE FROM crm.customers WHERE ssn = '***' AND customer_id = 1")
    assert [r[0] for r in _all(db)] == [2, 3, 4]


def test_delete_using_another_table(db: duckdb.DuckDBPyConnection, run: Run) -> None:
    run("DELETE FROM crm.customers c USING sales.orders o WHERE o.customer_id = c.customer_id AND o.amount > 60")
    assert [r[0] for r in _all(db)] == [2, 3, 4]


def test_delete_subquery_gets_the_table_rewrite(db: duckdb.DuckDBPyConnection, run: Run) -> None:
    run("DELETE FROM sales.orders WHERE customer_id IN (SELECT customer_id FROM crm.customers WHERE ssn LIKE '9%')")
    assert len(_all(db, "SELECT * FROM hd_data.sales.orders")) == 4


def test_update_touches_only_filtered_rows(db: duckdb.DuckDBPyConnection, run: Run) -> None:
    run("UPDATE crm.customers SET score = 99")
    assert [(r[0], r[5]) for r in _all(db)] == [(1, 99), (2, 99), (3, 30), (4, 99)]


def test_update_set_copies_masked_value(db: duckdb.DuckDBPyConnection, run: Run) -> None:
    run("UPDATE crm.customers SET full_name = ssn WHERE customer_id = 1")
    assert _all(db)[0][2] == "***"


def test_update_where_on_masked_column_is_evaluated_masked(db: duckdb.DuckDBPyConnection, run: Run) -> None:
    run("UPDATE crm.customers SET score = 0 WHERE ssn LIKE '1%'")
    assert [r[5] for r in _all(db)] == [10, 20, 30, None]


def test_update_that_would_leave_the_filter_aborts_and_changes_nothing(db: duckdb.DuckDBPyConnection,
                                                                         run: Run) -> None:
    before = _all(db)
    with pytest.raises(duckdb.Error) as info:
        run("UPDATE crm.customers SET org_id = 'org_other', score = 0")
    assert is_row_filter_violation(str(info.value))
    assert _all(db) == before


def test_update_inside_the_filter_passes_the_check(db: duckdb.DuckDBPyConnection, run: Run) -> None:
    run("UPDATE crm.customers SET org_id = 'org_acme', score = 1 WHERE customer_id = 2")
    assert _all(db)[1][5] == 1


def test_update_check_does_not_fire_on_rows_outside_the_statement(db: duckdb.DuckDBPyConnection, run: Run) -> None:
    run("UPDATE crm.customers SET score = 5 WHERE customer_id = 1")
    assert [r[5] for r in _all(db)] == [5, 20, 30, None]


def test_update_from_another_table(db: duckdb.DuckDBPyConnection, run: Run) -> None:
    run("UPDATE crm.customers AS c SET score = o.order_id FROM sales.orders o "
        "WHERE o.customer_id = c.customer_id AND o.amount = 50")
    assert [r[5] for r in _all(db)] == [10, 11, 30, None]


def test_update_returning_is_masked(run: Run) -> None:
    rows = run("UPDATE crm.customers SET score = 1 WHERE customer_id = 1 RETURNING ssn, email AS e, customer_id")
    assert rows == [("***", "***e.io", 1)]
    star = run("UPDATE crm.customers SET score = 2 WHERE customer_id = 2 RETURNING *")
    assert star[0][4] == "***" and star[0][0] == 2


def test_insert_inside_the_filter(db: duckdb.DuckDBPyConnection, run: Run) -> None:
    run("INSERT INTO crm.customers (customer_id, org_id, ssn) VALUES (5, 'org_acme', '555')")
    assert _all(db)[-1][:5] == (5, "org_acme", None, None, "555")


def test_insert_outside_the_filter_aborts_and_changes_nothing(db: duckdb.DuckDBPyConnection, run: Run) -> None:
    with pytest.raises(duckdb.Error) as info:
        run("INSERT INTO crm.customers VALUES (5, 'org_acme', 'a', 'b', 'c', 1), (6, 'org_other', 'a', 'b', 'c', 1)")
    assert is_row_filter_violation(str(info.value))
    with pytest.raises(duckdb.Error):
        run("INSERT INTO crm.customers (customer_id) VALUES (7)")  # org_id not inserted is NULL
    assert len(_all(db)) == 4


def test_insert_select_from_masked_table_stores_masked_values(db: duckdb.DuckDBPyConnection, run: Run) -> None:
    run("INSERT INTO crm.customers SELECT customer_id + 100, org_id, full_name, email, ssn, score "
        "FROM crm.customers")
    copied = _all(db, "SELECT ssn, email, org_id FROM hd_data.crm.customers WHERE customer_id > 100")
    assert len(copied) == 3 and {r[0] for r in copied} == {"***"} and {r[2] for r in copied} == {"org_acme"}


def test_insert_returning_is_masked(run: Run) -> None:
    rows = run("INSERT INTO crm.customers (customer_id, org_id, ssn, email) VALUES (5, 'org_acme', '555', "
               "'x@y.org') RETURNING customer_id, ssn, email")
    assert rows == [(5, "***", "***.org")]


def test_insert_with_cte_source(db: duckdb.DuckDBPyConnection, run: Run) -> None:
    run("WITH n AS (SELECT 9 AS id) INSERT INTO sales.orders (order_id, org_id) SELECT id, 'org_acme' FROM n")
    assert len(_all(db, "SELECT * FROM hd_data.sales.orders")) == 5


def test_insert_into_ungoverned_table_is_plain(db: duckdb.DuckDBPyConnection) -> None:
    sql = governed_sql("INSERT INTO notes VALUES (2, 'x')")
    assert "__hd_new" not in sql
    db.execute(sql)
    assert len(_all(db, "SELECT * FROM hd_data.main.notes")) == 2


def test_placeholders_survive_in_dml(db: duckdb.DuckDBPyConnection) -> None:
    sql = governed_sql("UPDATE crm.customers SET score = $1 WHERE customer_id = $2")
    db.execute(sql, [77, 1])
    assert _all(db)[0][5] == 77
