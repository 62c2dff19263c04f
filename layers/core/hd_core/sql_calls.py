"""Which functions a piece of DuckDB SQL calls, read from its tokens as DuckDB will read them.

Both allow lists (client statements in the engine's guard, stored row filters) are checked on the
DuckDB SQL that will actually run, not on a parse tree: sqlglot passes a name it does not know
through as written, and writes one it knows as its DuckDB spelling, which may be several calls
(`current_date(tz)` becomes `CAST(CURRENT_TIMESTAMP AT TIME ZONE tz AS DATE)`). A token scan sees
every call, quoted names and method-call syntax (`x.upper()`) included.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import sqlglot
from sqlglot.tokens import Token, TokenType

_DUCKDB = sqlglot.Dialect.get_or_raise("duckdb")
_KEYWORDS = _DUCKDB.tokenizer_class.KEYWORDS
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
# Reserved words DuckDB reads as syntax: before "(" they open a group, they never call a function.
_SYNTAX_WORDS = frozenset(
    "all and any between case else escape for from ilike in interval is like not or placing similar some then to "
    "when zone".split()
)
# Functions DuckDB calls when written bare, without parentheses; it binds the first seven even when
# quoted, whenever the table has no column of that name ("user" is the user, not a column).
BARE_FUNCTIONS = frozenset(
    "current_catalog current_date current_role current_schema current_user session_user user "
    "current_time current_timestamp localtime localtimestamp".split()
)


def called_functions(duckdb_sql: str) -> Iterator[str]:
    """The (lower-case) name of every function DuckDB calls in `duckdb_sql`, in order, repeats included."""
    tokens = _DUCKDB.tokenize(duckdb_sql)
    index = 0
    while index < len(tokens):
        if tokens[index].token_type == TokenType.ALIAS:
            index = _end_of_cast_type(tokens, index + 1)  # CAST(x AS DECIMAL(10, 2)): a type, not a call
            continue
        name = _called_function(tokens, index)
        if name is not None:
            yield name
        index += 1


def _called_function(tokens: list[Token], index: int) -> str | None:
    """The function DuckDB calls at `tokens[index]`, or None when that token calls nothing."""
    token = tokens[index]
    name = token.text.lower()
    before_paren = index + 1 < len(tokens) and tokens[index + 1].token_type == TokenType.L_PAREN
    if token.token_type == TokenType.IDENTIFIER:  # quoting a name changes neither case for DuckDB
        return name if before_paren or name in BARE_FUNCTIONS else None
    # A bare word's token type is VAR or its keyword's type; a string or number holding one is not.
    is_word = token.token_type in (TokenType.VAR, _KEYWORDS.get(token.text.upper())) and _WORD.fullmatch(token.text)
    if is_word and (name in BARE_FUNCTIONS or (before_paren and name not in _SYNTAX_WORDS)):
        return name
    return None


def _end_of_cast_type(tokens: list[Token], index: int) -> int:
    """Index of the `)` closing the CAST whose type starts at `index` (types take parentheses too)."""
    depth = 0
    while index < len(tokens):
        kind = tokens[index].token_type
        if kind == TokenType.L_PAREN:
            depth += 1
        elif kind == TokenType.R_PAREN:
            if depth == 0:
                return index
            depth -= 1
        index += 1
    return index
