"""Transpile: the DuckDB SQL that runs, generated from the (rewritten) tree, never the client's text.

Because the text DuckDB executes is generated from the tree the guard checked, the guard and DuckDB
see the same statement. The generated text is parsed once more as DuckDB SQL and its functions are
checked again, so a dialect translation can never introduce a function the guard would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from engine_host.pgcompat.types.table import PgType
from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.governance.guard import ParsedStatement, check_functions, unsupported
from engine_host.pipeline.governance.output_names import UNKNOWN_COLUMN_NAME, name_outputs
from engine_host.pipeline.governance.pg_semantics import PgSession, apply_pg_semantics, mark_date_parts
from engine_host.pipeline.governance.result_types import declared_types
from engine_host.pipeline.governance.rewrite import HASH_MACRO, HASH_MACRO_REDACTED, HASH_SCHEMA

# What the rewrite itself calls: the keyed-hash macros, and `error()` for the row-filter check of writes
# (clients may call neither: the guard refused them on the client's own tree).
_OUR_MACROS = frozenset({f"{HASH_SCHEMA}.{HASH_MACRO}", f"{HASH_SCHEMA}.{HASH_MACRO_REDACTED}",
                         f"{HASH_SCHEMA}.{HASH_MACRO}_live", f"{HASH_SCHEMA}.{HASH_MACRO}_test", "error"})
__all__ = ["UNKNOWN_COLUMN_NAME", "Transpiled", "to_duckdb", "transpile"]


@dataclass(frozen=True)
class Transpiled:
    """The DuckDB SQL to run, and per output column the PostgreSQL type to declare where the result's differs."""

    sql: str
    declared_types: tuple[PgType | None, ...] = ()


def transpile(tree: exp.Expr, parsed: ParsedStatement, *, session: PgSession | None = None,
              column_types: Mapping[str, Sequence[tuple[str, str]]] | None = None) -> Transpiled:
    """to_duckdb's SQL, with the result column types PostgreSQL declares (governance/result_types.py)."""
    declared: tuple[PgType | None, ...] = ()
    if parsed.dialect == "postgres" and isinstance(tree, exp.Query):
        mark_date_parts(tree, parsed.text)
        name_outputs(tree, parsed.text)
        # From the client's tree, not the governed one: a masked column keeps the type its table declares
        # (the mask is an expression in the governed subquery, which would read as text).
        declared = declared_types(parsed.tree, column_types or {})
    return Transpiled(to_duckdb(tree, parsed, session=session, column_types=column_types, named=True), declared)


def to_duckdb(tree: exp.Expr, parsed: ParsedStatement, *, session: PgSession | None = None,
              column_types: Mapping[str, Sequence[tuple[str, str]]] | None = None, named: bool = False) -> str:
    """DuckDB SQL for `tree` (read in `parsed.dialect`), without the EXPLAIN the guard may have stripped.

    `tree` is the caller's to give away (the rewrite's new tree): for a PostgreSQL client its top-level
    projections get the output names PostgreSQL would give them, and its expressions PostgreSQL's
    meaning (governance/pg_semantics.py, with the session's values and the governed tables' column
    types), in place. Copying it first cost more than generating the SQL (Python's deepcopy per
    node: 1 s for an IN list of 8,000 parameters).
    """
    if parsed.dialect == "postgres":
        _float_precisions(tree)
        if isinstance(tree, exp.Query) and not named:
            mark_date_parts(tree, parsed.text)
            name_outputs(tree, parsed.text)
        apply_pg_semantics(tree, session, column_types or {}, parsed.text)
    # No copy: the tree is ours to give away, and the generator's copy cost more than generating.
    sql = tree.sql(dialect="duckdb", comments=False, copy=False)
    _recheck(sql)
    return sql


def _float_precisions(tree: exp.Expr) -> None:
    """PostgreSQL's `float(p)` (SQLAlchemy's Float, pandas' to_sql): real for p <= 24, double precision for
    25..53, 22023 outside 1..53; sqlglot reads it as DOUBLE(p), which DuckDB refuses."""
    for kind in list(tree.find_all(exp.DataType)):
        params = kind.expressions
        if kind.this not in (exp.DType.DOUBLE, exp.DType.FLOAT) or len(params) != 1:
            continue
        bits = params[0].this if isinstance(params[0], exp.DataTypeParam) else params[0]
        if not (isinstance(bits, exp.Literal) and bits.is_int):
            continue
        precision = int(bits.to_py())
        if precision < 1:
            raise QueryError("22023", "HD_ERR_INVALID_INPUT", "precision for type float must be at least 1 bit")
        if precision > 53:
            raise QueryError("22023", "HD_ERR_INVALID_INPUT", "precision for type float must be less than 54 bits")
        kind.replace(exp.DataType.build("REAL" if precision <= 24 else "DOUBLE", dialect="duckdb"))


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
