"""Row filters: what a filter may say, and that session values reach DuckDB only as escaped literals."""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pytest
from sqlglot import exp

from hd_core.errors import PolicyInvalid, RowFilterInvalid
from hd_core.row_filters import ParsedRowFilter, parse_row_filter, placeholders, referenced_columns, resolve_row_filter

HOSTILE_VALUES = [
    "O'Brien",
    "x' OR '1'='1",
    "x'' OR ''1''=''1",
    "a\\b",
    "a\\'b",
    "\\",
    "trailing\\",
    "x\\' OR 1=1 --",
    "'; DROP TABLE t; --",
    "$$ OR TRUE $$",
    "/* comment */",
    "Zoë ☃ 😀 日本",
    "line\nbreak\ttab",
    "",
    "%",
    "_",
]


@pytest.fixture
def db() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    connection.execute("CREATE TABLE t (id INTEGER, owner VARCHAR, region VARCHAR, is_public BOOLEAN)")
    rows = [(index, value, "eu", False) for index, value in enumerate(HOSTILE_VALUES)]
    rows += [(1000, "alice", "eu", True), (1001, "bob", "us", False), (1002, None, "us", False)]
    connection.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
    yield connection
    connection.close()


def _matching_ids(db: duckdb.DuckDBPyConnection, condition: exp.Expr) -> set[int]:
    sql = f"SELECT id FROM t WHERE {condition.sql(dialect='duckdb')}"
    return {row[0] for row in db.execute(sql).fetchall()}


# --- parsing ------------------------------------------------------------------------------------


def test_a_filter_reports_its_columns_and_placeholders() -> None:
    parsed = parse_row_filter("Region = {region} AND (owner = {user_id} OR is_public)")
    assert isinstance(parsed, ParsedRowFilter)
    assert referenced_columns(parsed) == {"region", "owner", "is_public"}
    assert placeholders(parsed) == {"region", "user_id"}


@pytest.mark.parametrize(
    "text",
    [
        "org_id = {org_id}",
        "owner IN ({user_id}, 'shared')",
        "region IS NOT NULL AND region <> 'us'",
        "amount BETWEEN 0 AND 100",
        "NOT is_deleted",
        "is_public",
        "lower(owner) = lower({user_id})",
        "coalesce(agent, {agent_id}) = {agent_id}",
        "note LIKE '%' || {department} || '%'",
        "CAST(flag AS BOOLEAN)",
        "TRUE",
    ],
)
def test_ordinary_conditions_are_accepted(text: str) -> None:
    parse_row_filter(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("org_id = {tenant}", "unknown placeholder {tenant}"),
        ("org_id = {org_id", "unbalanced"),
        ("org_id = {}", "unknown placeholder {}"),
        ("org_id = '{org_id}'", "write it bare"),
        ("owner LIKE '%{user_id}%'", "inside a string literal"),
        ("org_id = E'{org_id}'", "inside a string literal"),
        ('"{org_id}" = org_id', "not inside double quotes"),
        ('"x{org_id}" = 1', "not inside double quotes"),
        ("x{org_id} = 1", "cannot be part of a name"),
        ("owner = {user_id}x", "cannot be part of a name"),
        ("{org_id}(owner)", "cannot be used as a name"),
        ("a = 1; b = 2", "exactly one condition"),
        ("org_id = {org_id}; DROP TABLE t", "exactly one condition"),
        ("", "exactly one condition"),
        ("owner IN (SELECT owner FROM admins)", "subqueries"),
        ("EXISTS (SELECT 1)", "subqueries"),
        ("owner = (SELECT max(owner) FROM t)", "subqueries"),
        ("t.owner = {user_id}", "unqualified"),
        ("main.t.owner = {user_id}", "unqualified"),
        ("count(*) > 0", "aggregate"),
        ("sum(amount) > 0", "aggregate"),
        ("row_number() OVER () = 1", "window"),
        ("owner = $1", "bind parameters"),
        ("LOAD httpfs", "not a plain expression"),
        ("SELECT 1", "subqueries"),
        ("1", "must be a condition"),
        ("amount + 1", "must be a condition"),
        ("{org_id}", "must be a condition"),
        ("__hd_ph_org_id = 'x'", "may not use names"),
        ("owner = 'x' OR", "not valid SQL"),
    ],
)
def test_unsafe_or_malformed_filters_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(RowFilterInvalid, match=message) as caught:
        parse_row_filter(text)
    assert caught.value.code == "HD_ERR_ROW_FILTER_INVALID"
    assert isinstance(caught.value, PolicyInvalid)


