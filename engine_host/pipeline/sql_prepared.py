"""SQL-level PREPARE, EXECUTE and DEALLOCATE, as PostgreSQL 15 answers them.

A session has one namespace of prepared statements (`Session.statements`), shared with the wire
protocol's Parse as in PostgreSQL: a PREPAREd statement can be Bound, a Parse'd named one EXECUTEd,
and DEALLOCATE drops either kind.

- `PREPARE name [(type, ...)] AS statement` prepares `statement` through the pipeline's one path
  (`StatementPipeline.prepare`: guard, tables, policies, rewrite; a refusal is audited there), the
  declared types, resolved by name against the type table, becoming its parameter types.
- `EXECUTE name [(argument, ...)]` runs it exactly as the protocol's Bind and Execute would: each
  argument must be a constant (a literal, a cast of one, NULL, a negative number, an ARRAY of them),
  read from sqlglot's tree and never pasted into SQL; its text form is decoded by the parameter's
  own decoder, and the statement executes through `StatementPipeline.execute`, which re-plans it
  against the current policy snapshot and admits it. Its audit record is the prepared statement's
  (text, tables, outcome), as the record of an Execute of a Parse'd statement is: the arguments are
  parameter values, which no record carries. An EXECUTE refused before that (unknown name, wrong
  number of arguments, an argument that is no constant) is audited here with statement kind
  `execute`.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING

from sqlglot import exp, parse_one
from sqlglot.errors import SqlglotError

from engine_host.pgcompat.types.decoding import decode_parameter
from engine_host.pgcompat.types.parameter_format import ParameterFormatError
from engine_host.pgcompat.types.table import SQL_TYPE_NAMES, TYPE_BY_NAME, PgType, pg_type_by_oid
from engine_host.pipeline import errors
from engine_host.pipeline.cursors import IDENT, Audited, cursor_name
from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.results import Outcome, ResultColumn
from engine_host.pipeline.session import FAILED_TRANSACTION, Session

if TYPE_CHECKING:
    from engine_host.pipeline.pipeline import PreparedStatement, StatementPipeline

AUDIT_KIND = "execute"
_INTEGERS = frozenset({"int2", "int4", "int8"})
# The statements PostgreSQL's PREPARE accepts (gram.y's PreparableStmt), as DuckDB names their types.
_PREPARABLE = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "MERGE_INTO"})

_PREPARE = re.compile(
    r"^\s*PREPARE\s+" + IDENT + r"\s*(?:\((?P<types>[^()]*(?:\([^()]*\)[^()]*)*)\))?\s*AS\s+(?P<query>.+?)\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_EXECUTE = re.compile(r"^\s*EXECUTE\s+" + IDENT + r"\s*(?:\((?P<args>.*)\))?\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_DEALLOCATE = re.compile(r"^\s*DEALLOCATE\s+(?:PREPARE\s+)?(?:(?P<all>ALL)|" + IDENT + r")\s*;?\s*$",
                         re.IGNORECASE | re.DOTALL)
_TWO_PHASE = re.compile(r"^\s*PREPARE\s+TRANSACTION\b", re.IGNORECASE)


class SqlPreparedStatements:
    """PREPARE, EXECUTE and DEALLOCATE for the sessions of one pipeline."""

    def __init__(self, pipeline: StatementPipeline):
        self._pipeline = pipeline

    def prepare(self, session: Session, text: str) -> Outcome:
        """PREPARE: the statement prepared through the pipeline and kept under its name (42P05 if taken)."""
        from engine_host.pipeline.pipeline import Kind, statement_kind  # the pipeline module imports this one
        if _TWO_PHASE.match(text):
            raise errors.unsupported("PREPARE TRANSACTION is not supported",
                                     hint="Hardened Duck has no two-phase commit; use COMMIT.")
        m = _PREPARE.match(text)
        if m is None:
            raise errors.syntax_error("could not parse this PREPARE statement")
        name = cursor_name(m, text)
        if name in session.statements:
            raise QueryError("42P05", "HD_ERR_DUPLICATE_STATEMENT", f'prepared statement "{name}" already exists')
        oids = tuple(_declared_oid(t, m.start("types") + t_start)
                     for t, t_start in _type_list(m.group("types") or ""))
        query = m.group("query")
        if statement_kind(query) is not Kind.ENGINE:
            raise errors.syntax_error_near(query.split(None, 1)[0], m.start("query"))
        try:
            # A refusal here is audited by the pipeline's `govern` stage, with the statement prepared.
            prepared = self._pipeline.prepare(session, query, oids)
        except QueryError as exc:
            raise Audited(_offset(exc, m.start("query"))) from None
        if prepared.statement_type not in _PREPARABLE:
            raise errors.syntax_error_near(query.split(None, 1)[0], m.start("query"))
        self._pipeline.parameter_types(session, prepared)  # binds now, so errors surface at PREPARE
        session.statements[name] = prepared
        return Outcome(tag="PREPARE")

    def execute(self, session: Session, prepared: PreparedStatement) -> Outcome:
        """EXECUTE: the named statement run with the arguments as its parameters, like a Bind and Execute."""
        pipeline = self._pipeline
        try:
            if session.transaction_status == FAILED_TRANSACTION:
                raise errors.transaction_aborted()
            statement, params = self._bound(session, prepared.text)
        except QueryError as exc:
            session.statement_failed()
            pipeline.record_unadmitted(session, prepared.text, exc, kind=AUDIT_KIND)
            raise
        return pipeline.execute(session, statement, params)

    def result_columns(self, session: Session, prepared: PreparedStatement) -> list[ResultColumn] | None:
        """The columns an EXECUTE returns (a Describe of it); None where EXECUTE itself will fail, audited."""
        try:
            statement, params = self._bound(session, prepared.text)
            return self._pipeline.result_columns(session, statement, params)
        except QueryError:
            return None

    def deallocate(self, session: Session, text: str) -> Outcome:
        """DEALLOCATE [PREPARE] name | ALL: drops statements PREPAREd or Parse'd (26000 if there is none)."""
        m = _DEALLOCATE.match(text)
        if m is None:
            raise errors.syntax_error("could not parse this DEALLOCATE statement")
        if m.group("all"):
            deallocate_all(session)
            return Outcome(tag="DEALLOCATE ALL")
        name = cursor_name(m, text)
        if session.statements.pop(name, None) is None:
            raise _no_such_statement(name)
        return Outcome(tag="DEALLOCATE")

    def _bound(self, session: Session, text: str) -> tuple[PreparedStatement, list[bytes | None]]:
        """The statement an EXECUTE names and its arguments, in text format, as a Bind would carry them."""
        from engine_host.pipeline.pipeline import Kind  # the pipeline module imports this one
        m = _EXECUTE.match(text)
        if m is None:
            raise errors.syntax_error("could not parse this EXECUTE statement")
        name = cursor_name(m, text)
        statement = session.statements.get(name)
        if statement is None:
            raise _no_such_statement(name)
        if statement.kind in (Kind.PREPARE, Kind.EXECUTE) or statement.statement_type == "EMPTY":
            raise errors.unsupported(f'prepared statement "{name}" cannot be run by EXECUTE',
                                     hint="EXECUTE runs a prepared query, INSERT, UPDATE, DELETE or MERGE.")
        arguments = _arguments(m.group("args"), m.start("args")) if m.group("args") is not None else []
        types = self._pipeline.parameter_types(session, statement)
        if len(arguments) != len(types):
            raise QueryError("42601", "HD_ERR_SYNTAX", f'wrong number of parameters for prepared statement "{name}"',
                             hint=f"Expected {len(types)} parameters but got {len(arguments)}.")
        return statement, [_text_form(a, t) for a, t in zip(arguments, types, strict=True)]


