"""UPDATE ... SET (a, b) = (x, y): every assigned column meets the row-filter check, as with SET a = x, b = y.

The check once only saw plain `SET col = ...` assignments, so `SET (org_id, score) = ('org_other', 0)`
(or `SET (org_id) = ('org_other')`) moved rows out of the row filter without tripping it.
"""

from __future__ import annotations

import duckdb
import pytest

from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.governance.rewrite import is_row_filter_violation
from tests.unit.pipeline.governance.conftest import Run

ORDERED = "SELECT customer_id, org_id, full_name, score FROM hd_data.crm.customers ORDER BY customer_id"


@pytest.mark.parametrize("sql", [
    "UPDATE crm.customers SET (org_id, score) = ('org_other', 0) WHERE customer_id = 1",
    "UPDATE crm.customers SET (org_id) = ('org_other') WHERE customer_id = 1",
    "UPDATE crm.customers SET (score, org_id) = (1, 'org_other')",
    "UPDATE crm.customers SET (\"ORG_ID\", score) = ('org_other', 1) WHERE customer_id = 2",
])
def test_tuple_assignment_that_leaves_the_filter_aborts(db: duckdb.DuckDBPyConnection, run: Run, sql: str) -> None:
    before = db.execute(ORDERED).fetchall()
    with pytest.raises(duckdb.Error) as info:
        run(sql)
    assert is_row_filter_violation(str(info.value))
    assert db.execute(ORDERED).fetchall() == before


def test_tuple_assignment_inside_the_filter_still_works_and_sees_masked_values(db: duckdb.DuckDBPyConnection,
                                                                              run: Run) -> None:
    run("UPDATE crm.customers SET (full_name, score) = (ssn, 7) WHERE customer_id = 1")
    assert db.execute(ORDERED).fetchall()[0] == (1, "org_acme", "***", 7)


@pytest.mark.parametrize("sql", [
    "UPDATE crm.customers SET (org_id, score) = (SELECT 'org_other', 0) WHERE customer_id = 1",
    "UPDATE crm.customers SET (org_id) = ROW('org_other') WHERE customer_id = 1",
])
def test_multi_column_assignment_from_a_row_is_refused_on_a_filtered_table(db: duckdb.DuckDBPyConnection,
                                                                           run: Run, sql: str) -> None:
    with pytest.raises(QueryError) as info:
        run(sql)
    assert info.value.code == "HD_ERR_UNSUPPORTED"
