"""Row filters: a policy's SQL condition, checked once when written and resolved per session.

A row filter is one boolean condition over the filtered table's own columns, with session values
written as bare placeholders: `region = {region} AND owner_id = {user_id}`. Placeholders become
sentinel columns before parsing, so the SQL is parsed exactly once and a session value is never
spliced into SQL text: `resolve_row_filter` swaps each sentinel for a sqlglot string literal (the
generator does the escaping) or NULL when the session has no such value, and a comparison with
NULL is never true, so the session then sees no rows (fail closed).

The condition must stand alone: no subqueries, no table references, no aggregates or windows, no
`*`, nothing sqlglot could only keep as an opaque `Command`. Those would let a filter read other
tables (DuckDB may evaluate a throwing expression before the filter, leaking values in errors) or
change meaning under the rewrite that wraps each table in `(SELECT ... FROM t WHERE <filter>)`.

Every function it calls must be in `POLICY_EXPRESSION_FUNCTIONS` (an allow list in DuckDB names),
and its text and nesting are bounded: the engine evaluates it for every row of every query on the
table, and parses every stored filter when it loads policies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, SqlglotError

from hd_core.errors import RowFilterInvalid
from hd_core.policies import ROW_FILTER_PLACEHOLDERS
from hd_core.sql_calls import called_functions
from hd_core.sql_functions import POLICY_EXPRESSION_FUNCTIONS

MAX_ROW_FILTER_LENGTH = 4096
MAX_ROW_FILTER_DEPTH = 32

SENTINEL_PREFIX = "__hd_ph_"
_BRACED = re.compile(r"\{([^{}]*)\}")
_SENTINEL_IN_TEXT = re.compile(
    re.escape(SENTINEL_PREFIX) + "(" + "|".join(sorted(ROW_FILTER_PLACEHOLDERS, key=len, reverse=True)) + ")",
    re.IGNORECASE,
)

# Node types a condition may never contain, with the reason given to the policy author.
_FORBIDDEN: tuple[tuple[type[exp.Expr], str], ...] = (
    (exp.Command, "it contains SQL that is not a plain expression"),
    (exp.Query, "subqueries are not allowed; compare columns with placeholders or constants"),
    (exp.Subquery, "subqueries are not allowed; compare columns with placeholders or constants"),
    (exp.Exists, "subqueries are not allowed; compare columns with placeholders or constants"),
    (exp.Table, "a row filter may not reference tables; use only the filtered table's columns"),
    (exp.Star, "`*` is not allowed in a row filter"),
    (exp.Window, "window functions are not allowed in a row filter"),
    (exp.AggFunc, "aggregate functions are not allowed in a row filter"),
    (exp.Placeholder, "bind parameters are not allowed; use {placeholders} for session values"),
    (exp.Parameter, "bind parameters are not allowed; use {placeholders} for session values"),
    (exp.SessionParameter, "session parameters are not allowed; use {placeholders} for session values"),
    (exp.Lambda, "lambdas are not allowed in a row filter"),
)

@dataclass(frozen=True)
class ParsedRowFilter:
    """A checked row filter: its condition with sentinel columns where the placeholders were.

    `condition` is shared: never mutate it (`resolve_row_filter` works on a copy).
    """

    text: str
    condition: exp.Expr
    columns: frozenset[str]
    placeholders: frozenset[str]


def parse_row_filter(text: str) -> ParsedRowFilter:
    """Check and parse a row filter; raises `RowFilterInvalid` saying what to change."""
    if len(text) > MAX_ROW_FILTER_LENGTH:
        raise RowFilterInvalid(
            f"row filter is {len(text)} characters long; the limit is {MAX_ROW_FILTER_LENGTH}: simplify it "
            "(a long list of values usually belongs in a column the filter compares with)"
        )
    if SENTINEL_PREFIX in text.lower():
        raise RowFilterInvalid(f"row filters may not use names starting with {SENTINEL_PREFIX!r}")
    substituted = _BRACED.sub(_sentinel_for, text)
    if "{" in substituted or "}" in substituted:
        raise RowFilterInvalid("unbalanced `{` or `}`: placeholders are written `{name}`, e.g. `{org_id}`")
    try:
        statements = sqlglot.parse(substituted, read="postgres")
    except SqlglotError as error:
        raise RowFilterInvalid(f"row filter is not valid SQL: {_first_line(error)}") from None
    except RecursionError:
        raise RowFilterInvalid(_too_deep()) from None
    conditions = [statement for statement in statements if statement is not None]
    if len(conditions) != 1:
        raise RowFilterInvalid(f"a row filter must be exactly one condition, found {len(conditions)}")
    condition = conditions[0]
    _check_depth(condition)
    _check_nodes(condition)
    _check_boolean(condition, text)
    _check_generates(condition)
    _check_functions(condition)
    columns: set[str] = set()
    used: set[str] = set()
    for column in condition.find_all(exp.Column):
        name = column.name.lower()
        if name.startswith(SENTINEL_PREFIX):
            used.add(name.removeprefix(SENTINEL_PREFIX))
        else:
            columns.add(name)
    return ParsedRowFilter(text=text, condition=condition, columns=frozenset(columns), placeholders=frozenset(used))


def referenced_columns(parsed: ParsedRowFilter) -> frozenset[str]:
    """The table columns a filter reads (lower case; placeholders are not columns)."""
    return parsed.columns


def placeholders(parsed: ParsedRowFilter) -> frozenset[str]:
    """The session values a filter needs, by placeholder name."""
    return parsed.placeholders


def resolve_row_filter(parsed: ParsedRowFilter, values: Mapping[str, str | None]) -> exp.Expr:
    """A fresh condition with each placeholder as an escaped string literal, or NULL when it has no value.

    A placeholder missing from `values` counts as None: the filter then matches no rows.
    """
    resolved = parsed.condition.copy()
    for column in list(resolved.find_all(exp.Column)):
        name = column.name.lower()
        if not name.startswith(SENTINEL_PREFIX):
            continue
        value = values.get(name.removeprefix(SENTINEL_PREFIX))
        replacement: exp.Expr = exp.Null() if value is None else exp.Literal.string(value)
        if column is resolved:
            return replacement  # unreachable for a checked filter (a bare placeholder is refused)
        column.replace(replacement)
    return resolved


def _sentinel_for(match: re.Match[str]) -> str:
    name = match.group(1)
    if name not in ROW_FILTER_PLACEHOLDERS:
        known = ", ".join("{" + placeholder + "}" for placeholder in ROW_FILTER_PLACEHOLDERS)
        raise RowFilterInvalid(f"unknown placeholder {{{name}}}; row filters may use {known}")
    return SENTINEL_PREFIX + name


def _too_deep() -> str:
    return (
        f"row filter is nested more than {MAX_ROW_FILTER_DEPTH} levels deep: simplify it (list alternatives "
        "as `column IN (a, b, ...)`, not as a chain of ORs)"
    )


def _check_depth(condition: exp.Expr) -> None:
    """Bound nesting before anything recurses over the tree (sqlglot's generator does)."""
    pending = [(condition, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_ROW_FILTER_DEPTH:
            raise RowFilterInvalid(_too_deep())
        pending.extend((child, depth + 1) for child in node.iter_expressions())


def _check_nodes(condition: exp.Expr) -> None:
    for node in condition.walk():
        node.comments = None  # comments carry nothing a filter needs into the engine's SQL
        for node_type, reason in _FORBIDDEN:
            if isinstance(node, node_type):
                raise RowFilterInvalid(f"row filter refused: {reason}")
        if isinstance(node, exp.Column):
            _check_column(node)
        elif not isinstance(node, exp.Identifier) or not isinstance(node.parent, exp.Column):
            _check_no_sentinel(node)
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
            raise RowFilterInvalid(
                f"write function calls unqualified, as name(arguments): {node.sql(dialect='postgres')!r}"
            )


def _check_functions(condition: exp.Expr) -> None:
    """Every function DuckDB will call for the condition must be one a policy expression may use.

    Reads the DuckDB SQL the engine will run, not the parsed tree (see `hd_core.sql_calls`).
    """
    for name in called_functions(condition.sql(dialect="duckdb", unsupported_level=ErrorLevel.IGNORE)):
        if name not in POLICY_EXPRESSION_FUNCTIONS:
            raise RowFilterInvalid(
                f"function {name}() is not allowed in a row filter; use deterministic value functions on the "
                "table's columns (lower, upper, substring, coalesce, date_trunc, CAST, CASE, ...), not ones "
                "that read files, settings or the catalog, run SQL text, depend on the clock or randomness, "
                "or build values from a count"
            )


def _check_column(column: exp.Column) -> None:
    if column.table or column.args.get("db") or column.args.get("catalog"):
        raise RowFilterInvalid(
            f"write column names unqualified ({column.name!r}, not {column.sql(dialect='postgres')!r}): "
            "a row filter always applies to its own table"
        )
    identifier = column.this
    found = _SENTINEL_IN_TEXT.search(column.name)
    if found is None:
        return
    if isinstance(identifier, exp.Identifier) and identifier.quoted:
        raise RowFilterInvalid("write placeholders bare, e.g. `owner = {user_id}`, not inside double quotes")
    if column.name.lower() != SENTINEL_PREFIX + found.group(1).lower():
        raise RowFilterInvalid(f"{{{found.group(1).lower()}}} stands for a value; it cannot be part of a name")


def _check_no_sentinel(node: exp.Expr) -> None:
    """A sentinel anywhere but a bare column means a placeholder was written where no value can go."""
    for value in node.args.values():
        found = _SENTINEL_IN_TEXT.search(value) if isinstance(value, str) else None
        if found is not None:
            name = found.group(1).lower()
            if not _is_string_literal(node):
                raise RowFilterInvalid(
                    f"{{{name}}} stands for a value; it cannot be used as a name (function, alias, type)"
                )
            raise RowFilterInvalid(
                f"{{{name}}} is inside a string literal: write it bare (`column = {{{name}}}`, not "
                f"`column = '{{{name}}}'`), it is inserted as a safely quoted string; to build a pattern, "
                f"concatenate: `column LIKE '%' || {{{name}}} || '%'`"
            )


def _is_string_literal(node: exp.Expr) -> bool:
    # E'...', U&'...', $$...$$ and friends are their own node types named *String; N'...' is National.
    return (
        (isinstance(node, exp.Literal) and node.is_string)
        or isinstance(node, exp.National)
        or type(node).__name__.endswith("String")
    )


def _check_boolean(condition: exp.Expr, text: str) -> None:
    """Refuse what can never be a condition (a constant, arithmetic, a bare placeholder)."""
    node = condition
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Predicate | exp.Connector | exp.Not | exp.Boolean | exp.Func):
        return
    if isinstance(node, exp.Column) and not node.name.startswith(SENTINEL_PREFIX):
        return  # a boolean column
    if isinstance(node, exp.Cast) and node.to.is_type(exp.DataType.Type.BOOLEAN):
        return
    raise RowFilterInvalid(
        f"a row filter must be a condition (a comparison, IN, IS, LIKE, BETWEEN, AND/OR/NOT), not {text.strip()!r}"
    )


def _check_generates(condition: exp.Expr) -> None:
    """Refuse syntax sqlglot reads but cannot write for DuckDB: the engine would run something else."""
    try:
        condition.sql(dialect="duckdb", unsupported_level=ErrorLevel.RAISE)
    except SqlglotError as error:
        raise RowFilterInvalid(f"row filter uses syntax the engine does not support: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
