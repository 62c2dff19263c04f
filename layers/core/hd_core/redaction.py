"""PII redaction for the query audit trail: literals out of SQL by AST, then a regex scrub of PII patterns.

`redact_sql` is what the audit record stores instead of the statement text; `scrub_pii`
(hd_core.text_redaction, with the engine-error redaction) is the second pass. Neither touches
query results. Both never raise and never hand back a literal they could not classify.
"""

from __future__ import annotations

import logging
import re
import threading

import sqlglot
from sqlglot import exp
from sqlglot.tokens import Token, TokenType

from hd_core.text_redaction import PLACEHOLDER, scrub_pii

# --- SQL literal redaction ---------------------------------------------------------------------

_LITERAL_NODES: tuple[type[exp.Expr], ...] = (
    exp.Literal,
    exp.HexString,
    exp.BitString,
    exp.ByteString,
    exp.RawString,
    exp.National,
    exp.UnicodeString,
)

# Literals that are structure, not data: `$1`, `VARCHAR(255)`, and a Command's raw text
# (redacted lexically instead, see `_redact_node`).
_STRUCTURAL_PARENTS: tuple[type[exp.Expr], ...] = (exp.Parameter, exp.DataTypeParam, exp.DataType, exp.Command)

_LITERAL_TOKENS = frozenset(
    {
        TokenType.STRING,
        TokenType.NUMBER,
        TokenType.BIT_STRING,
        TokenType.HEX_STRING,
        TokenType.BYTE_STRING,
        TokenType.NATIONAL_STRING,
        TokenType.NATIONAL_RAW_STRING,
        TokenType.RAW_STRING,
        TokenType.HEREDOC_STRING,
        TokenType.UNICODE_STRING,
    }
)

# Last resort when even the tokenizer gives up. Leftmost alternative wins, so a quote inside a
# comment or a `--` inside a string is handled; an unterminated string, identifier or comment is
# blanked up to the end.
_FALLBACK_RE = re.compile(
    r"""(?P<comment>--[^\n]*|/\*(?:[^*]|\*(?!/))*(?:\*/|\Z))"""
    r"""|(?P<ident>"(?:[^"]|"")*")"""
    r"""|(?P<string>"[^\0]*\Z|(?:(?<!\w)(?:[EeBbXxNn]|[Uu]&))?'(?:[^'\\]|\\.|'')*(?:'|\Z)"""
    r"""|\$(?P<tag>(?:[A-Za-z_]\w*)?)\$(?:.*?\$(?P=tag)\$|.*\Z))"""
    r"""|(?P<number>(?<![\w$])\.?\d(?:[eE][+-]\d|[\w.])*)""",
    re.DOTALL,
)


# A quoted identifier may legally contain `'...'`; such text looks like a literal to a reader, so it goes.
_QUOTED_IN_IDENTIFIER_RE = re.compile(r"'[^']*(?:'|\Z)")


def _scrub_identifier(name: str) -> str:
    return _QUOTED_IN_IDENTIFIER_RE.sub(PLACEHOLDER, name) if "'" in name else name


class _SuppressWhileRedacting(logging.Filter):
    """Drops sqlglot's own log records (they quote the raw statement) while this thread redacts."""

    active = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.active, "on", False)


_QUIET = _SuppressWhileRedacting()
logging.getLogger("sqlglot").addFilter(_QUIET)


def _fallback_marker(match: re.Match[str]) -> str:
    if match.lastgroup == "ident":
        return _scrub_identifier(match.group())
    if match.lastgroup == "comment":
        return " "
    return PLACEHOLDER


def _redact_by_regex(sql: str) -> str:
    return _FALLBACK_RE.sub(_fallback_marker, sql)


def _token_text(sql: str, token: Token) -> str:
    if token.token_type in _LITERAL_TOKENS:
        return PLACEHOLDER
    text = sql[token.start : token.end + 1]
    return _scrub_identifier(text) if token.token_type == TokenType.IDENTIFIER else text


def _redact_by_tokens(sql: str, dialect: str) -> str:
    """Literal tokens become placeholders; comments and original whitespace are dropped."""
    try:
        tokens = sqlglot.tokenize(sql, read=dialect)
    except Exception:  # noqa: BLE001 - any tokenizer failure means: fall back to the regex lexer
        return _redact_by_regex(sql)
    return " ".join(_token_text(sql, token) for token in tokens)


