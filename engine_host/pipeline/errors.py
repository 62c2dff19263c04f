"""Errors a statement can end with, each carrying a SQLSTATE and an HD_ERR_* code for clients."""

from __future__ import annotations

import logging
import os
import re

from engine_host.engine.duckdb_engine import ResultLimitExceeded
from hd_core.text_redaction import redact_error_detail

log = logging.getLogger(__name__)


class QueryError(Exception):
    """A statement failed; the wire layer turns this into an ErrorResponse.

    `code` is the stable HD_ERR_* identifier sent in DETAIL so tools can branch on it; `message`
    is safe to show the client (no internal detail), `hint` says what to do next. `position` is
    the 1-based character in the statement the error points at (PostgreSQL's `P` field), if any.
    """

    def __init__(self, sqlstate: str, code: str, message: str, *, hint: str | None = None,
                 position: int | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.code = code
        self.message = message
        self.hint = hint
        self.position = position

    @property
    def detail(self) -> str:
        return self.code


def syntax_error(message: str) -> QueryError:
    return QueryError("42601", "HD_ERR_SYNTAX", message)


SYNTAX_HINT = "Check the statement's syntax; send one statement per query."
# How much of the offending text a syntax error quotes: PostgreSQL quotes the whole token, which for an
# unterminated string is the rest of the statement.
_NEAR_CHARS = 64


def syntax_error_near(text: str, offset: int, what: str = "syntax error") -> QueryError:
    """PostgreSQL's `syntax error at or near "tok"`, pointing at `offset` (0-based) in the statement."""
    shown = text if len(text) <= _NEAR_CHARS else text[:_NEAR_CHARS - 3] + "..."
    return QueryError("42601", "HD_ERR_SYNTAX", f'{what} at or near "{shown}"', hint=SYNTAX_HINT,
                      position=offset + 1)


def syntax_error_at_end(length: int) -> QueryError:
    """PostgreSQL's `syntax error at end of input`, pointing just past the statement's `length` characters."""
    return QueryError("42601", "HD_ERR_SYNTAX", "syntax error at end of input", hint=SYNTAX_HINT,
                      position=length + 1)


def transaction_aborted() -> QueryError:
    return QueryError(
        "25P02",
        "HD_ERR_TX_ABORTED",
        "current transaction is aborted, commands ignored until end of transaction block",
        hint="Send ROLLBACK to end the failed transaction.",
    )


def unsupported(message: str, hint: str | None = None) -> QueryError:
    return QueryError("0A000", "HD_ERR_UNSUPPORTED", message, hint=hint)


def query_canceled() -> QueryError:
    return QueryError("57014", "HD_ERR_CANCELED", "canceling statement due to user request")


def connection_ended() -> QueryError:
    """How a statement ends when its connection ends first (client gone, Terminate, shutdown)."""
    return QueryError("08006", "HD_ERR_CONNECTION_ENDED",
                      "the connection ended before the statement finished; its result was not fully sent")


def shutting_down() -> QueryError:
    return QueryError("57P01", "HD_ERR_SHUTDOWN", "terminating connection due to administrator command")


def unknown_relation(name: str) -> QueryError:
    """What every relation name that does not resolve for the client gets, whatever the reason."""
    return QueryError("42P01", "HD_ERR_UNKNOWN_TABLE", f'relation "{name}" does not exist',
                      hint="Check the name and its schema: \\dt *.* in psql lists every table you can read; "
                           "qualify the name (schema.table) or SET search_path to its schema.")


def read_only_table(name: str, action: str) -> QueryError:
    """A change to a table whose data are read-only files (Parquet, local or in the object store)."""
    verb = {"insert": "insert into", "delete": "delete from"}.get(action, action)
    return QueryError("42809", "HD_ERR_READ_ONLY_TABLE",
                      f'cannot {verb} table "{name}": it is read-only (its data are Parquet files)',
                      hint=f"Make a writable copy and change that: CREATE TABLE my_copy AS SELECT * FROM {name}")


def statement_too_complex(message: str) -> QueryError:
    """A statement over a size or nesting limit (54001, Postgres' statement_too_complex)."""
    return QueryError("54001", "HD_ERR_STATEMENT_TOO_COMPLEX", message,
                      hint="Simplify the statement or split it into several smaller ones.")


def internal_error(reference: str) -> QueryError:
    """What the client gets for a bug: a reference that finds the audit record and the log line."""
    return QueryError("XX000", "HD_ERR_INTERNAL", f"internal error (reference {reference})",
                      hint="Retry the statement; if it fails again, give an operator this reference.")


def unexpected_failure(exc: Exception, reference: str) -> QueryError:
    """The refusal for an exception no stage expected, logged on one line (the traceback only at debug).

    A RecursionError is sqlglot (or a stage walking its tree) giving up on a deeply nested
    expression that the guard's pre-parse limits do not count, such as a long chain of casts:
    the statement is too complex, not the server broken. Only the exception's type and place are
    logged; its text may quote the statement.
    """
    if isinstance(exc, RecursionError):
        log.warning("statement %s refused: too deeply nested to plan (RecursionError at %s)", reference, _where(exc))
        return statement_too_complex(
            "statement too complex: its expressions nest too deeply to be planned "
            "(long chains of casts, subscripts or unary operators count as nesting)")
    log.error("statement %s failed with an internal error: %s at %s", reference, type(exc).__name__, _where(exc))
    log.debug("traceback of internal error %s", reference, exc_info=exc)
    return internal_error(reference)


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame that raised `exc`."""
    tb = exc.__traceback__
    if tb is None:
        return "unknown"
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"


# DuckDB exception class name -> SQLSTATE, so clients see the class of error they expect from Postgres.
DUCKDB_SQLSTATES: dict[str, tuple[str, str]] = {
    "ParserException": ("42601", "HD_ERR_SYNTAX"),
    "CatalogException": ("42P01", "HD_ERR_UNDEFINED_OBJECT"),
    "BinderException": ("42703", "HD_ERR_BINDER"),
    "ConversionException": ("22P02", "HD_ERR_INVALID_VALUE"),
    "InvalidInputException": ("22023", "HD_ERR_INVALID_INPUT"),
    "OutOfRangeException": ("22003", "HD_ERR_OUT_OF_RANGE"),
    "DivisionByZeroException": ("22012", "HD_ERR_DIVISION_BY_ZERO"),
    "ConstraintException": ("23505", "HD_ERR_CONSTRAINT"),
    "TransactionException": ("40001", "HD_ERR_TX_CONFLICT"),
    "InterruptException": ("57014", "HD_ERR_CANCELED"),
    "PermissionException": ("42501", "HD_ERR_PERMISSION"),
    "OutOfMemoryException": ("53200", "HD_ERR_OUT_OF_MEMORY"),
    "NotImplementedException": ("0A000", "HD_ERR_UNSUPPORTED"),
    "TypeMismatchException": ("42804", "HD_ERR_TYPE_MISMATCH"),
}


def from_engine_error(exc: Exception) -> QueryError:
    """Translate a DuckDB exception into a QueryError with the closest SQLSTATE."""
    name = type(exc).__name__
    if name == "InterruptException":
        return query_canceled()
    if isinstance(exc, ResultLimitExceeded):
        return QueryError(exc.sqlstate, exc.code, str(exc),
                          hint="Add a LIMIT or a narrower WHERE clause, or select fewer or shorter columns.")
    sqlstate, code = DUCKDB_SQLSTATES.get(name, ("XX000", "HD_ERR_ENGINE"))
    message = str(exc).strip()
    if "Division by zero" in message:
        sqlstate, code = "22012", "HD_ERR_DIVISION_BY_ZERO"
    # DuckDB prefixes messages with "<Kind> Error: "; Postgres clients show the message alone.
    head, sep, rest = message.partition(" Error: ")
    if sep and " " not in head.strip():
        message = rest
    # Only the first line: DuckDB's next ones suggest similar names ("Did you mean ...?"), which
    # would name relations the client cannot see.
    first = message.splitlines()[0] if message else name
    missing = _MISSING_TABLE.match(first) if name == "CatalogException" else None
    if missing is not None:  # a name that did not bind: answered as the guard answers a missing table
        return unknown_relation(_internal_names(missing.group(1) or missing.group(2)))
    return QueryError(sqlstate, code, _internal_names(first))


# DuckDB's "Table with name x does not exist!" / "... \"s.x\" does not exist because schema ..." first lines.
_MISSING_TABLE = re.compile(r'Table with name (?:"([^"]+)"|(\S+?)) does not exist')
# The engine's own catalog and alias names, as DuckDB may print them in a message: every `hd_...` catalog
# (hd_data, hd_keys, a native copy's hd_native_<n>, a mask view's hd_masks_<n>, any added later; clients
# can name none, the guard refuses `hd_` names), the in-memory `memory`, and the rewrite's alias.
_INTERNAL_NAME = re.compile(r'"?(?:hd_\w+|memory)"?\.|"?__hd_src"?\.?')


def _internal_names(text: str) -> str:
    """`text` without the engine's catalog names and aliases: clients never wrote them and cannot use them."""
    return _INTERNAL_NAME.sub("", text)


# Engine errors whose text can quote data values (a failed cast prints the value it could not
# convert, a unique violation prints the key). DuckDB may evaluate a user's expression on rows a
# row filter is about to drop, so such text can hold another tenant's data: clients get a generic
# message with a reference, and the full text goes to the audit record only.
_VALUE_BEARING = frozenset({
    "ConversionException", "InvalidInputException", "OutOfRangeException", "ConstraintException",
    "TypeMismatchException", "InternalException", "FatalException", "SerializationException",
    "InvalidTypeException", "SequenceException", "DependencyException", "HTTPException", "IOException",
    "Error", "ArrowInvalid", "ArrowException", "ArrowTypeError",
})


def from_engine_error_redacted(exc: Exception, reference: str) -> tuple[QueryError, str]:
    """A client-safe QueryError for an engine failure, and the redacted detail for the audit record.

    The detail keeps the DuckDB error class and the first line's shape, never the values it quoted
    (see `redact_error_detail`): audit records are read by auditors, who may not see the data.
    """
    error = from_engine_error(exc)
    detail = redact_error_detail(f"{type(exc).__name__}: {exc}")
    if error.code == "HD_ERR_DIVISION_BY_ZERO":  # PostgreSQL's words, which quote no value
        return QueryError(error.sqlstate, error.code, "division by zero"), detail
    if type(exc).__name__ in _VALUE_BEARING or error.code == "HD_ERR_ENGINE":
        message = (f"the statement failed while processing a value (reference {reference}); "
                   "the details are in the audit record")
        hint = "Check casts and input values, or ask an auditor for the record with this reference."
        return QueryError(error.sqlstate, error.code, message, hint=hint), detail
    return error, detail
