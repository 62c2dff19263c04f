"""Comparing one statement's two results: exact, semantic, mismatch or error, in bounded memory."""

from __future__ import annotations

import datetime as dt
import tracemalloc
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import pytest

from hd_core.shadow.compare import (
    CompareOptions,
    Ordering,
    ResultColumns,
    SideError,
    SideResult,
    compare_results,
    digest_result,
    result_order,
)

INT4, INT8, NUMERIC, FLOAT8, TEXT, VARCHAR, BPCHAR = 23, 20, 1700, 701, 25, 1043, 1042
TIMESTAMP, TIMESTAMPTZ, DATE, JSONB = 1114, 1184, 1082, 3802


def side(names: str, oids: Sequence[int], rows: Sequence[tuple[Any, ...]], batch: int = 2) -> SideResult:
    """A result delivered in small batches, as a driver's fetchmany would."""
    return SideResult(ResultColumns(tuple(names.split(",")), tuple(oids)),
                      [list(rows[i:i + batch]) for i in range(0, len(rows), batch)])


CUSTOMERS = [(1, "alice@example.com", Decimal("10.50")), (2, "bob@example.com", Decimal("7.00")),
             (3, None, Decimal("0.25")), (4, "dan@example.com", Decimal("99.99"))]
COLS = "id,email,balance"
OIDS = (INT4, TEXT, NUMERIC)


# --- exact ---------------------------------------------------------------------------------------


def test_same_rows_in_another_order_are_exact_when_the_statement_has_no_order_by():
    verdict = compare_results("SELECT id, email, balance FROM customers",
                              side(COLS, OIDS, CUSTOMERS), side(COLS, OIDS, CUSTOMERS[::-1]))
    assert (verdict.verdict, verdict.reference_rows, verdict.engine_rows, verdict.ordered) == ("exact", 4, 4, False)


def test_same_rows_in_the_same_order_are_exact_under_order_by_and_another_order_is_a_mismatch():
    sql = "SELECT id, email, balance FROM customers ORDER BY id"
    assert compare_results(sql, side(COLS, OIDS, CUSTOMERS), side(COLS, OIDS, CUSTOMERS)).verdict == "exact"
    swapped = [CUSTOMERS[1], CUSTOMERS[0], *CUSTOMERS[2:]]
    verdict = compare_results(sql, side(COLS, OIDS, CUSTOMERS), side(COLS, OIDS, swapped))
    assert verdict.verdict == "mismatch" and verdict.ordered
    assert "the same rows in a different order" in verdict.notes


def test_rows_that_tie_on_the_sort_key_may_come_in_any_order():
    rows = [(1, "a"), (1, "b"), (2, "c"), (2, "d"), (3, "e")]
    tied = [(1, "b"), (1, "a"), (2, "d"), (2, "c"), (3, "e")]
    sql = "SELECT g, name FROM t ORDER BY g"
    assert compare_results(sql, side("g,name", (INT4, TEXT), rows), side("g,name", (INT4, TEXT), tied)).verdict \
        == "exact"
    crossing = [(1, "a"), (2, "c"), (1, "b"), (2, "d"), (3, "e")]  # a row moved across a key boundary
    assert compare_results(sql, side("g,name", (INT4, TEXT), rows),
                           side("g,name", (INT4, TEXT), crossing)).verdict == "mismatch"


