"""The function allow list: reviewed against the installed DuckDB, dangerous names out, everyday names in."""

from __future__ import annotations

import duckdb
import pytest

from hd_core.sql_functions import (
    ALLOWED_FUNCTIONS,
    ALLOWED_TABLE_FUNCTIONS,
    POLICY_EXPRESSION_FUNCTIONS,
    REFUSED,
    SYNTAX_FORMS,
    function_category,
    installed_function_names,
    is_allowed_function,
    main,
    unreviewed,
)

INSTALLED = installed_function_names()

# One statement per syntax form, proving DuckDB accepts it although duckdb_functions() has no row for it.
SYNTAX_FORM_EXAMPLES = {
    "cast": "SELECT CAST(1 AS VARCHAR)",
    "try_cast": "SELECT TRY_CAST('x' AS INTEGER)",
    "coalesce": "SELECT coalesce(NULL, 1)",
    "ifnull": "SELECT ifnull(NULL, 1)",
    "collate": "SELECT 'a' COLLATE noaccent",
    "extract": "SELECT extract(year FROM DATE '2024-01-02')",
    "current_time": "SELECT current_time",
    "current_timestamp": "SELECT current_timestamp",
    "localtime": "SELECT localtime",
    "localtimestamp": "SELECT localtimestamp",
    "grouping": "SELECT grouping(x) FROM (SELECT 1 AS x) GROUP BY x",
    "grouping_id": "SELECT grouping_id(x) FROM (SELECT 1 AS x) GROUP BY x",
}

DANGEROUS = [
    "json_serialize_plan",
    "json_serialize_sql",
    "json_deserialize_sql",
    "json_execute_serialized_sql",
    "query",
    "query_table",
    "read_csv",
    "read_parquet",
    "read_text",
    "read_blob",
    "glob",
    "getenv",
    "getvariable",
    "current_setting",
    "current_query",
    "duckdb_tables",
    "duckdb_settings",
    "sniff_csv",
    "parquet_metadata",
    "which_secret",
    "checkpoint",
    "force_checkpoint",
    "error",
    "nextval",
    "currval",
    "list_aggregate",
    "current_database",
    "version",
    "current_user",
    "stats",
    "sleep_ms",
    "write_log",
]

EVERYDAY = [
    "upper",
    "lower",
    "substr",
    "substring",
    "length",
    "len",
    "concat",
    "coalesce",
    "round",
    "abs",
    "date_trunc",
    "strftime",
    "regexp_matches",
    "list_sort",
    "struct_extract",
    "json_extract_string",
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "string_agg",
    "row_number",
    "rank",
    "lag",
    "lead",
    "md5",
    "sha256",
]


def test_every_duckdb_function_name_is_reviewed() -> None:
    new = unreviewed(INSTALLED)
    assert not new, (
        f"DuckDB has {len(new)} function name(s) nobody reviewed; add each to a category in "
        f"hd_core/sql_functions.py or to REFUSED with its reason: {', '.join(new)}"
    )


def test_unreviewed_reports_only_new_names() -> None:
    assert unreviewed(["UPPER", "read_csv", "frobnicate_files"]) == ["frobnicate_files"]


def test_every_allowed_name_exists_in_duckdb_or_is_syntax() -> None:
    allowed = ALLOWED_FUNCTIONS | ALLOWED_TABLE_FUNCTIONS
    assert sorted(allowed - INSTALLED - SYNTAX_FORMS) == []


def test_syntax_forms_are_allowed_and_have_no_catalog_row() -> None:
    assert SYNTAX_FORMS <= ALLOWED_FUNCTIONS
    assert not SYNTAX_FORMS & INSTALLED
    assert set(SYNTAX_FORM_EXAMPLES) == SYNTAX_FORMS


@pytest.mark.parametrize(("name", "statement"), sorted(SYNTAX_FORM_EXAMPLES.items()))
def test_duckdb_parses_each_syntax_form(name: str, statement: str) -> None:
    with duckdb.connect() as connection:
        assert connection.execute(statement).fetchall()


def test_nothing_is_both_allowed_and_refused() -> None:
    assert not (ALLOWED_FUNCTIONS | ALLOWED_TABLE_FUNCTIONS) & REFUSED


def test_names_are_lower_case() -> None:
    everything = ALLOWED_FUNCTIONS | ALLOWED_TABLE_FUNCTIONS | REFUSED
    assert sorted(name for name in everything if name != name.lower()) == []


@pytest.mark.parametrize("name", DANGEROUS)
def test_dangerous_functions_are_refused(name: str) -> None:
    assert name in REFUSED
    assert not is_allowed_function(name)
    assert function_category(name) is None


@pytest.mark.parametrize("name", EVERYDAY)
def test_everyday_functions_are_allowed(name: str) -> None:
    assert is_allowed_function(name)
    assert is_allowed_function(name.upper())


def test_table_functions_are_exactly_the_row_generators() -> None:
    assert ALLOWED_TABLE_FUNCTIONS == {"range", "generate_series", "unnest"}


def test_an_unknown_name_is_refused_like_a_future_duckdb_function() -> None:
    assert not is_allowed_function("read_everything")
    assert function_category("read_everything") is None


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("Upper", "string"),
        ("abs", "math"),
        ("now", "clock"),
        ("count", "aggregate"),
        ("row_number", "window"),
        ("json_extract", "json"),
        ("list_transform", "list_lambda"),
        ("range", "generator"),
        ("||", "operator"),
    ],
)
def test_function_category_names_the_reviewed_category(name: str, category: str) -> None:
    assert function_category(name) == category


def test_aliases_are_listed_alongside_their_functions() -> None:
    assert {"len", "length", "list_value", "list_pack", "substr", "substring", "ucase", "upper"} <= ALLOWED_FUNCTIONS


def test_policy_functions_are_a_strict_subset_of_the_allowed_ones() -> None:
    assert POLICY_EXPRESSION_FUNCTIONS < ALLOWED_FUNCTIONS


@pytest.mark.parametrize(
    "name",
    [
        "range",
        "generate_series",
        "unnest",
        "repeat",
        "lpad",
        "printf",
        "list_resize",
        "random",
        "uuid",
        "now",
        "current_date",
        "current_timestamp",
        "age",
        "count",
        "sum",
        "json_group_array",
        "weighted_avg",
        "row_number",
        "list_transform",
        "list_filter",
    ],
)
def test_policy_expressions_exclude_aggregates_clock_randomness_generators_and_lambdas(name: str) -> None:
    assert is_allowed_function(name)
    assert name not in POLICY_EXPRESSION_FUNCTIONS


def test_policy_expressions_keep_the_usual_value_functions() -> None:
    assert {"lower", "upper", "coalesce", "substring", "date_trunc", "cast", "regexp_matches"} <= (
        POLICY_EXPRESSION_FUNCTIONS
    )


def test_review_command_passes_on_the_installed_duckdb(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--review"]) == 0
    assert "are reviewed" in capsys.readouterr().out