def _redact_node(node: exp.Expr, dialect: str) -> exp.Expr:
    if isinstance(node, exp.Command):
        raw = node.args.get("expression")
        if isinstance(raw, exp.Literal):
            node.set("expression", exp.Literal.string(_redact_by_tokens(raw.name, dialect)))
        elif raw is not None:
            node.set("expression", exp.Var(this=PLACEHOLDER))
        return node
    if isinstance(node, _LITERAL_NODES) and not isinstance(node.parent, _STRUCTURAL_PARENTS):
        return exp.Var(this=PLACEHOLDER)
    if isinstance(node, exp.Identifier) and "'" in node.name:
        node.set("this", _scrub_identifier(node.name))
    return node


def _redact_tree(root: exp.Expr, dialect: str) -> exp.Expr:
    """`_redact_node` applied to every node of `root`, replacing nodes in place, in linear time.

    sqlglot's `transform` re-parents a node's whole argument list for each replacement in it, so a
    statement with n literals in one list (`VALUES (...), (...)`, a long IN list) costs O(n^2):
    40,000 literals took minutes. Here each replacement costs O(1).
    """
    for node in list(root.walk()):
        new = _redact_node(node, dialect)
        if new is node:
            continue
        parent, key, index = node.parent, node.arg_key, node.index
        if parent is None or key is None:
            root = new
        elif index is None:
            parent.set(key, new)
        else:
            parent.args[key][index] = new
            new.parent, new.arg_key, new.index = parent, key, index
    return root


def _redact_by_ast(sql: str, dialect: str) -> str:
    statements = sqlglot.parse(sql, read=dialect)
    rendered = []
    for statement in statements:
        if statement is None:
            continue
        redacted = _redact_tree(statement, dialect)
        # Comments are free text: they can carry anything, so they never reach the audit trail.
        rendered.append(redacted.sql(dialect=dialect, comments=False))
    return "; ".join(rendered)


# A statement longer than the engine accepts (1 MiB) is refused unparsed, and its audit record keeps
# only its start, redacted lexically: parsing it would cost seconds and its record megabytes.
MAX_PARSED_STATEMENT_CHARS = 1024 * 1024
OVERSIZED_STATEMENT_KEPT_CHARS = 4096


def _redact_oversized(sql: str) -> str:
    kept = _redact_by_regex(sql[:OVERSIZED_STATEMENT_KEPT_CHARS])
    return f"{kept} ... [statement of {len(sql)} characters, truncated]"


# Above this size a statement is redacted by the lexical regex alone, in one linear pass (~0.1 s per
# MiB): parsing and regenerating it costs ~15 us per token (a 100,000-value IN list: 1.5 s of CPU
# holding the GIL, after the statement itself ran), and a statement this long is data-heavy SQL
# (IN lists, VALUES rows) whose shape the regex keeps as well as the parser does.
MAX_AST_REDACTED_CHARS = 64 * 1024


def redact_sql(sql: str, dialect: str = "postgres") -> str:
    """The statement(s) with every literal replaced by `?` and comments dropped, then PII-scrubbed.

    Parsed with sqlglot and regenerated in `dialect`; if parsing fails, a lexical pass (sqlglot's
    tokenizer, else a regex) blanks strings and numbers instead. A statement over
    `MAX_AST_REDACTED_CHARS` is redacted by the regex only, one over `MAX_PARSED_STATEMENT_CHARS`
    keeps only its start: the cost is linear in the statement's length. Never raises.
    """
    _QUIET.active.on = True
    try:
        try:
            if len(sql) > MAX_PARSED_STATEMENT_CHARS:
                return scrub_pii(_redact_oversized(sql))
            if len(sql) > MAX_AST_REDACTED_CHARS:
                return scrub_pii(_redact_by_regex(sql))
            redacted = _redact_by_ast(sql, dialect)
        except Exception:  # noqa: BLE001 - unparsable or unsupported SQL is still audited, lexically
            redacted = _redact_by_tokens(sql, dialect)
        return scrub_pii(redacted)
    except Exception:  # noqa: BLE001 - never raise on the audit path; this form keeps no literal at all
        return scrub_pii(_redact_by_regex(sql))
    finally:
        _QUIET.active.on = False