# --- semantic -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("reference", "engine"), [
    ((INT4, [(5,), (6,)]), (NUMERIC, [(Decimal("5.00"),), (Decimal("6"),)])),  # integer vs numeric
    ((INT8, [(5,), (6,)]), (FLOAT8, [(5.0,), (6.0,)])),  # integer vs float
    ((NUMERIC, [(Decimal("1.10"),), (Decimal("2.500"),)]), (NUMERIC, [(Decimal("1.1"),), (Decimal("2.5"),)])),
    ((NUMERIC, [(Decimal("0.1"),), (Decimal("NaN"),)]), (FLOAT8, [(0.1,), (float("nan"),)])),
    ((FLOAT8, [(0.0,), (1.5,)]), (FLOAT8, [(-0.0,), (1.5,)])),  # ±0.0
    ((VARCHAR, [("a",), ("b",)]), (TEXT, [("a",), ("b",)])),
    ((BPCHAR, [("ab  ",), ("c   ",)]), (TEXT, [("ab",), ("c",)])),
    ((TIMESTAMPTZ, [(dt.datetime(2024, 3, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),)]),
     (TIMESTAMP, [(dt.datetime(2024, 3, 1, 12, 0),)])),  # the same instant, read in UTC
    ((JSONB, [({"b": 1, "a": [1, 2]},)]), (114, [('{"a": [1, 2], "b": 1}',)])),  # jsonb vs json
    ((NUMERIC, [(Decimal("25.5220058532573370"),)]), (FLOAT8, [(25.522005853257337,)])),  # avg() on each side
    ((FLOAT8, [(0.1 + 0.2,)]), (NUMERIC, [(Decimal("0.3"),)])),  # float noise far below the tolerance
])
def test_equal_values_of_equivalent_types_are_semantic(reference, engine):
    sql = "SELECT v FROM t"
    verdict = compare_results(sql, side("v", (reference[0],), reference[1]), side("v", (engine[0],), engine[1]))
    assert verdict.verdict == "semantic", verdict


def test_a_different_column_name_alone_makes_it_semantic_not_exact():
    verdict = compare_results("SELECT sum(x) FROM t", side("sum", (INT8,), [(3,)]),
                              side("sum(x)", (INT8,), [(3,)]))
    assert verdict.verdict == "semantic" and "column names differ" in verdict.notes


def test_the_tolerance_is_relative_and_configurable():
    reference, engine = side("v", (NUMERIC,), [(Decimal("1.1"),)]), side("v", (FLOAT8,), [(1.1001,)])
    assert compare_results("SELECT v FROM t", reference, engine).verdict == "mismatch"
    loose = CompareOptions(rel_tol=1e-3)
    assert compare_results("SELECT v FROM t", side("v", (NUMERIC,), [(Decimal("1.1"),)]),
                           side("v", (FLOAT8,), [(1.1001,)]), options=loose).verdict == "semantic"
    exact_only = CompareOptions(rel_tol=0)
    assert compare_results("SELECT v FROM t", side("v", (FLOAT8,), [(0.1 + 0.2,)]),
                           side("v", (NUMERIC,), [(Decimal("0.3"),)]), options=exact_only).verdict == "mismatch"


def test_integers_are_never_compared_within_tolerance():
    big = 10**15
    verdict = compare_results("SELECT id FROM t", side("id", (INT8,), [(big,)]), side("id", (INT8,), [(big + 1,)]))
    assert verdict.verdict == "mismatch"
    # An integral numeric (a count, a sum of integers) is exact too, even when it is huge.
    verdict = compare_results("SELECT s FROM t", side("s", (NUMERIC,), [(Decimal(big),)]),
                              side("s", (NUMERIC,), [(Decimal(big + 1),)]))
    assert verdict.verdict == "mismatch"


# Within 1e-9 of each other, but on both sides of an 11-digit rounding boundary.
STRADDLE = (Decimal("1.000000000049999"), 1.000000000050001)


def test_values_within_tolerance_across_a_rounding_boundary_are_semantic_when_the_sample_holds_the_result():
    verdict = compare_results("SELECT v FROM t", side("v", (NUMERIC,), [(STRADDLE[0],)]),
                              side("v", (FLOAT8,), [(STRADDLE[1],)]))
    assert verdict.verdict == "semantic"


def test_across_a_rounding_boundary_beyond_the_sample_the_rule_reports_a_mismatch_never_a_false_match():
    options = CompareOptions(sample_rows=10)
    rows = [(i, Decimal(i)) for i in range(50)]
    reference = side("id,v", (INT4, NUMERIC), [*rows, (50, STRADDLE[0])])
    engine = side("id,v", (INT4, FLOAT8), [*rows, (50, STRADDLE[1])])
    verdict = compare_results("SELECT id, v FROM t", reference, engine, options=options)
    assert verdict.verdict == "mismatch"
    assert any("exceed the 10-row sample" in note for note in verdict.notes)


# --- mismatch -------------------------------------------------------------------------------------


