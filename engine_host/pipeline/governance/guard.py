"""Parse and guard: exactly one statement, of an allowed kind, with nothing that escapes the policies.

The guard works on sqlglot's tree of the client's text, read in the session dialect. Everything that
reaches DuckDB is generated from that tree (see `transpile`), so what is checked here is what runs.
The rules follow DESIGN.md: an allowlist of statement kinds, no `exp.Command` anywhere, and a
denylist of DuckDB functions and relations that read files, settings, secrets, variables or the
catalog behind the policies' back.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from engine_host.pipeline.errors import (
    QueryError,
    statement_too_complex,
    syntax_error_at_end,
    syntax_error_near,
    unknown_relation,
)
from hd_core.sql_calls import BARE_FUNCTIONS
from hd_core.sql_functions import (
    ALLOWED_FUNCTIONS,
    ALLOWED_TABLE_FUNCTIONS,
    REFUSED,
    SESSION_VALUE_FUNCTIONS,
    SYNTAX_FORMS,
)

# Relations in these schemas are machinery (our macros, DuckDB's and Postgres' catalogs, temp objects).
DENIED_SCHEMAS = frozenset({"hd_pg", "hd_keys", "pg_catalog", "information_schema", "system", "temp"})
CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
# The engine's catalogs (hd_data holds the data, hd_keys the mask keys) and any schema named like them
# are never client names: DuckDB would resolve `hd_data.t` to the raw table `hd_data.main.t`.
INTERNAL_PREFIX = "hd_"
_DUCKDB_CATALOGS = frozenset({"memory", "system", "temp"})
# Schemas a function may be qualified with (DuckDB built-ins live in both).
FUNCTION_SCHEMAS = frozenset({"main", "pg_catalog"})
# Functions the catalog layer answers for driver catalog queries (pgcompat/catalog/), besides any
# pg_* or has_*_privilege name: allowed in catalog statements only, which run our SQL, not DuckDB's.
_CATALOG_FUNCTIONS = frozenset({
    "current_setting", "set_config", "version", "format_type", "obj_description", "col_description",
    "shobj_description", "to_regclass", "to_regtype", "to_regproc", "to_regnamespace", "to_regrole",
    "current_database", "current_catalog", "current_schema", "current_schemas", "current_user", "session_user",
    "current_role", "user", "txid_current", "inet_server_addr", "inet_server_port", "inet_client_addr",
    "inet_client_port", "getdatabaseencoding", "generate_subscripts", "getpgusername", "quote_ident",
    "json_build_object", "jsonb_build_object", "array_upper", "array_lower", "array_length", "array_ndims",
    "cardinality", "_pg_expandarray", "all",
})
# sqlglot function classes that DuckDB reads as syntax, not as a call of that name.
_SYNTAX_NODES: tuple[type[exp.Expr], ...] = (
    exp.Cast, exp.TryCast, exp.Case, exp.And, exp.Or, exp.Xor, exp.Not, exp.Exists, exp.Extract, exp.Struct,
    exp.Array, exp.Collate, exp.Interval, exp.Paren)
_CALL = re.compile(r'\s*"?([A-Za-z_][\w$]*)"?\s*(\(|$)')

_EXPLAIN = re.compile(r"explain(?![\w$])", re.IGNORECASE)
_EXPLAIN_OPTIONS = re.compile(r"(analy[sz]e|verbose|costs|format|using|query\s+plan|plan)(?![\w$])|\(",
                              re.IGNORECASE)



@dataclass(frozen=True)
class ParsedStatement:
    """One parsed client statement: the tree, the dialect it was read in, and whether it was EXPLAINed.

    `text` is the exact text sqlglot parsed (after a stripped EXPLAIN); node positions refer to it.
    """

    tree: exp.Expr
    dialect: str
    explain: bool = False
    text: str = ""


@dataclass(frozen=True)
class StatementInfo:
    """What the guard found: the statement kind, and for EXPLAIN the kind of the explained statement."""

    kind: str
    explained: str | None = None


# Statements of DuckDB (and Postgres) that sqlglot may read as a bare expression: refused by name.
_STATEMENT_WORDS = frozenset({"CHECKPOINT", "FORCE", "SUMMARIZE", "PRAGMA", "ATTACH", "DETACH", "INSTALL", "LOAD",
                              "EXPORT", "IMPORT", "VACUUM", "ANALYZE", "CALL", "USE", "DESCRIBE", "SHOW", "RESET",
                              "SET", "COPY", "UNLISTEN", "LISTEN", "NOTIFY", "REINDEX", "CLUSTER", "LOCK"})


def _first_word(node: exp.Expr) -> str:
    column = node.find(exp.Column, exp.Identifier)
    return (column.name if column is not None else "").upper()


def not_allowed(what: str, hint: str | None = None) -> QueryError:
    return QueryError("42501", "HD_ERR_STATEMENT_NOT_ALLOWED", f"{what} statements are not allowed",
                      hint=hint or "Use SELECT, INSERT, UPDATE, DELETE, CREATE/DROP/ALTER TABLE or EXPLAIN.")


def function_not_allowed(name: str) -> QueryError:
    return QueryError("42501", "HD_ERR_FUNCTION_NOT_ALLOWED", f"function {name} is not allowed",
                      hint="Query tables through SQL; file, catalog, setting and engine functions are refused.")


def unsupported(message: str, hint: str | None = None) -> QueryError:
    return QueryError("0A000", "HD_ERR_UNSUPPORTED", message, hint=hint)


# --- parsing ------------------------------------------------------------------------------------------


def _skip_comments(sql: str, pos: int = 0) -> int:
    """Index of the first character at or after `pos` that is not whitespace or a comment."""
    n = len(sql)
    while pos < n:
        if sql[pos].isspace():
            pos += 1
        elif sql.startswith("--", pos):
            end = sql.find("\n", pos)
            pos = n if end < 0 else end + 1
        elif sql.startswith("/*", pos):
            depth, pos = 1, pos + 2
            while pos < n and depth:
                if sql.startswith("/*", pos):
                    depth, pos = depth + 1, pos + 2
                elif sql.startswith("*/", pos):
                    depth, pos = depth - 1, pos + 2
                else:
                    pos += 1
        else:
            break
    return pos


# Limits checked before sqlglot parses, since its parser (and the generator, the rewrite and the
# audit's redaction after it) recurse at least once per nesting level: at about 400 nested brackets
# Python's recursion limit is reached, and a RecursionError used to end the connection. 128 levels
# are far deeper than hand-written or BI-generated SQL nests and leave the later stages room to
# recurse. 1 MiB of text is far above real statements (a 10,000-value IN list is ~100 KiB), keeps a
# parse to about a second and bounds what the plan cache and the audit record hold per statement.
MAX_STATEMENT_CHARS = 1024 * 1024
MAX_NESTING_DEPTH = 128

log = logging.getLogger(__name__)

_OPENERS = frozenset({TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE, TokenType.CASE})
_CLOSERS = frozenset({TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE, TokenType.END})


def nesting_depth(tokens: Sequence[Token]) -> int:
    """How deep ( [ { and CASE ... END nest in `tokens` (strings, quoted names and comments are single tokens).

    Chained subscripts count as nesting, since `a[1][2]` is `(a[1])[2]` in the tree and sqlglot
    re-types the whole chain at every subscript (5,000 of them took minutes to parse).
    """
    chains = [0]  # per open level: the subscripts chained so far at that level
    chained = deepest = 0  # chained: sum(chains)
    previous: TokenType | None = None
    for token in tokens:
        kind = token.token_type
        if previous is TokenType.R_BRACKET and kind is not TokenType.L_BRACKET:
            chained -= chains[-1]
            chains[-1] = 0
        if kind in _OPENERS:
            if kind is TokenType.L_BRACKET and previous is TokenType.R_BRACKET:
                chains[-1] += 1
                chained += 1
            chains.append(0)
            deepest = max(deepest, len(chains) - 1 + chained)
        elif kind in _CLOSERS and len(chains) > 1:
            chained -= chains.pop()
        previous = kind
    return deepest


def _check_size(sql: str) -> None:
    if len(sql) > MAX_STATEMENT_CHARS:
        log.warning("statement refused: %d characters, over the limit of %d", len(sql), MAX_STATEMENT_CHARS)
        raise statement_too_complex(
            f"statement too long: {len(sql)} characters, over the limit of {MAX_STATEMENT_CHARS} characters")


def _check_nesting(tokens: Sequence[Token]) -> None:
    depth = nesting_depth(tokens)
    if depth > MAX_NESTING_DEPTH:
        log.warning("statement refused: nested %d levels deep, over the limit of %d", depth, MAX_NESTING_DEPTH)
        raise statement_too_complex(
            f"statement too deeply nested: brackets, subscripts and CASE expressions nest {depth} levels deep, "
            f"over the limit of {MAX_NESTING_DEPTH} levels")


# What `space_parameters` must step over: comments, strings, quoted names, dollar quotes, words
# (a `$` inside a word is part of the name), and the parameters themselves.
_LEXEME = re.compile(r"""--|/\*|[Ee]'|'|"|\$(?:[^\W\d][\w]*)?\$|\$\d+|\w[\w$]*""")
_STRING_BODY = re.compile(r"(?:[^']++|'')*+")
_ESCAPE_STRING_BODY = re.compile(r"(?:[^'\\]++|\\.|'')*+", re.DOTALL)
_IDENTIFIER_BODY = re.compile(r'(?:[^"]++|"")*+')
_BLOCK_COMMENT_EDGE = re.compile(r"/\*|\*/")


@dataclass(frozen=True)
class _Lexeme:
    """One lexeme `space_parameters` and the syntax errors care about: where it starts and ends, and
    for a string, quoted name, comment or dollar quote whether its closing delimiter was found."""

    text: str
    start: int
    end: int
    closed: bool = True


def _lexemes(sql: str) -> Iterator[_Lexeme]:
    """Comments, strings, quoted names, dollar quotes, words and parameters of `sql`, in order (one pass)."""
    pos = 0
    n = len(sql)
    while (match := _LEXEME.search(sql, pos)) is not None:
        lexeme, start, pos = match.group(), match.start(), match.end()
        closed = True
        if lexeme == "--":
            end = sql.find("\n", pos)
            pos = n if end < 0 else end + 1
        elif lexeme == "/*":
            depth = 1
            for edge in _BLOCK_COMMENT_EDGE.finditer(sql, pos):
                depth += 1 if edge.group() == "/*" else -1
                pos = edge.end()
                if depth == 0:
                    break
            closed, pos = depth == 0, pos if depth == 0 else n
        elif lexeme in ("'", "E'", "e'", '"'):
            body_pattern = (_STRING_BODY if lexeme == "'" else _IDENTIFIER_BODY if lexeme == '"'
                            else _ESCAPE_STRING_BODY)
            body = body_pattern.match(sql, pos)
            pos = (body.end() if body else pos) + 1
            closed, pos = pos <= n, min(pos, n)
        elif lexeme[0] == "$" and lexeme[-1] == "$" and len(lexeme) > 1:
            end = sql.find(lexeme, pos)
            closed, pos = end >= 0, n if end < 0 else end + len(lexeme)
        yield _Lexeme(lexeme, start, pos, closed)


def parameter_gaps(sql: str) -> list[int]:
    """Offsets in `sql` right after each `$n` placeholder that a character other than whitespace follows.

    Text inside strings, quoted names, comments and dollar quotes is stepped over.
    """
    n = len(sql)
    return [lexeme.end for lexeme in _lexemes(sql)
            if lexeme.text[0] == "$" and lexeme.text[-1] != "$" and lexeme.end < n and not sql[lexeme.end].isspace()]


def space_parameters(sql: str) -> str:
    """`sql` with a space after every `$n` placeholder that a character other than whitespace follows.

    sqlglot's tokenizer reads `$1,$2` as the start of a dollar-quoted string tagged `1,` and fails
    ("Error tokenizing"), or, when the text further on happens to hold `$1,$` (in a string, say),
    reads everything up to it as one string; PostgreSQL and DuckDB read two parameters, and psycopg
    turns `%s,%s` into exactly that. A `$` followed by a digit never opens a dollar quote in
    PostgreSQL, so the space changes nothing but sqlglot's reading.
    """
    gaps = parameter_gaps(sql)
    if not gaps:
        return sql
    pieces: list[str] = []
    last = 0
    for gap in gaps:
        pieces += (sql[last:gap], " ")
        last = gap
    return "".join(pieces) + sql[last:]


def parse_statement(sql: str, dialect: str = "postgres") -> ParsedStatement:
    """Parse exactly one statement in `dialect`; a plain leading EXPLAIN is stripped and remembered.

    Statements over `MAX_STATEMENT_CHARS` or nested deeper than `MAX_NESTING_DEPTH` are refused
    (54001) before the parser sees them.
    """
    _check_size(sql)
    start = _skip_comments(sql)
    explain = False
    offset = 0  # where the parsed text starts in the client's
    match = _EXPLAIN.match(sql, start)
    if match:
        after = _skip_comments(sql, match.end())
        if _EXPLAIN_OPTIONS.match(sql, after):
            raise not_allowed("EXPLAIN with options (ANALYZE, VERBOSE, FORMAT, ...)",
                              hint="Use plain EXPLAIN <statement>; EXPLAIN ANALYZE runs the statement.")
        explain, sql, offset = True, sql[after:], after
    reader = sqlglot.Dialect.get_or_raise(dialect)
    written = sql
    gaps = parameter_gaps(sql) if "$" in sql else []
    if gaps:
        sql = space_parameters(sql)
    try:
        # Tokenized once: the nesting check reads the tokens the parser then parses (as sqlglot.parse does).
        tokens = reader.tokenize(sql)
        _check_nesting(tokens)
        statements = [s for s in reader.parser().parse(tokens, sql) if s is not None]
    except TokenError:
        raise _token_error(written, offset) from None
    except ParseError as exc:
        raise _parse_error(exc, sql, written, offset, gaps) from None
    except RecursionError:  # a nesting the check does not count (a chain of NOT or unary minus)
        log.warning("statement refused: too deeply nested to parse (RecursionError)")
        raise statement_too_complex(
            f"statement too deeply nested to parse (the limit is {MAX_NESTING_DEPTH} levels; "
            "chains of NOT or unary operators count as nesting)") from None
    for statement in statements:
        _read_all_as_quantifier(statement)
    if not statements:
        raise QueryError("42601", "HD_ERR_SYNTAX", "empty statement", hint="Send one SQL statement.")
    if len(statements) > 1:
        raise QueryError("42601", "HD_ERR_MULTIPLE_STATEMENTS",
                         f"one statement per query is allowed, got {len(statements)}",
                         hint="Send the statements one at a time.")
    return ParsedStatement(tree=statements[0], dialect=dialect, explain=explain, text=sql)


def _is_all_quantifier(node: exp.Expr) -> bool:
    """Whether `node` is the ALL of `x op ALL(array)`, which sqlglot reads as a call of a function `all`."""
    parent = node.parent
    return (isinstance(node, exp.Anonymous) and node.name.lower() == "all" and len(node.expressions) == 1
            and isinstance(parent, exp.Binary) and parent.expression is node
            and not isinstance(parent, (exp.Connector, exp.Dot)))


def _read_all_as_quantifier(tree: exp.Expr) -> None:
    """`x op ALL(array)` as the quantified comparison it is in PostgreSQL and DuckDB."""
    for node in list(tree.find_all(exp.Anonymous)):
        if _is_all_quantifier(node):
            node.replace(exp.All(this=exp.Paren(this=node.expressions[0])))


def _original_offset(spaced: int, gaps: Sequence[int]) -> int:
    """An offset in the text `space_parameters` returned, as an offset in the text it was given."""
    return spaced - bisect.bisect_left([gap + i for i, gap in enumerate(gaps)], spaced)


_FIRST_WORD = re.compile(r"[A-Za-z_]\w*")
# The words a PostgreSQL statement can begin with (gram.y's stmt alternatives).
_STATEMENT_STARTS = frozenset({
    "ABORT", "ALTER", "ANALYZE", "ANALYSE", "BEGIN", "CALL", "CHECKPOINT", "CLOSE", "CLUSTER", "COMMENT", "COMMIT",
    "COPY", "CREATE", "DEALLOCATE", "DECLARE", "DELETE", "DISCARD", "DO", "DROP", "END", "EXECUTE", "EXPLAIN",
    "FETCH", "GRANT", "IMPORT", "INSERT", "LISTEN", "LOAD", "LOCK", "MERGE", "MOVE", "NOTIFY", "PREPARE",
    "REASSIGN", "REFRESH", "REINDEX", "RELEASE", "RESET", "REVOKE", "ROLLBACK", "SAVEPOINT", "SECURITY", "SELECT",
    "SET", "SHOW", "START", "TABLE", "TRUNCATE", "UNLISTEN", "UPDATE", "VACUUM", "VALUES", "WITH",
})


def _parse_error(exc: ParseError, sql: str, written: str, offset: int, gaps: Sequence[int]) -> QueryError:
    """PostgreSQL's words for a statement sqlglot could not parse: the token, or the end of the input.

    sqlglot's own message names its token classes and expression classes; the client sees neither.
    """
    begin = _skip_comments(written)
    word = _FIRST_WORD.match(written, begin)
    if word is not None and word.group().upper() not in _STATEMENT_STARTS:
        return syntax_error_near(word.group(), offset + begin)  # PostgreSQL's grammar fails on the first word
    first = exc.errors[0] if exc.errors else {}
    highlight = str(first.get("highlight") or "")
    line, col = int(first.get("line") or 0), int(first.get("col") or 0)
    if not highlight or not line:
        return syntax_error_at_end(offset + len(written))
    line_start = sum(len(part) + 1 for part in sql.split("\n")[:line - 1])
    start = _original_offset(max(line_start + col - len(highlight), 0), gaps)
    if highlight.isdigit() and start > 0 and written[start - 1] == "$":  # sqlglot's token of `$n` is `n`
        start, highlight = start - 1, "$" + highlight
    end = start + len(highlight)
    unexpected = str(first.get("description") or "").startswith("Invalid expression / Unexpected token")
    if not unexpected and _skip_comments(written, end) >= len(written.rstrip(" \t\r\n;")):
        return syntax_error_at_end(offset + len(written))
    return syntax_error_near(written[start:end] or highlight, offset + start)


def _token_error(written: str, offset: int) -> QueryError:
    """PostgreSQL's words for text sqlglot could not split into tokens: what is left open, where."""
    for lexeme in _lexemes(written):
        if not lexeme.closed:
            what = {"'": "quoted string", "E'": "quoted string", "e'": "quoted string", '"': "quoted identifier",
                    "/*": "/* comment"}.get(lexeme.text, "dollar-quoted string")
            return syntax_error_near(written[lexeme.start:], offset + lexeme.start, f"unterminated {what}")
    return syntax_error_at_end(offset + len(written))


# --- statement kinds ------------------------------------------------------------------------------------


def _kind_name(node: exp.Expr) -> str:
    """How a refused statement is named in the error: CREATE VIEW, LOAD, PRAGMA, ..."""
    if isinstance(node, exp.Command):
        return str(node.name or node.this).upper()
    if isinstance(node, (exp.Create, exp.Drop)):
        verb = "CREATE" if isinstance(node, exp.Create) else "DROP"
        return f"{verb} {str(node.args.get('kind') or '').upper()}".strip()
    if isinstance(node, (exp.Column, exp.Identifier, exp.Var)):
        return node.name.upper()
    return type(node).__name__.upper()


def _is_temporary(node: exp.Create) -> bool:
    props = node.args.get("properties")
    return props is not None and any(isinstance(p, exp.TemporaryProperty) for p in props.expressions)


def _statement_kind(node: exp.Expr, text: str = "") -> str:
    if isinstance(node, (exp.Query, exp.Values)) or (
            isinstance(node, exp.Subquery) and isinstance(node.unnest(), (exp.Query, exp.Values))):
        return "select"
    if isinstance(node, exp.Insert):
        return _insert_kind(node)
    if isinstance(node, exp.Update):
        return "update"
    if isinstance(node, exp.Delete):
        return "delete"
    if isinstance(node, exp.Create):
        return _create_kind(node)
    if isinstance(node, exp.Drop):
        if str(node.args.get("kind") or "").upper() != "TABLE" or node.args.get("temporary"):
            raise not_allowed(_kind_name(node), hint="Only DROP TABLE is allowed.")
        return "drop_table"
    if isinstance(node, exp.Alter):
        return _alter_kind(node)
    if isinstance(node, exp.Pivot):
        raise not_allowed("PIVOT", hint="Write it as SELECT ... FROM t PIVOT (...).")
    if isinstance(node, exp.Condition | exp.Alias) and _first_word(node) not in _STATEMENT_WORDS:
        # sqlglot reads some garbage as a bare expression (`SELEC x` is a column aliased x):
        # to a client that is a syntax error, as Postgres reports it.
        start = _skip_comments(text)
        word = re.match(r"[^\s(;]+", text[start:])
        raise syntax_error_near(word.group() if word else text[start:start + 1], start)
    raise not_allowed(_kind_name(node))


def _insert_kind(node: exp.Insert) -> str:
    conflict = node.args.get("conflict")
    action = str(conflict.args.get("action") or "").upper() if conflict is not None else ""
    alternative = str(node.args.get("alternative") or "").upper()
    if (conflict is not None and (conflict.args.get("duplicate") or "UPDATE" in action)) or alternative == "REPLACE":
        raise unsupported("INSERT ... ON CONFLICT DO UPDATE (upsert) is not supported",
                          hint="Insert the new rows and UPDATE the existing ones in two statements.")
    if alternative and alternative != "IGNORE":
        raise unsupported(f"INSERT OR {alternative} is not supported", hint="Use a plain INSERT.")
    if node.args.get("overwrite") or node.args.get("is_function") or node.args.get("partition"):
        raise unsupported("this form of INSERT is not supported", hint="Use INSERT INTO table [(columns)] ...")
    return "insert"


def _create_kind(node: exp.Create) -> str:
    kind = str(node.args.get("kind") or "").upper()
    if _is_temporary(node):
        raise not_allowed(f"CREATE TEMPORARY {kind}".strip(), hint="Create a regular table instead.")
    if kind == "SCHEMA":
        target = node.this
        name = (target.db if isinstance(target, exp.Table) else target.name) or ""
        if name.lower() in DENIED_SCHEMAS | {"main"} or is_internal_name(name):
            raise not_allowed(f"CREATE SCHEMA {name}", hint="Choose another schema name.")
        return "create_schema"
    if kind != "TABLE":
        raise not_allowed(_kind_name(node), hint="Only CREATE TABLE [AS] and CREATE SCHEMA are allowed.")
    return "create_table_as" if node.args.get("expression") is not None else "create_table"


_ALTER_ACTIONS = (exp.ColumnDef, exp.AlterColumn, exp.RenameColumn)


def _alter_kind(node: exp.Alter) -> str:
    if str(node.args.get("kind") or "").upper() != "TABLE":
        raise not_allowed(f"ALTER {str(node.args.get('kind') or '').upper()}".strip(),
                          hint="Only ALTER TABLE is allowed.")
    for action in node.args.get("actions") or []:
        if isinstance(action, exp.AlterRename):
            raise not_allowed("ALTER TABLE ... RENAME TO",
                              hint="Policies follow table names: create the new table and copy the rows instead.")
        if isinstance(action, exp.Drop) and str(action.args.get("kind") or "").upper() == "COLUMN":
            continue
        if not isinstance(action, _ALTER_ACTIONS):
            raise unsupported("this ALTER TABLE action is not supported",
                              hint="ALTER TABLE may add, drop, alter or rename columns.")
    return "alter_table"


# --- functions and relations ----------------------------------------------------------------------------


def written_name(node: exp.Func, text: str) -> str:
    """The function name as the client wrote it (sqlglot keeps its position), else sqlglot's name."""
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    meta = node.meta
    start, end = meta.get("start"), meta.get("end")
    if isinstance(start, int) and isinstance(end, int) and 0 <= start <= end < len(text):
        written = text[start:end + 1].strip('"`[] ').lower()
        if re.fullmatch(r"[\w$]+", written):
            return written
    return node.sql_name().lower()


def _function_names(node: exp.Func, text: str) -> set[str]:
    names = {written_name(node, text)}
    if not isinstance(node, exp.Anonymous):
        names.add(node.sql_name().lower())
        names.update(n.lower() for n in getattr(type(node), "_sql_names", ()) or ())
    return names


def _catalog_answered(name: str) -> bool:
    return (name in _CATALOG_FUNCTIONS or name.startswith("pg_")
            or (name.startswith("has_") and name.endswith("_privilege")))


def may_call(name: str, *, catalog: bool = False) -> bool:
    """Whether a client statement may call the (lower-case) function `name`: the allow list of
    hd_core.sql_functions, plus in catalog statements the functions the catalog layer answers."""
    return (name in ALLOWED_FUNCTIONS or name in ALLOWED_TABLE_FUNCTIONS or name in SYNTAX_FORMS
            or (catalog and _catalog_answered(name)))


def duckdb_call_name(node: exp.Func, text: str) -> str | None:
    """The function DuckDB calls for `node` of a tree parsed from `text` (DuckDB SQL), or None if it is syntax.

    The name as written in `text` where sqlglot kept its position, else the leading word of the node's
    DuckDB SQL: for a tree parsed from DuckDB SQL that is the text DuckDB runs.
    """
    if isinstance(node, _SYNTAX_NODES) or (isinstance(node, exp.If) and isinstance(node.parent, exp.Case)):
        # A CASE's WHEN ... THEN branch calls nothing (what it holds is checked as nodes of its own); generating
        # each branch's SQL to read its first word cost time quadratic in the nesting (PostgreSQL's numeric
        # division nests CASEs: ~7 ms per statement with an avg()).
        return None
    if isinstance(node, exp.Anonymous) or node.meta.get("start") is not None:
        return written_name(node, text)
    match = _CALL.match(node.sql(dialect="duckdb"))
    return match.group(1).lower() if match else None


def check_functions(tree: exp.Expr, text: str, *, catalog: bool = False, generated: bool = False,
                    internal: frozenset[str] = frozenset()) -> None:
    """Refuse calls of functions not on the allow list, and functions qualified with a schema other than
    main/pg_catalog.

    On a client's tree (`generated` False) names sqlglot does not know, which reach DuckDB as written,
    must be allowed and known ones must not be refused by name; on the DuckDB SQL we generate
    (`generated` True) every call DuckDB will make must be allowed, or be one of `internal` (the
    rewrite's own `schema.name` macros and plain names).
    """
    for node in tree.find_all(exp.Func):
        if isinstance(node, exp.Command) or _is_all_quantifier(node):
            continue
        name = duckdb_call_name(node, text) if generated else written_name(node, text)
        if name is None:
            continue  # syntax (CAST, CASE, AND, ...), not a call
        parent = node.parent
        if isinstance(parent, exp.Dot) and parent.expression is node:
            qualifier = parent.this
            schema = qualifier.name.lower() if isinstance(qualifier, (exp.Identifier, exp.Column)) else ""
            if not (isinstance(qualifier, exp.Identifier) and (schema in FUNCTION_SCHEMAS or (
                    catalog and schema == "information_schema" and _catalog_answered(name)))):
                if f"{schema}.{name}" in internal:
                    continue
                raise function_not_allowed(f"{qualifier.sql()}.{written_name(node, text)}")
        if generated:
            if not may_call(name) and name not in internal:
                raise function_not_allowed(name)
        elif isinstance(node, exp.Anonymous):
            if not may_call(name, catalog=catalog):
                raise function_not_allowed(name)
        elif any(not (catalog and _catalog_answered(n))
                 for n in _function_names(node, text) & REFUSED - SESSION_VALUE_FUNCTIONS):
            raise function_not_allowed(name)
    if generated:
        for column in tree.find_all(exp.Column):
            bare = column.name.lower()
            # A bare function name DuckDB calls unless the table has such a column (`user` is the user).
            if not column.table and bare in BARE_FUNCTIONS and not may_call(bare):
                raise function_not_allowed(bare)


def _check_relation(table: exp.Table, text: str, catalog: bool) -> None:
    target = table.this
    if isinstance(target, exp.Func):
        names = _function_names(target, text)
        name = written_name(target, text)
        is_allowed = bool(names & ALLOWED_TABLE_FUNCTIONS) or isinstance(
            target, (exp.GenerateSeries, exp.ExplodingGenerateSeries, exp.Unnest))
        if catalog and (name.startswith("pg_") or may_call(name, catalog=True)):
            is_allowed = True  # the catalog layer answers a callable scalar in FROM as one row
        if not is_allowed or (table.args.get("db") is not None and table.db.lower() not in FUNCTION_SCHEMAS):
            raise function_not_allowed(name)
        return
    if target is None:
        return  # CREATE SCHEMA's name, checked with the statement
    if not isinstance(target, exp.Identifier):
        raise unsupported(f"{table.sql()} cannot be used as a table", hint="Name a table.")
    if target.quoted and re.search(r"[./\\:*?]", target.name):
        raise QueryError("42501", "HD_ERR_FUNCTION_NOT_ALLOWED",
                         f"reading files ({target.name!r}) is not allowed",
                         hint="Query the warehouse's tables by name.")
    schema = table.db.lower()
    if table.catalog.lower() in DENIED_SCHEMAS:  # DuckDB's `system` and `temp` databases
        schema = table.catalog.lower()
    if schema in DENIED_SCHEMAS and not (catalog and schema in CATALOG_SCHEMAS):
        raise QueryError("42501", "HD_ERR_STATEMENT_NOT_ALLOWED",
                         f"relations in schema {schema} are not accessible",
                         hint="Use the Postgres catalog through your client's metadata calls, or query user tables.")
    if is_internal_name(schema) or is_internal_name(table.catalog):
        raise unknown_table(table)  # other catalog names resolve to nothing (TableCatalog.resolve)


def is_internal_name(name: str) -> bool:
    """Whether a schema or catalog name is the engine's own (`hd_data`, `hd_keys`, `hd_pg`, DuckDB's `memory`)."""
    name = name.lower()
    return name.startswith(INTERNAL_PREFIX) or name in _DUCKDB_CATALOGS


def unknown_table(table: exp.Table) -> QueryError:
    """`errors.unknown_relation` for a table reference, named as the client spelled it."""
    return unknown_relation(".".join(part.name for part in table.parts))


_NESTED_STATEMENTS = (exp.Insert, exp.Update, exp.Delete, exp.Create, exp.Drop, exp.Alter, exp.Merge,
                      exp.Command, exp.Pragma, exp.Set, exp.Copy, exp.Use, exp.Describe, exp.Show)


def check_statement(parsed: ParsedStatement, *, catalog: bool = False) -> StatementInfo:
    """Refuse any statement kind, function or relation that could escape the policies (allow lists)."""
    tree = parsed.tree
    kind = _statement_kind(tree, parsed.text)
    for node in tree.walk():
        if node is tree:
            continue
        if isinstance(node, exp.Command):
            raise not_allowed(_kind_name(node))
        if isinstance(node, _NESTED_STATEMENTS) and not _is_ddl_part(node, tree):
            raise not_allowed(f"nested {_kind_name(node)}", hint="Send data-changing statements on their own.")
        if isinstance(node, exp.Table):
            _check_relation(node, parsed.text, catalog)
    check_functions(tree, parsed.text, catalog=catalog)
    if parsed.explain:
        return StatementInfo(kind="explain", explained=kind)
    return StatementInfo(kind=kind)


def _is_ddl_part(node: exp.Expr, root: exp.Expr) -> bool:
    """ALTER TABLE ... DROP COLUMN is an exp.Drop inside the Alter; it is part of the statement, not nested."""
    return isinstance(root, exp.Alter) and isinstance(node, exp.Drop) and node.parent is root
