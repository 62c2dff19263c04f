"""Row filters: what a filter may say, and that session values reach DuckDB only as escaped literals."""

from __future__ import annotations

import re
from collections.abc import Iterator

import duckdb
import pytest
from sqlglot import exp

from hd_core.errors import PolicyInvalid, RowFilterInvalid
from hd_core.row_filters import (
    MAX_ROW_FILTER_DEPTH,
    MAX_ROW_FILTER_LENGTH,
    ParsedRowFilter,
    parse_row_filter,
    placeholders,
    referenced_columns,
    resolve_row_filter,
)
from hd_core.sql_functions import ALLOWED_FUNCTIONS, POLICY_EXPRESSION_FUNCTIONS, REFUSED

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
        "region = {region} AND upper(department) = upper({department})",
        "lower(email) LIKE '%@acme.com'",
        "org_id = {org_id} OR coalesce(owner_id, '') = {user_id}",
        "CASE WHEN is_public THEN TRUE ELSE owner = {user_id} END",
        "date_trunc('month', created_at) = DATE '2024-01-01'",
        "extract(year FROM created_at) >= 2024",
        "amount::numeric(10, 2) > 5",
        "char_length(owner) > 3",
        "substring(owner FROM 1 FOR 2) = 'ab'",
        "data->>'region' = {region}",
        "owner = ANY(ARRAY['a', 'b'])",
        "md5(owner) <> ''",
        "owner ~ '^a' AND owner IS DISTINCT FROM {user_id}",
        "owner IN ('user', 'current_date', 'read_csv(''x'')')",  # function names inside strings are values
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


# --- functions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "function"),
    [
        ("read_csv('x')", "read_csv"),
        ("json_serialize_plan('select 1')", "json_serialize_plan"),
        ("len(range(100000000)) > 0", "range"),
        ("getenv('HOME') = 'x'", "getenv"),
        ("current_setting('x') = 'y'", "current_setting"),
        ("query('select 1') is not null", "query"),
        ("\"READ_TEXT\"('/etc/passwd') IS NOT NULL", "read_text"),
        ("generate_series(1, 3) IS NOT NULL", "unnest"),
        ("repeat(owner, 100000000) = 'x'", "repeat"),
        ("random() < 0.5", "random"),
        ("created_at > now() - INTERVAL '1 day'", "current_timestamp"),
        ("created_at::date = current_date", "current_date"),
        ("owner = current_user", "current_user"),
        ("sleep_ms(1000) IS NULL", "sleep_ms"),
        ("error('x') IS NULL", "error"),
        ("txid_current() > 0", "txid_current"),
        ("frobnicate(owner)", "frobnicate"),
    ],
)
def test_a_function_outside_the_policy_list_is_refused_by_name(text: str, function: str) -> None:
    with pytest.raises(RowFilterInvalid, match=rf"function {function}\(\) is not allowed in a row filter") as caught:
        parse_row_filter(text)
    assert "deterministic value functions" in str(caught.value)


def test_functions_are_checked_as_duckdb_will_call_them_not_as_written() -> None:
    # sqlglot writes Postgres' current_date(tz) as CAST(CURRENT_TIMESTAMP AT TIME ZONE tz AS DATE):
    # the written name is harmless-looking, the call DuckDB makes reads the clock.
    with pytest.raises(RowFilterInvalid, match=r"function current_timestamp\(\)"):
        parse_row_filter("current_date('UTC') = created_at")


def test_quoted_bare_function_names_are_refused_because_duckdb_calls_them(db: duckdb.DuckDBPyConnection) -> None:
    # With no column of that name, DuckDB binds a quoted "user" to the function: engine state, not data.
    assert db.execute('SELECT DISTINCT "user" FROM t').fetchall() == [("duckdb",)]
    with pytest.raises(RowFilterInvalid, match=r"function user\(\)"):
        parse_row_filter('"user" = {user_id}')


@pytest.mark.parametrize(
    "text",
    ["main.read_csv('x') IS NOT NULL", "pg_catalog.lower(owner) = 'x'", "owner.upper() = 'X'"],
)
def test_qualified_and_method_style_calls_are_refused(text: str) -> None:
    with pytest.raises(RowFilterInvalid, match="unqualified"):
        parse_row_filter(text)


def test_lambdas_are_refused() -> None:
    with pytest.raises(RowFilterInvalid, match="lambdas"):
        parse_row_filter("list_has_any(tags, list_filter(tags, x -> x = {user_id}))")


_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
# Postgres reads uuid(x) as a cast to UUID, which calls no function.
_CASTS_IN_POSTGRES = {"uuid"}


@pytest.mark.parametrize(
    "name",
    sorted(
        name
        for name in (REFUSED | ALLOWED_FUNCTIONS) - POLICY_EXPRESSION_FUNCTIONS - _CASTS_IN_POSTGRES
        if _IDENTIFIER.fullmatch(name)
    ),
)
def test_no_function_outside_the_policy_list_gets_into_a_filter(name: str) -> None:
    with pytest.raises(RowFilterInvalid):
        parse_row_filter(f"{name}(owner) IS NULL")


@pytest.mark.parametrize("name", sorted(name for name in POLICY_EXPRESSION_FUNCTIONS if _IDENTIFIER.fullmatch(name)))
def test_no_policy_function_is_refused_by_name(name: str) -> None:
    try:
        parse_row_filter(f"{name}(owner) IS NULL")
    except RowFilterInvalid as error:  # wrong arity or syntax may still refuse it, for another reason
        assert "not allowed" not in str(error)


# --- size ---------------------------------------------------------------------------------------


def test_a_filter_at_the_length_limit_is_accepted_and_one_longer_is_refused() -> None:
    at_limit = "owner = '" + "x" * (MAX_ROW_FILTER_LENGTH - len("owner = ''")) + "'"
    assert len(at_limit) == MAX_ROW_FILTER_LENGTH
    parse_row_filter(at_limit)
    with pytest.raises(RowFilterInvalid, match=f"{MAX_ROW_FILTER_LENGTH + 1} characters long; the limit is 4096"):
        parse_row_filter(at_limit + " ")


def _parenthesised(levels: int) -> str:
    # EQ, then `levels` Parens, then Column and its Identifier: levels + 3 nodes deep.
    return "(" * levels + "owner" + ")" * levels + " = 'x'"


def test_nesting_up_to_the_limit_is_accepted_and_one_level_more_is_refused() -> None:
    parse_row_filter(_parenthesised(MAX_ROW_FILTER_DEPTH - 3))
    with pytest.raises(RowFilterInvalid, match="nested more than 32 levels"):
        parse_row_filter(_parenthesised(MAX_ROW_FILTER_DEPTH - 2))


@pytest.mark.parametrize(
    "text",
    [
        "(" * 40 + "owner" + ")" * 40 + " = 'x'",
        "(" * 1500 + "owner" + ")" * 1500 + " = 'x'",  # deep enough to exhaust the parser's recursion
        "NOT " * 1000 + "is_public",
        "amount" + " + 1" * 1000 + " > 0",
        " OR ".join(f"owner = 'u{index}'" for index in range(40)),
    ],
    ids=["parentheses", "recursion", "not-chain", "arithmetic-chain", "or-chain"],
)
def test_deeply_nested_filters_are_refused(text: str) -> None:
    assert len(text) <= MAX_ROW_FILTER_LENGTH
    with pytest.raises(RowFilterInvalid, match="nested more than 32 levels"):
        parse_row_filter(text)


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