def test_a_changed_row_is_a_mismatch_showing_both_versions_redacted():
    changed = [*CUSTOMERS[:2], (3, None, Decimal("0.26")), CUSTOMERS[3]]
    verdict = compare_results("SELECT id, email, balance FROM customers",
                              side(COLS, OIDS, CUSTOMERS), side(COLS, OIDS, changed))
    assert (verdict.verdict, verdict.reference_rows, verdict.engine_rows) == ("mismatch", 4, 4)
    assert verdict.reference_only == ({"id": "<int>", "email": None, "balance": "<Decimal>"},)
    assert verdict.engine_only == ({"id": "<int>", "email": None, "balance": "<Decimal>"},)


def test_differing_rows_pass_through_the_callers_redaction():
    def mask(column: str, value: Any) -> Any:
        return value if column == "id" else "***"

    changed = [*CUSTOMERS[:3], (4, "eve@example.com", Decimal("99.99"))]
    verdict = compare_results("SELECT * FROM customers", side(COLS, OIDS, CUSTOMERS), side(COLS, OIDS, changed),
                              redact=mask)
    assert verdict.reference_only == ({"id": 4, "email": "***", "balance": "***"},)
    assert verdict.engine_only == ({"id": 4, "email": "***", "balance": "***"},)
    assert "example.com" not in repr(verdict.to_dict())


def test_a_missing_row_is_a_mismatch_with_both_row_counts():
    verdict = compare_results("SELECT * FROM customers", side(COLS, OIDS, CUSTOMERS), side(COLS, OIDS, CUSTOMERS[:3]))
    assert (verdict.verdict, verdict.reference_rows, verdict.engine_rows) == ("mismatch", 4, 3)
    assert "row counts differ: 4 vs 3" in verdict.notes
    assert len(verdict.reference_only) == 1 and verdict.engine_only == ()


def test_an_ordered_mismatch_shows_the_first_differing_rows_up_to_the_limit():
    rows = [(i, f"n{i}") for i in range(100)]
    changed = [(i, f"n{i}" if i % 10 else "other") for i in range(100)]
    options = CompareOptions(max_report_rows=3)
    verdict = compare_results("SELECT id, name FROM t ORDER BY id", side("id,name", (INT4, TEXT), rows),
                              side("id,name", (INT4, TEXT), changed), options=options,
                              redact=lambda column, value: value)
    assert [row["id"] for row in verdict.reference_only] == [0, 10, 20]
    assert [row["name"] for row in verdict.engine_only] == ["other"] * 3


@pytest.mark.parametrize(("reference", "engine", "note"), [
    (side("a,b", (INT4, INT4), [(1, 2)]), side("a", (INT4,), [(1,)]), "column count differs"),
    (side("a", (TEXT,), [("1",)]), side("a", (INT4,), [(1,)]), "column types differ in kind: a"),
    (side("a", (DATE,), [(dt.date(2024, 1, 1),)]), side("a", (TIMESTAMP,), [(dt.datetime(2024, 1, 1),)]),
     "column types differ in kind: a"),
])
def test_results_of_another_shape_are_a_mismatch(reference, engine, note):
    verdict = compare_results("SELECT a FROM t", reference, engine)
    assert verdict.verdict == "mismatch" and any(n.startswith(note) for n in verdict.notes)


# --- error ------------------------------------------------------------------------------------------


def test_an_error_on_one_side_names_the_side_and_its_sqlstate_with_the_values_it_quotes_redacted():
    failure = SideError("22P02", 'invalid input syntax for type integer: "alice@example.com"')
    verdict = compare_results("SELECT email::int FROM customers", side(COLS, OIDS, CUSTOMERS), failure)
    assert verdict.verdict == "error"
    assert [(e.side, e.sqlstate) for e in verdict.errors] == [("engine", "22P02")]
    assert "alice" not in verdict.errors[0].message and "invalid input syntax" in verdict.errors[0].message
    assert (verdict.reference_rows, verdict.engine_rows) == (4, None)


def test_errors_on_both_sides_are_both_reported():
    verdict = compare_results("SELECT 1/0", SideError("22012", "division by zero"),
                              SideError("22012", "Division by zero!"))
    assert verdict.verdict == "error" and [e.side for e in verdict.errors] == ["reference", "engine"]


# --- ordering from the statement's tree ---------------------------------------------------------------


