"""Transpile: the DuckDB SQL that runs, generated from the (rewritten) tree, never the client's text.

Because the text DuckDB executes is generated from the tree the guard checked, the guard and DuckDB
see the same statement. The generated text is parsed once more as DuckDB SQL and its functions are
checked again, so a dialect translation can never introduce a function the guard would refuse.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from engine_host.pipeline.governance.guard import ParsedStatement, check_functions, unsupported, written_name
from engine_host.pipeline.governance.rewrite import HASH_MACRO, HASH_MACRO_REDACTED, HASH_SCHEMA

# What the rewrite itself calls: the keyed-hash macros, and `error()` for the row-filter check of writes
# (clients may call neither: the guard refused them on the client's own tree).
_OUR_MACROS = frozenset({f"{HASH_SCHEMA}.{HASH_MACRO}", f"{HASH_SCHEMA}.{HASH_MACRO_REDACTED}",
                         f"{HASH_SCHEMA}.{HASH_MACRO}_live", f"{HASH_SCHEMA}.{HASH_MACRO}_test", "error"})
UNKNOWN_COLUMN_NAME = "?column?"


def to_duckdb(tree: exp.Expr, parsed: ParsedStatement) -> str:
    """DuckDB SQL for `tree` (read in `parsed.dialect`), without the EXPLAIN the guard may have stripped.

    `tree` is the caller's to give away (the rewrite's new tree): its top-level projections get the
    output names PostgreSQL would give them in place. Copying it first cost more than generating
    the SQL (Python's deepcopy per node: 1 s for an IN list of 8,000 parameters).
    """
    if parsed.dialect == "postgres" and isinstance(tree, exp.Query):
        _postgres_output_names(tree, parsed.text)
    sql = tree.sql(dialect="duckdb", comments=False)
    _recheck(sql)
    return sql


def _recheck(sql: str) -> None:
    try:
        generated = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except (ParseError, TokenError):
        raise unsupported("this statement cannot be translated to the engine's SQL",
                          hint="Rewrite it with standard SQL constructs.") from None
    if len(generated) != 1:
        raise unsupported("this statement cannot be translated to the engine's SQL",
                          hint="Rewrite it with standard SQL constructs.")
    check_functions(generated[0], sql, generated=True, internal=_OUR_MACROS)


def _postgres_output_names(tree: exp.Query, text: str) -> None:
    """Give unaliased top-level projections the names PostgreSQL would (`count`, `sum`, the column, `?column?`)."""
    select: exp.Expr = tree
    while isinstance(select, exp.SetOperation):
        select = select.this
    if isinstance(select, exp.Subquery):
        select = select.unnest()
    if not isinstance(select, exp.Select):
        return
    named: list[exp.Expr] = []
    for projection in select.expressions:
        if isinstance(projection, (exp.Alias, exp.Star)) or _is_star_like(projection):
            named.append(projection)
            continue
        name = _postgres_name(projection, text)
        if isinstance(projection, exp.Column) and projection.name == name:
            named.append(projection)
            continue
        named.append(exp.alias_(projection, exp.to_identifier(name, quoted=True)))
    select.set("expressions", named)


def _is_star_like(node: exp.Expr) -> bool:
    if isinstance(node, exp.Column) and isinstance(node.this, exp.Star):
        return True
    return (isinstance(node, exp.Func) and type(node).__name__ == "Columns") or (
        isinstance(node, exp.Anonymous) and str(node.name).lower() in ("columns", "unpack"))


def _postgres_name(node: exp.Expr, text: str) -> str:
    while isinstance(node, (exp.Paren, exp.Cast, exp.TryCast)) and not (
            isinstance(node, (exp.Cast, exp.TryCast)) and not isinstance(node.this, (exp.Column, exp.Func))):
        node = node.this
    if isinstance(node, exp.Window):
        node = node.this
    if isinstance(node, exp.Column):
        return node.name
    if isinstance(node, exp.Func) and not isinstance(node, (exp.Cast, exp.TryCast)):
        return written_name(node, text)
    return UNKNOWN_COLUMN_NAME