def test_a_placeholder_inside_quotes_explains_how_to_write_it() -> None:
    with pytest.raises(RowFilterInvalid) as caught:
        parse_row_filter("org_id = '{org_id}'")
    assert "column = {org_id}" in str(caught.value)
    assert "quoted" in str(caught.value)


def test_star_is_refused() -> None:
    with pytest.raises(RowFilterInvalid):
        parse_row_filter("t.* IS NOT NULL")


# --- resolving ----------------------------------------------------------------------------------


def test_resolved_filter_inlines_values_as_literals_and_leaves_the_parsed_filter_untouched() -> None:
    parsed = parse_row_filter("owner = {user_id}")
    first = resolve_row_filter(parsed, {"user_id": "alice"})
    second = resolve_row_filter(parsed, {"user_id": "bob"})
    assert first.sql(dialect="duckdb") == "owner = 'alice'"
    assert second.sql(dialect="duckdb") == "owner = 'bob'"
    assert resolve_row_filter(parsed, {"user_id": "alice"}).sql() == first.sql()


def test_resolved_columns_are_unqualified() -> None:
    resolved = resolve_row_filter(parse_row_filter("owner = {user_id} AND region = 'eu'"), {"user_id": "a"})
    assert all(not column.table for column in resolved.find_all(exp.Column))


def test_comments_do_not_reach_the_engine() -> None:
    resolved = resolve_row_filter(parse_row_filter("owner = {user_id} /* {org_id} */ -- note"), {"user_id": "a"})
    assert "/*" not in resolved.sql(dialect="duckdb")


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_a_hostile_value_only_ever_matches_a_row_holding_exactly_that_string(
    db: duckdb.DuckDBPyConnection, value: str
) -> None:
    parsed = parse_row_filter("owner = {user_id}")
    matched = _matching_ids(db, resolve_row_filter(parsed, {"user_id": value}))
    assert matched == {HOSTILE_VALUES.index(value)}


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_hostile_values_stay_values_inside_in_lists_and_concatenations(
    db: duckdb.DuckDBPyConnection, value: str
) -> None:
    parsed = parse_row_filter("owner IN ({user_id}, 'nobody') AND region = {region} || ''")
    matched = _matching_ids(db, resolve_row_filter(parsed, {"user_id": value, "region": "eu"}))
    assert matched == {HOSTILE_VALUES.index(value)}


def test_a_session_without_the_value_sees_no_rows(db: duckdb.DuckDBPyConnection) -> None:
    parsed = parse_row_filter("owner = {agent_id}")
    assert _matching_ids(db, resolve_row_filter(parsed, {"agent_id": None})) == set()
    assert _matching_ids(db, resolve_row_filter(parsed, {})) == set()  # absent counts as None


def test_a_missing_value_does_not_match_null_cells_either(db: duckdb.DuckDBPyConnection) -> None:
    parsed = parse_row_filter("owner = {agent_id} OR owner <> {agent_id}")
    assert _matching_ids(db, resolve_row_filter(parsed, {"agent_id": None})) == set()


def test_resolved_filter_combines_columns_and_placeholders(db: duckdb.DuckDBPyConnection) -> None:
    parsed = parse_row_filter("region = {region} AND (owner = {user_id} OR is_public)")
    assert _matching_ids(db, resolve_row_filter(parsed, {"region": "eu", "user_id": "nobody"})) == {1000}
    assert _matching_ids(db, resolve_row_filter(parsed, {"region": "us", "user_id": "bob"})) == {1001}
