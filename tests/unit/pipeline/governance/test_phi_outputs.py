"""Where a table's patient key is in a statement's result: exact when it can be followed, None when it cannot."""

from __future__ import annotations

import pytest

from engine_host.pipeline.governance.guard import parse_statement
from engine_host.pipeline.governance.phi_outputs import patient_key_outputs
from engine_host.pipeline.governance.tables import extract_tables
from tests.unit.pipeline.governance.conftest import COLUMNS, resolve

TABLE_COLUMNS = {name: [c for c, _ in cols] for name, cols in COLUMNS.items()}
KEYS = {"crm.customers": "customer_id", "sales.orders": "customer_id"}


def _outputs(sql: str, tables: tuple[str, ...] = ("crm.customers",),
             masked: dict[str, tuple[str, ...]] | None = None) -> tuple[tuple[str, int], ...] | None:
    parsed = parse_statement(sql)
    return patient_key_outputs(parsed, extract_tables(parsed, resolve), tables, KEYS, TABLE_COLUMNS, masked or {})


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT customer_id, ssn FROM crm.customers", (("crm.customers", 0),)),
    ("SELECT ssn, customer_id AS who FROM crm.customers", (("crm.customers", 1),)),
    ("SELECT * FROM crm.customers", (("crm.customers", 0),)),
    ("SELECT ssn, c.* FROM crm.customers c", (("crm.customers", 1),)),
    ("SELECT 1, * FROM crm.customers", (("crm.customers", 1),)),
    ("SELECT o.amount, c.customer_id FROM sales.orders o JOIN crm.customers c USING (customer_id)",
     (("crm.customers", 1),)),
    ("SELECT customer_id, count(*) FROM crm.customers GROUP BY 1", (("crm.customers", 0),)),
])
def test_a_returned_patient_key_is_found_at_its_result_position(sql: str, expected: object) -> None:
    assert _outputs(sql) == expected


@pytest.mark.parametrize("sql", [
    "SELECT ssn FROM crm.customers",  # the key is not in the result
    "SELECT customer_id + 0 AS k, ssn FROM crm.customers",  # computed from the key, not the key
    "SELECT count(*) FROM crm.customers",
    "SELECT * FROM crm.customers JOIN sales.orders USING (customer_id)",  # USING folds columns: width unsure
    "SELECT k FROM (SELECT customer_id AS k FROM crm.customers) s",  # from a subquery
    "SELECT customer_id FROM crm.customers UNION SELECT customer_id FROM crm.customers",
    "EXPLAIN SELECT customer_id FROM crm.customers",
])
def test_a_key_that_cannot_be_followed_makes_the_result_untraceable(sql: str) -> None:
    assert _outputs(sql) is None


def test_a_masked_key_discloses_no_key() -> None:
    assert _outputs("SELECT customer_id, ssn FROM crm.customers", masked={"crm.customers": ("customer_id",)}) is None


def test_every_table_must_be_traced() -> None:
    sql = "SELECT c.customer_id, o.amount FROM crm.customers c JOIN sales.orders o ON o.customer_id = c.customer_id"
    assert _outputs(sql, ("crm.customers",)) == (("crm.customers", 0),)
    assert _outputs(sql, ("crm.customers", "sales.orders")) is None
