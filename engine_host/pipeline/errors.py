"""Errors a statement can end with, each carrying a SQLSTATE and an HD_ERR_* code for clients."""

from __future__ import annotations


class QueryError(Exception):
    """A statement failed; the wire layer turns this into an ErrorResponse.

    `code` is the stable HD_ERR_* identifier sent in DETAIL so tools can branch on it; `message`
    is safe to show the client (no internal detail), `hint` says what to do next.
    """

    def __init__(self, sqlstate: str, code: str, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.code = code
        self.message = message
        self.hint = hint

    @property
    def detail(self) -> str:
        return self.code


def syntax_error(message: str) -> QueryError:
    return QueryError("42601", "HD_ERR_SYNTAX", message)


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


def shutting_down() -> QueryError:
    return QueryError("57P01", "HD_ERR_SHUTDOWN", "terminating connection due to administrator command")


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
    sqlstate, code = DUCKDB_SQLSTATES.get(name, ("XX000", "HD_ERR_ENGINE"))
    message = str(exc).strip()
    if "Division by zero" in message:
        sqlstate, code = "22012", "HD_ERR_DIVISION_BY_ZERO"
    # DuckDB prefixes messages with "<Kind> Error: "; Postgres clients show the message alone.
    head, sep, rest = message.partition(" Error: ")
    if sep and " " not in head.strip():
        message = rest
    return QueryError(sqlstate, code, message.splitlines()[0] if message else name)


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
    """A client-safe QueryError for an engine failure, and the full text for the audit record."""
    error = from_engine_error(exc)
    full = f"{type(exc).__name__}: {exc}"
    if type(exc).__name__ in _VALUE_BEARING or error.code == "HD_ERR_ENGINE":
        message = (f"the statement failed while processing a value (reference {reference}); "
                   "the details are in the audit record")
        hint = "Check casts and input values, or ask an auditor for the record with this reference."
        return QueryError(error.sqlstate, error.code, message, hint=hint), full
    return error, full
