"""The type of a parameter compared with ANY or ALL (`col = any($1)`): an array of the other side's type.

PostgreSQL infers `int4[]` for `$1` in `int_col = any($1)`, and clients that ask for parameter types
(asyncpg) encode a list only for an array type. DuckDB's binder leaves such a parameter UNKNOWN. It
does type a plain comparison (`int_col = $1` gives INTEGER), so the statement is bound once more with
each quantified parameter compared directly, and the array of the type DuckDB gives it there is the
parameter's type. Only the probe changes; the statement that runs is the one the pipeline governed.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

# DuckDB's names for the type of an untyped literal, and UNKNOWN (both sides untyped, `$1 = any($2)`):
# as an array element each is what PostgreSQL resolves it to, text for a string or an unknown.
_ELEMENT_TYPES = {"STRING_LITERAL": "VARCHAR", "INTEGER_LITERAL": "INTEGER", "UNKNOWN": "VARCHAR"}


def quantified_probe(engine_sql: str) -> tuple[str, frozenset[int]] | None:
    """The DuckDB SQL to bind to type the quantified parameters of `engine_sql`, and their numbers.

    Returns None when no parameter is the whole operand of ANY/ALL.
    """
    if "$" not in engine_sql:
        return None
    try:
        tree = sqlglot.parse_one(engine_sql, read="duckdb")
    except SqlglotError:
        return None
    found: set[int] = set()
    for node in list(tree.find_all(exp.Any, exp.All, exp.Anonymous)):
        if isinstance(node, exp.Anonymous):
            if node.name.lower() != "all" or len(node.expressions) != 1:
                continue
            operand = node.expressions[0]
        else:
            operand = node.this
        operand = operand.unnest() if isinstance(operand, exp.Paren) else operand
        if not (isinstance(operand, exp.Placeholder) and str(operand.name).isdigit()):
            continue
        if not (isinstance(node.parent, exp.Binary) and node.parent.expression is node):
            continue
        found.add(int(operand.name))
        node.replace(operand.copy())
    if not found:
        return None
    return tree.sql(dialect="duckdb"), frozenset(found)


def array_of(element: str) -> str | None:
    """The DuckDB array type of a probed element type, or None when the probe gave no usable type."""
    element = _ELEMENT_TYPES.get(element, element)
    if element in ("NULL", "ANY"):
        return None
    return f"{element}[]"
