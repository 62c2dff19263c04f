"""Transpile: the DuckDB SQL that runs, generated from the (rewritten) tree, never the client's text.

Because the text DuckDB executes is generated from the tree the guard checked, the guard and DuckDB
see the same statement. The generated text is parsed once more as DuckDB SQL and its functions are
checked again, so a dialect translation can never introduce a function the guard would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from engine_host.pipeline.governance.guard import ParsedStatement, check_functions, unsupported
from engine_host.pipeline.governance.output_names import UNKNOWN_COLUMN_NAME, name_outputs
from engine_host.pipeline.governance.pg_semantics import PgSession, apply_pg_semantics
from engine_host.pipeline.governance.rewrite import HASH_MACRO, HASH_MACRO_REDACTED, HASH_SCHEMA

# What the rewrite itself calls: the keyed-hash macros, and `error()` for the row-filter check of writes
# (clients may call neither: the guard refused them on the client's own tree).
_OUR_MACROS = frozenset({f"{HASH_SCHEMA}.{HASH_MACRO}", f"{HASH_SCHEMA}.{HASH_MACRO_REDACTED}",
                         f"{HASH_SCHEMA}.{HASH_MACRO}_live", f"{HASH_SCHEMA}.{HASH_MACRO}_test", "error"})
__all__ = ["UNKNOWN_COLUMN_NAME", "to_duckdb"]


def to_duckdb(tree: exp.Expr, parsed: ParsedStatement, *, session: PgSession | None = None,
              column_types: Mapping[str, Sequence[tuple[str, str]]] | None = None) -> str:
    """DuckDB SQL for `tree` (read in `parsed.dialect`), without the EXPLAIN the guard may have stripped.

    `tree` is the caller's to give away (the rewrite's new tree): for a PostgreSQL client its top-level
    projections get the output names PostgreSQL would give them, and its expressions PostgreSQL's
    meaning (governance/pg_semantics.py, with the session's values and the governed tables' column
    types), in place. Copying it first cost more than generating the SQL (Python's deepcopy per
    node: 1 s for an IN list of 8,000 parameters).
    """
    if parsed.dialect == "postgres":
        if isinstance(tree, exp.Query):
            name_outputs(tree, parsed.text)
        apply_pg_semantics(tree, session, column_types or {})
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
