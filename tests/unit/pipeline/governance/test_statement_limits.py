"""Statement limits: size and nesting are refused (54001) before sqlglot parses, never a RecursionError."""

from __future__ import annotations

import logging
import threading

import pytest
import sqlglot

from engine_host.pipeline.errors import QueryError, unexpected_failure
from engine_host.pipeline.governance.guard import (
    MAX_NESTING_DEPTH,
    MAX_STATEMENT_CHARS,
    nesting_depth,
    parse_statement,
)
from tests.unit.pipeline.governance.conftest import governed_sql

D = MAX_NESTING_DEPTH


def _depth(sql: str, dialect: str = "postgres") -> int:
    return nesting_depth(sqlglot.Dialect.get_or_raise(dialect).tokenize(sql))


def _too_complex(sql: str, dialect: str = "postgres") -> QueryError:
    with pytest.raises(QueryError) as caught:
        parse_statement(sql, dialect)
    assert (caught.value.sqlstate, caught.value.code) == ("54001", "HD_ERR_STATEMENT_TOO_COMPLEX")
    assert caught.value.hint and "split" in caught.value.hint
    return caught.value


@pytest.mark.parametrize(
    ("sql", "depth"),
    [
        ("SELECT 1", 0),
        ("SELECT (1)", 1),
        ("SELECT f((1), (2)), ((3))", 2),
        ("SELECT [1, [2, {'a': (3)}]]", 4),
        ("SELECT CASE WHEN a THEN CASE WHEN b THEN (1) END END", 3),
        ("SELECT a[1][2][3] FROM t", 3),
        ("SELECT a[1] + b[2] FROM t", 1),
        ("SELECT a[b[1][2]][3] FROM t", 3),
        ("SELECT '((((' || \"(((\" /* (((( */ -- ((((\n", 0),
        ("SELECT $$((((( $$, $tag$ (((( $tag$", 0),
        ("SELECT E'\\'(((('", 0),
        ("SELECT 1)))) + ((1", 2),
    ],
)
def test_nesting_is_counted_outside_strings_identifiers_and_comments(sql: str, depth: int) -> None:
    assert _depth(sql) == depth


def test_dialect_quoting_is_respected() -> None:
    assert _depth("SELECT `((((`, '((((' FROM t", "bigquery") == 0
    assert _depth("SELECT '\\'((((' FROM t", "snowflake") == 0


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT " + "(" * (D + 1) + "1" + ")" * (D + 1),
        "SELECT " + "(" * 3000 + "1" + ")" * 3000,
        "SELECT " + "(" * 100_000,  # unbalanced: refused for depth, not sent to the parser
        "SELECT " + "CASE WHEN a THEN " * (D + 1) + "1" + " END" * (D + 1),
        "SELECT a" + "[1]" * 5000 + " FROM t",  # sqlglot re-types the chain per subscript: minutes to parse
        "SELECT * FROM " + "(SELECT * FROM " * (D + 1) + "t" + ") s" * (D + 1),
        "EXPLAIN SELECT " + "(" * 3000 + "1" + ")" * 3000,
    ],
)
def test_nesting_beyond_the_limit_is_refused_before_parsing(sql: str) -> None:
    error = _too_complex(sql)
    assert f"limit of {D} levels" in error.message


def test_nesting_at_the_limit_goes_through_every_governance_stage() -> None:
    """The limit leaves headroom: the rewrite and transpile recurse over the tree too."""
    for sql in ("SELECT " + "(" * D + "1" + ")" * D,
                "SELECT * FROM " + "(SELECT * FROM " * (D - 1) + "crm.customers" + ") AS s" * (D - 1),
                "SELECT " + "CASE WHEN score > 1 THEN " * D + "email" + " END" * D + " FROM crm.customers",
                "SELECT " + "lower(" * (D - 1) + "email" + ")" * (D - 1) + " FROM crm.customers"):
        assert governed_sql(sql)


def test_nesting_inside_literals_and_comments_is_not_counted() -> None:
    deep = "(" * 3000
    parsed = parse_statement(f"SELECT '{deep}' AS a, \"{deep}\" /* {deep} */ -- {deep}\n")
    assert parsed.tree.sql()


def test_a_statement_over_the_size_limit_is_refused_unparsed() -> None:
    error = _too_complex("SELECT 1 " + " " * MAX_STATEMENT_CHARS)
    assert f"limit of {MAX_STATEMENT_CHARS} characters" in error.message
    parse_statement("SELECT 1" + " " * (MAX_STATEMENT_CHARS - 8))


def test_nesting_the_count_misses_is_still_a_54001_refusal() -> None:
    _too_complex("SELECT " + "NOT " * 5000 + "true")
    _too_complex("SELECT " + "- " * 5000 + "1")


def test_refusals_are_logged_on_one_line_without_the_statement(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        _too_complex("SELECT 'SECRETzz', " + "(" * 3000 + "1" + ")" * 3000)
    assert len(caplog.records) == 1
    assert caplog.records[0].exc_info is None and "SECRETzz" not in caplog.text


def test_parsing_in_a_worker_thread_is_refused_the_same_way() -> None:
    """The engine parses on its worker pool; a thread has the same recursion limit, never a crash."""
    outcome: list[str] = []

    def work() -> None:
        for sql in ("SELECT " + "(" * 3000 + "1" + ")" * 3000, "SELECT " + "NOT " * 5000 + "true"):
            try:
                parse_statement(sql)
            except QueryError as exc:
                outcome.append(exc.sqlstate)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert outcome == ["54001", "54001"]


def test_a_recursion_error_later_on_is_a_54001_refusal(caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise RecursionError("maximum recursion depth exceeded")
    except RecursionError as exc:
        with caplog.at_level(logging.DEBUG):
            error = unexpected_failure(exc, "q_ref1")
    assert (error.sqlstate, error.code) == ("54001", "HD_ERR_STATEMENT_TOO_COMPLEX")
    assert len(caplog.records) == 1 and "q_ref1" in caplog.text and caplog.records[0].exc_info is None


def test_any_other_unexpected_exception_is_an_internal_error_with_a_reference(
        caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise KeyError("SECRETzz")
    except KeyError as exc:
        with caplog.at_level(logging.INFO):
            error = unexpected_failure(exc, "q_ref2")
    assert (error.sqlstate, error.code, error.message) == ("XX000", "HD_ERR_INTERNAL",
                                                           "internal error (reference q_ref2)")
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.levelno == logging.ERROR and record.exc_info is None
    assert "KeyError" in record.getMessage() and "q_ref2" in record.getMessage()
    assert "test_statement_limits.py:" in record.getMessage()
    assert "SECRETzz" not in caplog.text
