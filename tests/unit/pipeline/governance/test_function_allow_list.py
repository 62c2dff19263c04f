"""Functions are an allow list: on the client's tree and again on the DuckDB SQL that runs."""

from __future__ import annotations

import pytest
import sqlglot

from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.governance.guard import check_functions, check_statement, parse_statement
from tests.unit.pipeline.governance.conftest import governed_sql


def _refusal(sql: str, dialect: str = "postgres") -> QueryError:
    with pytest.raises(QueryError) as caught:
        governed_sql(sql, dialect)
    return caught.value


@pytest.mark.parametrize("sql", [
    "SELECT json_serialize_plan('SELECT * FROM crm.customers')",
    "SELECT json_serialize_sql('SELECT 1')",
    "SELECT * FROM crm.customers WHERE json_deserialize_sql(ssn) IS NULL",
    "SELECT \"json_serialize_plan\"('x')",
    "SELECT current_query()",
    "SELECT getvariable('x')",
    "SELECT nextval('s')",
    "SELECT error(ssn) FROM crm.customers",
    "SELECT hd_mask_hash_live(ssn) FROM crm.customers",
    "SELECT list_aggregate([ssn], 'max') FROM crm.customers",
    "SELECT some_function_duckdb_adds_tomorrow(1)",
    "WITH c AS (SELECT query_table('crm.customers') AS q) SELECT * FROM c",
    "SELECT (SELECT read_text('/etc/passwd'))",
    "SELECT user, ssn FROM crm.customers",
])
def test_functions_off_the_list_are_refused(sql: str) -> None:
    error = _refusal(sql)
    assert (error.sqlstate, error.code) == ("42501", "HD_ERR_FUNCTION_NOT_ALLOWED"), error.message


@pytest.mark.parametrize(("sql", "dialect"), [
    ("SELECT json_serialize_plan('x')", "duckdb"),
    ("SELECT JSON_SERIALIZE_PLAN('x')", "snowflake"),
    ("SELECT `query`('x')", "bigquery"),
    ("SELECT \"getvariable\"('x')", "redshift"),
])
def test_every_dialect_meets_the_same_list(sql: str, dialect: str) -> None:
    assert _refusal(sql, dialect).code == "HD_ERR_FUNCTION_NOT_ALLOWED"


@pytest.mark.parametrize("sql", [
    "SELECT upper(full_name), substring(email, 1, 3), length(ssn), coalesce(email, '-') FROM crm.customers",
    "SELECT date_trunc('day', now()), strftime(current_date, '%Y'), CAST(score AS DECIMAL(10, 2)) FROM crm.customers",
    "SELECT string_agg(full_name, ',' ORDER BY full_name), count(*) FILTER (WHERE score > 1) FROM crm.customers",
    "SELECT row_number() OVER (ORDER BY score), lag(score) OVER w FROM crm.customers WINDOW w AS (ORDER BY score)",
    "SELECT list_transform([1, 2], x -> x + 1), {'a': 1}, [1, 2][1], regexp_matches(email, '@') FROM crm.customers",
    "SELECT * FROM range(3) AS r(x), crm.customers",
    "SELECT CASE WHEN score > 1 THEN 'hi' END, score BETWEEN 1 AND 2, email LIKE '%@%' FROM crm.customers",
])
def test_everyday_functions_pass(sql: str) -> None:
    governed_sql(sql)


def test_the_rewrites_own_calls_pass_only_where_the_rewrite_put_them() -> None:
    # The keyed-hash macro (masks) and error() (row-filter check of writes) are ours, not the client's.
    assert "hd_mask_hash" in governed_sql("SELECT full_name FROM sales.refunds")
    assert "error(" in governed_sql("UPDATE crm.customers SET score = 1").lower()


def test_generated_sql_is_checked_as_duckdb_reads_it() -> None:
    # A call sqlglot only knows as a known class is named as DuckDB sees it in the text that runs.
    sql = "SELECT read_csv('x')"
    with pytest.raises(QueryError):
        check_functions(sqlglot.parse_one(sql, read="duckdb"), sql, generated=True)
    sql = "SELECT upper(x), CAST(x AS INT) FROM t"
    check_functions(sqlglot.parse_one(sql, read="duckdb"), sql, generated=True)


def test_catalog_statements_may_call_what_the_catalog_layer_answers_and_nothing_else() -> None:
    parsed = parse_statement("SELECT version(), current_setting('x'), pg_get_userbyid(10), upper('x')")
    check_statement(parsed, catalog=True)
    with pytest.raises(QueryError):
        check_statement(parse_statement("SELECT query('SELECT 1'), version()"), catalog=True)
