"""What a runner hands back (one normalised shape for every client) and how two of them are compared."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from tests.e2e.client_matrix.cases import Case, Expect


@dataclass(frozen=True)
class Result:
    """One statement's answer: column names, type identities, rows of Python values, or an SQLSTATE.

    `types` holds PostgreSQL type OIDs from the RowDescription (pandas dtype names for the frame runner,
    None where a client does not expose them: psql prints text, asyncpg's fetch() returns bare records).
    """

    columns: tuple[str, ...] = ()
    types: tuple[object, ...] | None = None
    rows: tuple[tuple[Any, ...], ...] = ()
    sqlstate: str | None = None
    message: str = ""
    position: int | None = None  # an error's P field: where in the statement it happened, 1-based


@dataclass(frozen=True)
class Outcome:
    """A case's run on one side: each setup step's SQLSTATE (None when it succeeded), then its results."""

    setup: tuple[str | None, ...]
    results: tuple[Result, ...]


def _shape(value: Any) -> tuple[str, bool]:
    return type(value).__name__, value is None


def _comparable_row(row: tuple[Any, ...], shape_only: set[int]) -> tuple[Any, ...]:
    # The type name rides along with each value: Decimal('1') == 1.0 must not pass as a match.
    return tuple(_shape(v) if i in shape_only else (type(v).__name__, v) for i, v in enumerate(row))


_NAME_AS_TEXT = {19: 25, 1003: 1009}  # name -> text, name[] -> text[]


def _expected_types(case: Case, types: tuple[object, ...] | None) -> tuple[object, ...] | None:
    """PostgreSQL's types, with the differences the case states applied (README's compatibility table)."""
    if types is None or not case.name_as_text:
        return types
    return tuple(_NAME_AS_TEXT.get(t, t) if isinstance(t, int) else t for t in types)


def _numbers(case: Case, row: tuple[Any, ...]) -> tuple[Any, ...]:
    """With `numeric_scale`, text that is a decimal number is compared as the number (trailing zeros aside)."""
    if not case.numeric_scale:
        return row
    return tuple(_as_number(v) if isinstance(v, str) else v for v in row)


def _as_number(text: str) -> Any:
    try:
        return Decimal(text).normalize() if _DECIMAL.fullmatch(text) else text
    except InvalidOperation:
        return text


_DECIMAL = re.compile(r"-?\d+\.\d+")


def _describe(result: Result) -> str:
    if result.sqlstate is not None:
        return f"error {result.sqlstate}: {result.message}"
    return f"columns {result.columns}, types {result.types}, {len(result.rows)} row(s)"


def mismatches(case: Case, engine: Outcome, postgres: Outcome) -> list[str]:
    """Every way the engine's outcome differs from PostgreSQL's for this case; empty when they match."""
    problems: list[str] = []
    if engine.setup != postgres.setup:
        problems.append(f"setup steps' SQLSTATEs differ: engine {engine.setup}, PostgreSQL {postgres.setup}"
                        f" (engine said: {[r.message for r in engine.results if r.message]})")
    for index, (mine, truth) in enumerate(zip(engine.results, postgres.results, strict=True)):
        label = "statement" if index == 0 else "check"
        problems.extend(f"{label}: {p}" for p in _result_mismatches(case, index, mine, truth))
    return problems


def _result_mismatches(case: Case, index: int, mine: Result, truth: Result) -> list[str]:
    expects_error = case.expect is Expect.SAME_ERROR and index == 0
    if expects_error:
        assert truth.sqlstate is not None, f"the case expects an error but PostgreSQL answered {_describe(truth)}"
        if mine.sqlstate != truth.sqlstate:
            return [f"PostgreSQL raised {truth.sqlstate} ({truth.message}); the engine gave {_describe(mine)}"]
        if case.error_position and mine.position != truth.position:
            return [f"error position: engine {mine.position}, PostgreSQL {truth.position} ({truth.message})"]
        return []
    assert truth.sqlstate is None, f"the case is wrong: PostgreSQL itself failed with {_describe(truth)}"
    if index == 0 and case.answers_with_rows:
        assert truth.rows, "the case is wrong: PostgreSQL answered no rows, so matching it would prove nothing"
    if mine.sqlstate is not None:
        return [f"the engine failed with {_describe(mine)}"]
    problems = []
    if mine.columns != truth.columns:
        problems.append(f"column names: engine {mine.columns}, PostgreSQL {truth.columns}")
    if _expected_types(case, truth.types) != mine.types:
        problems.append(f"types: engine {mine.types}, PostgreSQL {truth.types}")
    shape_only = set(case.shape_only)
    mine_rows = [_comparable_row(_numbers(case, r), shape_only) for r in mine.rows]
    truth_rows = [_comparable_row(_numbers(case, r), shape_only) for r in truth.rows]
    if case.expect is Expect.SAME_ROWS_ANY_ORDER:
        mine_rows.sort(key=repr)
        truth_rows.sort(key=repr)
    if mine_rows != truth_rows:
        problems.append(_first_row_difference(mine_rows, truth_rows))
    return problems


def _first_row_difference(mine: list[tuple[Any, ...]], truth: list[tuple[Any, ...]]) -> str:
    if len(mine) != len(truth):
        extra = [r for r in mine if r not in truth][:3]
        missing = [r for r in truth if r not in mine][:3]
        return (f"{len(mine)} row(s) from the engine, {len(truth)} from PostgreSQL; only the engine's: {extra}, "
                f"only PostgreSQL's: {missing}")
    at = next(i for i, (a, b) in enumerate(zip(mine, truth, strict=True)) if a != b)
    return f"row {at}: engine {mine[at]}, PostgreSQL {truth[at]}"
