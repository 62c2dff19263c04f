"""What keeps planning a new statement cheap: shared sqlglot schemas, and passes skipped when they cannot answer."""

from __future__ import annotations

import pytest
import sqlglot
from sqlglot.schema import MappingSchema

from engine_host.pgcompat.types.declared import NAME, VARCHAR
from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.governance.guard import check_functions, parse_statement
from engine_host.pipeline.governance.pg_semantics import SchemaCache, table_schema
from engine_host.pipeline.governance.result_types import declared_types

COLUMNS = {"crm.customers": (("customer_id", "INTEGER"), ("full_name", "VARCHAR"))}


def test_the_same_columns_share_one_schema_and_other_columns_get_their_own() -> None:
    first = table_schema(COLUMNS)
    assert first is not None and table_schema(dict(COLUMNS)) is first
    other = table_schema({"crm.customers": (("customer_id", "BIGINT"), ("full_name", "VARCHAR"))})
    assert other is not None and other is not first
    assert first.column_names("hd_data.crm.customers") == ["customer_id", "full_name"]
    assert table_schema({}) is None


def test_a_schema_is_rebuilt_after_its_uses_and_the_least_recent_is_evicted() -> None:
    built: list[str] = []

    def build(name: str) -> MappingSchema:
        built.append(name)
        return MappingSchema({name: {"a": "INT"}})

    cache = SchemaCache(capacity=2, uses=3)
    a = cache.get("a", lambda: build("a"))
    assert cache.get("a", lambda: build("a")) is a and cache.get("a", lambda: build("a")) is a
    assert cache.get("a", lambda: build("a")) is not a  # its 4th use: sqlglot's per-schema memos stay bounded
    cache.get("b", lambda: build("b"))
    cache.get("c", lambda: build("c"))  # evicts a, the least recently used
    cache.get("b", lambda: build("b"))
    cache.get("a", lambda: build("a"))
    assert built == ["a", "a", "b", "c", "a"]


def test_declared_types_without_a_varchar_column_or_a_declaring_node_is_empty() -> None:
    numbers = {"main.n": (("k", "INTEGER"), ("v", "DOUBLE"))}
    assert declared_types(parse_statement("SELECT k, v, k + 1 FROM main.n").tree, numbers) == ()
    assert declared_types(parse_statement("SELECT 1, 'a'").tree, {}) == ()
    # Each form _expression_type declares is still found without a varchar column to read.
    assert declared_types(parse_statement("SELECT k, v::varchar FROM main.n").tree, numbers) == (None, VARCHAR)
    assert declared_types(parse_statement("SELECT current_user, 1").tree, {}) == (NAME, None)
    assert declared_types(parse_statement("SELECT k, user FROM main.n").tree, numbers) == (None, NAME)
    assert declared_types(parse_statement("SELECT full_name FROM crm.customers").tree, COLUMNS) == (VARCHAR,)


def test_a_case_branch_is_not_a_call_but_what_it_holds_is_still_checked() -> None:
    for sql in ("SELECT CASE WHEN (SELECT count(*) FROM read_csv('/etc/passwd')) > 0 THEN 1 END",
                "SELECT CASE WHEN x = 0 THEN 0 ELSE CASE WHEN x = 1 THEN glob('*') END END FROM t"):
        with pytest.raises(QueryError) as refused:
            check_functions(sqlglot.parse_one(sql, read="duckdb"), sql, generated=True)
        assert refused.value.code == "HD_ERR_FUNCTION_NOT_ALLOWED"
    allowed = "SELECT CASE WHEN x = 0 THEN abs(x) ELSE CASE WHEN x = 1 THEN lower('A') END END FROM t"
    check_functions(sqlglot.parse_one(allowed, read="duckdb"), allowed, generated=True)