def deallocate_all(session: Session) -> None:
    """Drop every named prepared statement (DEALLOCATE ALL, DISCARD ALL); the unnamed one is the protocol's."""
    for name in [n for n in session.statements if n]:
        del session.statements[name]


def _no_such_statement(name: str) -> QueryError:
    return QueryError("26000", "HD_ERR_NO_SUCH_STATEMENT", f'prepared statement "{name}" does not exist')


def _offset(error: QueryError, start: int) -> QueryError:
    """`error`, raised for the statement inside a PREPARE, with its position counted from the PREPARE."""
    if error.position is not None:
        error.position += start
    return error


# --- parameter types by name ---------------------------------------------------------------------

# PostgreSQL's grammar's names for types (besides the pg_type names and SQL_TYPE_NAMES' standard spellings).
_GRAMMAR_NAMES = {"int": "int4", "integer": "int4", "dec": "numeric", "decimal": "numeric",
                  "char": "bpchar", "character": "bpchar", "float": "float8"}
_STANDARD_NAMES = {standard: name for name, standard in SQL_TYPE_NAMES.items()}
_MODIFIERS = re.compile(r"\(\s*(?P<first>[+-]?\d+)\s*(?:,\s*[+-]?\d+\s*)?\)")
_ARRAY_BOUNDS = re.compile(r"(?:\s*\[\s*\d*\s*\])+$|\s+array(?:\s*\[\s*\d*\s*\])?$", re.IGNORECASE)