@pytest.mark.parametrize(("sql", "names", "expected"), [
    ("SELECT a, b FROM t", ["a", "b"], Ordering(False)),
    ("SELECT count(*) FROM (SELECT a FROM t ORDER BY a) s", ["count"], Ordering(False)),
    ("SELECT a, b FROM t ORDER BY b, a", ["a", "b"], Ordering(True, (1, 0))),
    ("SELECT a AS x, b + 1 FROM t ORDER BY x DESC, b + 1, 1", ["x", "?column?"], Ordering(True, (0, 1, 0))),
    ("WITH w AS (SELECT 1 AS a) SELECT a FROM w ORDER BY a", ["a"], Ordering(True, (0,))),
    ("SELECT a FROM t UNION SELECT b FROM u ORDER BY 1", ["a"], Ordering(True, (0,))),
    ("SELECT * FROM t ORDER BY b", ["a", "b"], Ordering(True, (1,))),
    ("SELECT a FROM t ORDER BY c", ["a"], Ordering(True, None)),  # the key is not in the output
    ("(SELECT a FROM t ORDER BY a)", ["a"], Ordering(True, (0,))),
])
def test_the_order_is_read_from_the_top_level_order_by(sql, names, expected):
    assert result_order(sql, names) == expected


# --- bounded memory ---------------------------------------------------------------------------------


def _generated(rows: int, changed_at: int | None = None, batch: int = 10_000) -> Iterator[list[tuple[int, str]]]:
    for start in range(0, rows, batch):
        yield [(i, "changed" if i == changed_at else f"customer-{i}") for i in range(start, min(rows, start + batch))]


def _fresh_batches(batches: int, changed_batch: int | None = None) -> Iterator[list[tuple[int, str]]]:
    """`batches` x 10,000 rows, each a new object (a digest that kept them would hold ~150 bytes a row)."""
    for number in range(batches):
        rows = [(number * 10_000 + i, f"customer-{i}") for i in range(10_000)]
        if number == changed_batch:
            rows[1234] = (rows[1234][0], "changed")
        yield rows


@pytest.mark.slow  # 300k rows through the digest: CI runs it (`pytest -m slow`)
def test_a_large_result_is_compared_in_bounded_memory():
    rows = 300_000  # ~45 MB if held; the digests keep two batches and the bounded samples
    columns = ResultColumns(("id", "name"), (INT8, TEXT))
    tracemalloc.start()
    try:
        verdict = compare_results("SELECT id, name FROM t", SideResult(columns, _fresh_batches(rows // 10_000)),
                                  SideResult(columns, _fresh_batches(rows // 10_000, changed_batch=23)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (verdict.verdict, verdict.reference_rows, verdict.engine_rows) == ("mismatch", rows, rows)
    assert "the differing rows are outside the bounded samples" in verdict.notes  # 1 row in 300k: not sampled
    assert peak < 16 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def test_rows_on_one_side_only_are_found_through_the_hash_samples_of_a_result_larger_than_the_head():
    options = CompareOptions(sample_rows=100, hash_sample_rows=200, max_report_rows=5)
    rows = [(i, f"customer-{i}") for i in range(20_000)]
    changed = [(i, "changed" if i % 10 == 0 else name) for i, name in rows]
    verdict = compare_results("SELECT id, name FROM t", side("id,name", (INT8, TEXT), rows, batch=1000),
                              side("id,name", (INT8, TEXT), changed[::-1], batch=1000), options=options,
                              redact=lambda column, value: value)
    assert verdict.verdict == "mismatch" and len(verdict.reference_only) == len(verdict.engine_only) == 5
    assert all(row["id"] % 10 == 0 and row["name"] != "changed" for row in verdict.reference_only)
    assert all(row["name"] == "changed" for row in verdict.engine_only)


def test_a_digest_keeps_bounded_samples_whatever_the_result_size():
    options = CompareOptions(sample_rows=50, hash_sample_rows=20)
    columns = ResultColumns(("id", "name"), (INT8, TEXT))
    digest = digest_result(SideResult(columns, _generated(30_000, batch=1000)), options=options)
    assert digest.row_count == 30_000 and not digest.complete
    assert len(digest.head) == 50 and len(digest.hash_sample) == 20
    assert [h for h, _ in digest.hash_sample] == sorted(h for h, _ in digest.hash_sample)
