"""A shadow-mode query set: an uploaded SQL file or JSONL query history, parsed into read-only statements.

Two upload shapes are read:
- SQL text: statements separated by `;`. A `;` inside a string ('...', E'...'), a quoted identifier,
  a dollar-quoted body ($tag$...$tag$) or a comment (`--`, nested `/* */`) does not split. Comments
  before a statement stay in its text; each statement keeps the 1-based line where its code starts.
- JSONL: one object per line, `{"sql": ..., "params": [...]}`, or the `pg_stat_statements` export
  shape `{"query": ..., ...}` (other keys are ignored). Each line holds exactly one statement.

Every statement is parsed with sqlglot (PostgreSQL dialect) and kept only if it is read-only, which
is decided by an allow list of statement kinds (SELECT / WITH / VALUES / TABLE, EXPLAIN without
ANALYZE, SHOW of one setting), never by listing what writes. On top of that, nothing inside the
statement may be another statement (a data-modifying CTE), `SELECT ... INTO`, a row lock, or a call
of a function known to change state even inside a READ ONLY transaction (`nextval`,
`pg_terminate_backend`, ...). A user-defined function that writes cannot be seen from the text: the
replay runs every statement inside `BEGIN READ ONLY`, which PostgreSQL enforces. Whatever sqlglot
cannot parse is rejected too. A rejected statement is reported with its line and reason; it does not
fail the upload. Size limits do: they raise `QuerySetTooLarge` before any parsing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from hd_core.errors import InvalidRequest

UploadFormat = Literal["sql", "jsonl"]
ParamValue = str | int | float | bool | None


class QuerySetTooLarge(InvalidRequest):
    """The upload exceeds a limit (bytes, statements, line length); the message names the limit."""

    code = "HD_ERR_QUERY_SET_TOO_LARGE"


class QuerySetUnreadable(InvalidRequest):
    """The upload is not UTF-8 text, or holds no statement at all."""

    code = "HD_ERR_QUERY_SET_UNREADABLE"


@dataclass(frozen=True)
class QuerySetLimits:
    """What one upload may hold; the defaults fit a Lambda's request and memory comfortably."""

    max_bytes: int = 10 * 1024 * 1024
    max_statements: int = 10_000
    max_line_chars: int = 200_000
    max_statement_chars: int = 1_000_000


@dataclass(frozen=True)
class QueryStatement:
    """One read-only statement of a query set; `line` is 1-based in the upload."""

    index: int
    line: int
    sql: str
    params: tuple[ParamValue, ...] = ()


@dataclass(frozen=True)
class RejectedStatement:
    """A statement left out of the query set, with the line it starts on and why."""

    line: int
    reason: str
    sql_excerpt: str