def _type_list(text: str) -> list[tuple[str, int]]:
    """The comma-separated type names of a PREPARE, each with its offset in `text`."""
    names, depth, start = [], 0, 0
    for i, char in enumerate(text + ","):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            piece = text[start:i]
            names.append((piece.strip(), start + len(piece) - len(piece.lstrip())))
            start = i + 1
    return [] if names == [("", 0)] else names


def type_oid(name: str) -> int | None:
    """The OID of the PostgreSQL type `name` as SQL spells it (`integer`, `varchar(10)`, `int[]`...), or None."""
    text = name.strip()
    array = _ARRAY_BOUNDS.search(text)
    if array is not None:
        text = text[:array.start()]
    quoted = len(text) >= 2 and text[0] == text[-1] == '"'
    if quoted:
        key = text[1:-1]
    else:
        precision = _MODIFIERS.search(text)
        key = " ".join(_MODIFIERS.sub(" ", text).lower().split())
        key = key.removeprefix("pg_catalog.")
        if key == "float" and precision is not None:  # float(p): real up to 24 binary digits, as in PostgreSQL
            key = "float4" if int(precision.group("first")) <= 24 else "float8"
        key = _STANDARD_NAMES.get(key, _GRAMMAR_NAMES.get(key, key))
    found = TYPE_BY_NAME.get(key)
    if found is None:
        return None
    return found.array if array is not None else found.oid


def _declared_oid(name: str, offset: int) -> int:
    """A PREPARE's declared parameter type: 42704 for a name PostgreSQL would not know, 0A000 for one not served."""
    if not name:
        raise errors.syntax_error_near(")", offset)
    oid = type_oid(name)
    if oid is None:
        raise QueryError("42704", "HD_ERR_UNDEFINED_TYPE", f'type "{name}" does not exist', position=offset + 1)
    if pg_type_by_oid(oid) is None:
        raise errors.unsupported(f'type "{name}" is not supported for parameters',
                                 hint="Declare a type the wire protocol serves (integer, numeric, text, "
                                      "date, timestamp, uuid, json, their arrays...).")
    return oid


# --- EXECUTE's arguments ---------------------------------------------------------------------------

_NOT_A_CONSTANT_HINT = ("EXECUTE's arguments must be constants: literals, casts of literals, NULL, negative "
                        "numbers, or ARRAY[...] of them. Send computed values as parameters of your driver.")


def _not_a_constant(what: str) -> QueryError:
    if what == "a subquery":  # PostgreSQL's own words for the one it refuses too
        return QueryError("0A000", "HD_ERR_EXECUTE_ARGUMENT", "cannot use subquery in EXECUTE parameter",
                          hint=_NOT_A_CONSTANT_HINT)
    return QueryError("0A000", "HD_ERR_EXECUTE_ARGUMENT", f"EXECUTE arguments must be constants, not {what}",
                      hint=_NOT_A_CONSTANT_HINT)


def _arguments(text: str, offset: int) -> list[exp.Expr]:
    """The argument expressions of an EXECUTE, parsed by sqlglot; only constants pass (0A000 otherwise)."""
    if not text.strip():
        raise errors.syntax_error_near(")", offset + len(text))
    try:
        tree = parse_one(f"SELECT {text}", read="postgres")
    except SqlglotError:
        raise errors.syntax_error("could not parse the arguments of this EXECUTE statement") from None
    if not isinstance(tree, exp.Select) or any(v for k, v in tree.args.items() if k != "expressions"):
        raise errors.syntax_error("could not parse the arguments of this EXECUTE statement")
    for argument in tree.expressions:
        _check_constant(argument)
    return list(tree.expressions)