@dataclass(frozen=True)
class QuerySet:
    """An upload's accepted statements and rejected lines; `id` is derived from the upload's bytes."""

    id: str
    sha256: str
    source_format: UploadFormat
    statements: tuple[QueryStatement, ...]
    rejected: tuple[RejectedStatement, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document (what the upload stores)."""
        return {
            "id": self.id,
            "sha256": self.sha256,
            "source_format": self.source_format,
            "statements": [{"index": s.index, "line": s.line, "sql": s.sql, "params": list(s.params)}
                           for s in self.statements],
            "rejected": [{"line": r.line, "reason": r.reason, "sql_excerpt": r.sql_excerpt} for r in self.rejected],
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> QuerySet:
        """The query set `to_dict` wrote."""
        return cls(
            id=document["id"],
            sha256=document["sha256"],
            source_format=document["source_format"],
            statements=tuple(QueryStatement(s["index"], s["line"], s["sql"], tuple(s["params"]))
                             for s in document["statements"]),
            rejected=tuple(RejectedStatement(r["line"], r["reason"], r["sql_excerpt"]) for r in document["rejected"]),
        )


# --- splitting SQL text ------------------------------------------------------------------------------

_DOLLAR_TAG_RE = re.compile(r"\$([A-Za-z_\x80-\U0010ffff][\w\x80-\U0010ffff]*)?\$")


@dataclass(frozen=True)
class SqlChunk:
    """The text between two top-level `;` (comments included) and the line its code starts on."""

    text: str
    line: int
    has_code: bool


def split_sql(text: str) -> list[SqlChunk]:
    """Split SQL text on top-level `;`, as psql would; chunks holding only comments are kept with `has_code=False`."""
    chunks: list[SqlChunk] = []
    start = 0
    code_line: int | None = None
    line = 1
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
            continue
        if ch.isspace():
            i += 1
            continue
        if ch == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch == "/" and text.startswith("/*", i):
            i, line = _skip_block_comment(text, i, line)
            continue
        if ch == ";":
            chunks.append(SqlChunk(text[start:i], code_line or line, code_line is not None))
            start = i + 1
            code_line = None
            i += 1
            continue
        if code_line is None:
            code_line = line
        if ch == "'":
            backslashes = i > 0 and text[i - 1] in "eE" and (i < 2 or not (text[i - 2].isalnum() or text[i - 2] == "_"))
            i, line = _skip_quoted(text, i, line, "'", backslashes)
        elif ch == '"':
            i, line = _skip_quoted(text, i, line, '"', False)
        elif ch == "$":
            match = _DOLLAR_TAG_RE.match(text, i)
            if match and not (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
                close = text.find(match.group(0), match.end())
                end = n if close < 0 else close + len(match.group(0))
                line += text.count("\n", i, end)
                i = end
            else:
                i += 1
        else:
            i += 1
    if start < n:
        chunks.append(SqlChunk(text[start:], code_line or line, code_line is not None))
    return chunks


def _skip_block_comment(text: str, i: int, line: int) -> tuple[int, int]:
    """Past a PostgreSQL block comment, which nests."""
    depth = 0
    n = len(text)
    while i < n:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i, line
        else:
            if text[i] == "\n":
                line += 1
            i += 1
    return n, line


def _skip_quoted(text: str, i: int, line: int, quote: str, backslashes: bool) -> tuple[int, int]:
    """Past a quoted string or identifier starting at `i` (a doubled quote is part of it)."""
    i += 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
        elif backslashes and ch == "\\":
            if i + 1 < n and text[i + 1] == "\n":
                line += 1
            i += 2
            continue
        elif ch == quote:
            if i + 1 < n and text[i + 1] == quote:
                i += 2
                continue
            return i + 1, line
        i += 1
    return n, line


# --- the read-only decision ------------------------------------------------------------------------

# Top-level statement kinds a query set may hold (sqlglot reads TABLE t as a SELECT).
_ALLOWED_ROOTS: tuple[type[exp.Expr], ...] = (exp.Select, exp.SetOperation, exp.Values, exp.Subquery)
# Nodes that make a query statement write, lock or hold another statement, wherever they appear.
_NESTED_STATEMENTS: tuple[type[exp.Expr], ...] = (
    exp.DML, exp.DDL, exp.Command, exp.Into, exp.Lock, exp.Set, exp.Transaction, exp.Commit, exp.Rollback,
    exp.Pragma, exp.Use, exp.Grant, exp.TruncateTable,
)
# Functions that change state, or act on the server, even inside a READ ONLY transaction or before it
# would refuse them: sequences, sessions and backends, configuration, large objects, WAL, replication,
# advisory locks, statistics resets, remote execution, server files.
WRITING_FUNCTIONS = frozenset({
    "nextval", "setval", "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
    "set_config", "pg_switch_wal", "pg_create_restore_point", "pg_backup_start", "pg_backup_stop",
    "pg_start_backup", "pg_stop_backup", "pg_promote", "pg_wal_replay_pause", "pg_wal_replay_resume",
    "pg_log_backend_memory_contexts", "pg_create_physical_replication_slot", "pg_create_logical_replication_slot",
    "pg_drop_replication_slot", "pg_copy_physical_replication_slot", "pg_copy_logical_replication_slot",
    "pg_replication_slot_advance", "pg_logical_emit_message", "pg_logical_slot_get_changes",
    "pg_logical_slot_get_binary_changes", "pg_replication_origin_create", "pg_replication_origin_drop",
    "pg_replication_origin_advance", "pg_replication_origin_session_setup", "pg_stat_reset",
    "pg_stat_reset_shared", "pg_stat_reset_single_table_counters", "pg_stat_reset_single_function_counters",
    "pg_stat_reset_slru", "pg_stat_reset_replication_slot", "pg_stat_reset_subscription_stats",
    "pg_stat_statements_reset", "pg_advisory_lock", "pg_advisory_lock_shared", "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared", "pg_advisory_unlock",
    "pg_advisory_unlock_shared", "pg_advisory_unlock_all", "lo_create", "lo_creat", "lo_import", "lo_export",
    "lo_unlink", "lo_put", "lo_from_bytea", "lo_truncate", "lo_truncate64", "lowrite", "lo_open", "lo_close",
    "pg_file_write", "pg_file_rename", "pg_file_unlink", "pg_file_sync", "pg_read_file", "pg_read_binary_file",
    "pg_ls_dir", "pg_stat_file", "dblink", "dblink_exec", "dblink_connect", "dblink_send_query",
    "pg_notify", "pg_sleep", "pg_sleep_for", "pg_sleep_until", "txid_current", "pg_current_xact_id",
    "pg_import_system_collations", "pg_nextoid", "pg_prewarm", "query_to_xml", "table_to_xml",
})
_EXPLAIN_RE = re.compile(r"\A\s*(?P<options>\((?P<list>[^()]*)\)|(?:(?:analy[sz]e|verbose)\s+)*)(?P<rest>.*)\Z",
                         re.IGNORECASE | re.DOTALL)
_SHOW_RE = re.compile(r"\A\s*(?:all|[A-Za-z_][\w$]*(?:\.[A-Za-z_][\w$]*)?|\"[^\"]+\")\s*\Z")
_ANALYZE_WORD_RE = re.compile(r"\banaly[sz]e\b", re.IGNORECASE)

_TOKEN_REPR_RE = re.compile(r"<Token token_type: [\w.]+, text: (.*?), line: \d+.*?>")


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _parse(sql: str) -> list[exp.Expr]:
    # sqlglot logs a warning when it falls back to `exp.Command`; the statement is judged below.
    sqlglot_logger = logging.getLogger("sqlglot")
    previous = sqlglot_logger.level
    sqlglot_logger.setLevel(logging.ERROR)
    try:
        return [tree for tree in sqlglot.parse(sql, read="postgres") if tree is not None]
    except (ParseError, TokenError) as error:
        details = getattr(error, "errors", None) or [{}]
        first = details[0].get("description") or (str(error).splitlines() or [type(error).__name__])[0]
        line = details[0].get("line")
        where = f" (line {line} of the statement)" if isinstance(line, int) and line > 1 else ""
        first = _TOKEN_REPR_RE.sub(lambda m: repr(m.group(1)), str(first))
        raise _Rejected(f"not parsable as PostgreSQL: {first[:160]}{where}") from error
    except RecursionError as error:
        raise _Rejected("not parsable as PostgreSQL: nested too deeply") from error
    finally:
        sqlglot_logger.setLevel(previous)


def _function_name(node: exp.Func) -> str:
    return (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()


def _check_query_tree(tree: exp.Expr) -> None:
    if not isinstance(tree, _ALLOWED_ROOTS):
        raise _Rejected(f"{_kind(tree)} is not a read-only statement kind (allowed: SELECT, WITH, VALUES, "
                        "TABLE, EXPLAIN without ANALYZE, SHOW)")
    for node in tree.walk():
        if isinstance(node, exp.Into):
            raise _Rejected("SELECT ... INTO creates a table")
        if isinstance(node, exp.Lock):
            raise _Rejected("a locking clause (FOR UPDATE/SHARE) takes row locks")
        if isinstance(node, _NESTED_STATEMENTS):
            raise _Rejected(f"holds a {_kind(node)} statement")
        if isinstance(node, exp.Func) and _function_name(node) in WRITING_FUNCTIONS:
            raise _Rejected(f"calls {_function_name(node)}(), which changes server state")


def _kind(node: exp.Expr) -> str:
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    return {"TruncateTable": "TRUNCATE", "Alias": "a utility command"}.get(type(node).__name__,
                                                                           type(node).__name__.upper())


def _check_statement(sql: str) -> exp.Expr | None:
    """Raise `_Rejected` unless `sql` is one read-only statement; the query tree checked (None for SHOW)."""
    trees = _parse(sql)
    if not trees:
        raise _Rejected("no statement")
    if len(trees) > 1:
        raise _Rejected("holds more than one statement")
    tree = trees[0]
    if isinstance(tree, exp.Command) and str(tree.this).upper() == "EXPLAIN":
        return _check_explain(str(tree.expression.this if tree.expression is not None else ""))
    if isinstance(tree, exp.Command) and str(tree.this).upper() == "SHOW":
        argument = str(tree.expression.this if tree.expression is not None else "")
        if not _SHOW_RE.match(argument):
            raise _Rejected("SHOW takes one setting name")
        return None
    _check_query_tree(tree)
    return tree


def _check_explain(body: str) -> exp.Expr:
    match = _EXPLAIN_RE.match(body)
    if match is None or _ANALYZE_WORD_RE.search(match.group("options") or ""):
        raise _Rejected("EXPLAIN ANALYZE executes its statement")
    trees = _parse(match.group("rest"))
    if len(trees) != 1:
        raise _Rejected("EXPLAIN must name exactly one query")
    _check_query_tree(trees[0])
    return trees[0]


def _placeholder_count(tree: exp.Expr | None) -> int:
    if tree is None:
        return 0
    numbers = [int(node.this.this) for node in tree.find_all(exp.Parameter)
               if isinstance(node.this, exp.Literal) and not node.this.is_string and str(node.this.this).isdigit()]
    return max(numbers, default=0)


# --- reading an upload -----------------------------------------------------------------------------


def parse_query_set(data: bytes, *, source_format: UploadFormat | None = None,
                    limits: QuerySetLimits | None = None) -> QuerySet:
    """Read an upload into a query set; `source_format` None guesses JSONL when the text starts with `{`."""
    limits = limits or QuerySetLimits()
    if len(data) > limits.max_bytes:
        raise QuerySetTooLarge(f"the upload is {len(data)} bytes; at most {limits.max_bytes} are accepted")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise QuerySetUnreadable(f"the upload is not UTF-8 text (byte {error.start})") from error
    if text.startswith("\ufeff"):
        text = text[1:]
    for number, line_text in enumerate(text.split("\n"), start=1):
        if len(line_text) > limits.max_line_chars:
            raise QuerySetTooLarge(f"line {number} is {len(line_text)} characters; at most "
                                   f"{limits.max_line_chars} are accepted")
    if "\x00" in text:
        raise QuerySetUnreadable("the upload holds a NUL character")
    if source_format is None:
        source_format = "jsonl" if text.lstrip().startswith("{") else "sql"
    candidates = list(_jsonl_candidates(text) if source_format == "jsonl" else _sql_candidates(text))
    if not candidates:
        raise QuerySetUnreadable("the upload holds no statement")
    if len(candidates) > limits.max_statements:
        raise QuerySetTooLarge(f"the upload holds {len(candidates)} statements; at most "
                               f"{limits.max_statements} are accepted")
    accepted: list[QueryStatement] = []
    rejected: list[RejectedStatement] = []
    for candidate in candidates:
        if isinstance(candidate, RejectedStatement):
            rejected.append(candidate)
            continue
        line, sql, params = candidate
        reason = _rejection(sql, params, limits)
        if reason is None:
            accepted.append(QueryStatement(len(accepted) + 1, line, sql, params))
        else:
            rejected.append(RejectedStatement(line, reason, _excerpt(sql)))
    digest = hashlib.sha256(data).hexdigest()
    return QuerySet(id=f"qs_{digest[:32]}", sha256=digest, source_format=source_format,
                    statements=tuple(accepted), rejected=tuple(rejected))


def _rejection(sql: str, params: tuple[ParamValue, ...], limits: QuerySetLimits) -> str | None:
    if len(sql) > limits.max_statement_chars:
        return f"statement is {len(sql)} characters; at most {limits.max_statement_chars} are accepted"
    try:
        tree = _check_statement(sql)
    except _Rejected as rejected:
        return rejected.reason
    needed = _placeholder_count(tree)
    if needed > len(params):
        return (f"uses ${needed} but {len(params)} parameter value(s) are given (pg_stat_statements replaces "
                "constants with $n: export the statements with their values)")
    return None


_Candidate = tuple[int, str, tuple[ParamValue, ...]] | RejectedStatement


def _sql_candidates(text: str) -> Iterator[_Candidate]:
    for chunk in split_sql(text):
        if chunk.has_code:
            yield chunk.line, chunk.text.strip(), ()


def _jsonl_candidates(text: str) -> Iterator[_Candidate]:
    for number, line_text in enumerate(text.split("\n"), start=1):
        if not line_text.strip():
            continue
        try:
            entry = json.loads(line_text)
        except ValueError as error:
            yield RejectedStatement(number, f"not a JSON object: {str(error)[:120]}", _excerpt(line_text))
            continue
        if not isinstance(entry, dict):
            yield RejectedStatement(number, "not a JSON object", _excerpt(line_text))
            continue
        sql = entry.get("sql", entry.get("query"))
        if not isinstance(sql, str) or not sql.strip():
            yield RejectedStatement(number, 'no "sql" (or "query") string', _excerpt(line_text))
            continue
        params = entry.get("params", [])
        if not isinstance(params, list) or not all(_is_param_value(p) for p in params):
            yield RejectedStatement(number, '"params" must be a list of strings, numbers, booleans or nulls',
                                    _excerpt(sql))
            continue
        statement = sql.strip()
        # A history line holds one statement; a trailing `;` is how many exporters end it.
        chunks = [chunk for chunk in split_sql(statement) if chunk.has_code]
        if len(chunks) > 1:
            yield RejectedStatement(number, "holds more than one statement", _excerpt(sql))
            continue
        yield number, (chunks[0].text.strip() if chunks else statement), tuple(params)


def _is_param_value(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _excerpt(sql: str, limit: int = 120) -> str:
    """The start of a statement for the rejection list, literals left in (the uploader wrote them)."""
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"