def _check_constant(node: exp.Expr) -> None:
    """Allow list: a literal, NULL, TRUE/FALSE, a negated number, a cast of a constant, an ARRAY of constants."""
    if isinstance(node, (exp.Null, exp.Boolean)) or (isinstance(node, exp.Literal) and type(node) is exp.Literal):
        return
    if isinstance(node, exp.Paren) and type(node) is exp.Paren:
        _check_constant(node.this)
        return
    if isinstance(node, exp.Neg) and type(node) is exp.Neg:
        inner = node.this
        while isinstance(inner, exp.Neg) and type(inner) is exp.Neg:
            inner = inner.this
        if isinstance(inner, exp.Literal) and type(inner) is exp.Literal and not inner.is_string:
            return
        raise _not_a_constant("the negation of a non-number")
    if type(node) is exp.Cast:
        _check_constant(node.this)
        return
    if type(node) is exp.Array:
        for element in node.expressions:
            _check_constant(element)
        return
    raise _not_a_constant(_described(node))


def _described(node: exp.Expr) -> str:
    if isinstance(node, (exp.Subquery, exp.Query)):
        return "a subquery"
    if isinstance(node, exp.Parameter | exp.Placeholder):
        return "a parameter"
    if isinstance(node, exp.Column):
        return "a column reference"
    if isinstance(node, exp.Func):
        return "a function call"
    return "an expression"


def _text_form(node: exp.Expr, pgtype: PgType) -> bytes | None:
    """The argument as the text-format value a Bind would carry for a parameter of `pgtype` (None for NULL).

    A number for an integer parameter is rounded half away from zero, as PostgreSQL's assignment of
    a numeric constant to an integer parameter does (`EXECUTE p(1.5)` binds 2).
    """
    text = _constant_text(node)
    if text is None:
        return None
    if pgtype.name in _INTEGERS and _is_number(node):
        try:
            text = str(Decimal(text).to_integral_value(rounding=ROUND_HALF_UP))
        except (InvalidOperation, ValueError):
            pass  # not finite: the integer decoder refuses it as it would the text
    return text.encode()


def _is_number(node: exp.Expr) -> bool:
    while type(node) in (exp.Paren, exp.Neg):
        node = node.this
    return isinstance(node, exp.Literal) and type(node) is exp.Literal and not node.is_string


def _constant_text(node: exp.Expr) -> str | None:
    """A checked constant's value in PostgreSQL's text input form; a cast's value is checked against its type."""
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Boolean):
        return "true" if node.this else "false"
    if isinstance(node, exp.Paren):
        return _constant_text(node.this)
    if isinstance(node, exp.Neg):
        inner = _constant_text(node.this)
        assert inner is not None  # `_check_constant` let only numbers through
        return inner[1:] if inner.startswith("-") else "-" + inner
    if type(node) is exp.Cast:
        value = _constant_text(node.this)
        _check_cast(value, node.to)
        return value
    if type(node) is exp.Array:
        return "{" + ",".join(_array_element(e) for e in node.expressions) + "}"
    assert isinstance(node, exp.Literal)
    return str(node.this)


def _array_element(node: exp.Expr) -> str:
    """One element of an array's text form: NULL, a nested array, or the value quoted and escaped."""
    while type(node) in (exp.Paren, exp.Cast):
        if type(node) is exp.Cast:
            _check_cast(_constant_text(node.this), node.to)
        node = node.this
    if type(node) is exp.Array:
        return _constant_text(node) or "{}"
    value = _constant_text(node)
    if value is None:
        return "NULL"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_cast(value: str | None, to: exp.DataType) -> None:
    """A constant cast to a type must be a value of that type (its decoder's 22P02 otherwise; 42704 for no type)."""
    name = to.sql("postgres")
    oid = type_oid(name)
    if oid is None:
        raise QueryError("42704", "HD_ERR_UNDEFINED_TYPE", f'type "{name.lower()}" does not exist')
    if value is None or pg_type_by_oid(oid) is None:
        return  # NULL is a value of every type; a type the wire does not serve is checked by its parameter's
    try:
        decode_parameter(value.encode(), oid, False)
    except ParameterFormatError as exc:
        raise QueryError("22P02", "HD_ERR_INVALID_PARAMETER", str(exc)) from None
