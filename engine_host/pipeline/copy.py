"""COPY TO STDOUT and COPY FROM STDIN, as the governed SELECT and INSERT they are.

`COPY (query) TO STDOUT` runs `query`, and `COPY table [(cols)] TO STDOUT` runs
`SELECT cols FROM table`, through the one path every SELECT takes (plan, masks, row filters,
bound-plan check, admission, max rows, timeout), and the wire sends its rows in the COPY format.

`COPY table [(cols)] FROM STDIN` is governed as `INSERT INTO table (cols) VALUES ($1, ..., $n)`:
write policies, tenancy and the row-filter check on new rows are those of an INSERT. The client's
rows then take the place of that one VALUES row: each chunk is registered in the session as an
Arrow table and the governed statement runs with `SELECT CAST(c0 AS type), ... FROM <chunk>`
where the VALUES row stood. That source reads only what the client sent, so nothing the governed
plan does not list is read. A row the row filter forbids fails the whole COPY, nothing stored.

Either way the statement leaves one audit record, with statement kind `copy` and the COPY's text.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from engine_host.engine.views import quote_identifier
from engine_host.pgcompat.copy.decode import CopyDecoder
from engine_host.pgcompat.copy.encode import CopyEncoder
from engine_host.pgcompat.copy.parse import CopyRefused, CopyStatement, parse_copy
from engine_host.pgcompat.types.arrow_types import pg_type_for_arrow
from engine_host.pgcompat.types.table import pg_type_for_duckdb
from engine_host.pipeline import errors
from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.execution import Execution, GovernedRows
from engine_host.pipeline.results import Outcome, RowSource
from engine_host.pipeline.session import Session

if TYPE_CHECKING:
    from engine_host.pipeline.pipeline import PreparedStatement, StatementPipeline

AUDIT_KIND = "copy"


def parse_copy_statement(text: str) -> CopyStatement:
    """The COPY statement, or the QueryError that refuses it."""
    try:
        return parse_copy(text)
    except CopyRefused as exc:
        raise refusal(exc) from None


def refusal(exc: CopyRefused) -> QueryError:
    return QueryError(exc.sqlstate, exc.code, exc.message, hint=exc.hint)


@dataclass
class CopyOut:
    """The rows of a COPY TO STDOUT and the encoder that turns them into CopyData payloads."""

    encoder: CopyEncoder
    rows: RowSource


class CopyOutcome(Outcome):
    """A COPY's outcome: rows to send out (`copy_out`), or a sink for the rows coming in (`copy_in`)."""

    def __init__(self, *, copy_out: CopyOut | None = None, copy_in: CopyIn | None = None):
        super().__init__(tag="", row_tag="COPY")
        self.copy_out = copy_out
        self.copy_in = copy_in


class CopyStatements:
    """Runs the COPY statements of one pipeline's sessions."""

    def __init__(self, pipeline: StatementPipeline):
        self._pipeline = pipeline

    def run(self, session: Session, prepared: PreparedStatement) -> CopyOutcome:
        statement = prepared.copy
        assert statement is not None
        if statement.copies_out:
            return self._copy_out(session, prepared, statement)
        return self._copy_in(session, prepared, statement)

    # --- COPY TO STDOUT ------------------------------------------------------------------------

    def _copy_out(self, session: Session, prepared: PreparedStatement, statement: CopyStatement) -> CopyOutcome:
        pipeline = self._pipeline
        if statement.query is not None:
            text = statement.query
        else:
            assert statement.table is not None
            columns = ", ".join(quote_identifier(c) for c in statement.columns) or "*"
            text = f"SELECT {columns} FROM {_table_name(statement)}"
        query = self._governed(text, "SELECT")
        execution = pipeline._admit(session, query, take_slot=True, audited_as=(prepared.text, AUDIT_KIND))
        plan = query.plan
        assert plan is not None
        with pipeline.ending_on_failure(session, execution):
            if plan.kind != "select":
                raise errors.unsupported("COPY (query) TO supports only a SELECT query")
            execution.on_finish(pipeline._hold_data(plan).release)
            stream = session.engine.run(query.engine_sql)
            execution.on_finish(stream.close)
            names = [f.name for f in stream.schema]
            types = [pg_type_for_arrow(f.type) for f in stream.schema]
            try:
                encoder = CopyEncoder(names, types, statement.options)
            except KeyError as exc:
                raise QueryError("42P10", "HD_ERR_COPY_OPTION",
                                 f'FORCE_QUOTE column "{exc.args[0]}" not referenced by COPY') from None
        rows = GovernedRows(RowSource(stream), execution, max_rows=pipeline.governor.max_rows(session.principal.org_id))
        return CopyOutcome(copy_out=CopyOut(encoder, rows))

    # --- COPY FROM STDIN -----------------------------------------------------------------------

    def _copy_in(self, session: Session, prepared: PreparedStatement, statement: CopyStatement) -> CopyOutcome:
        pipeline = self._pipeline
        tables = pipeline.governor.tables
        assert statement.table is not None
        name = tables.resolve(None, statement.schema.lower() if statement.schema else None,
                              statement.table.lower(), session.local_tables)
        info = tables.get(name, session.local_tables) if name is not None else None
        known = dict(info.columns) if info is not None else {}
        names = list(statement.columns) or [c for c, _ in (info.columns if info is not None else ())]
        template_names = names or ["?column?"]
        values = ", ".join(f"${i + 1}" for i in range(len(template_names)))
        text = (f"INSERT INTO {_table_name(statement)} ({', '.join(quote_identifier(c) for c in template_names)}) "
                f"VALUES ({values})")
        query = self._governed(text, "INSERT")
        execution = pipeline._admit(session, query, take_slot=True, audited_as=(prepared.text, AUDIT_KIND))
        plan = query.plan
        assert plan is not None
        own_transaction = not session.in_transaction
        with pipeline.ending_on_failure(session, execution):  # its own transaction begins last, if at all
            if plan.kind != "insert":
                raise errors.unsupported("COPY FROM needs a table the session may insert into")
            missing = [c for c in names if c.lower() not in known]
            if not names or missing:
                raise QueryError("42703", "HD_ERR_UNKNOWN_COLUMN",
                                 f'column "{missing[0] if missing else "?"}" of relation "{statement.table}" '
                                 "does not exist")
            placeholder = f"VALUES ({values})"
            if query.engine_sql.count(placeholder) != 1:  # fail closed: the rewrite is not the one understood
                raise errors.unsupported("COPY FROM into this table is not supported (its governed INSERT has an "
                                         "unexpected form)", hint="Use INSERT ... VALUES instead.")
            types = [known[c.lower()] for c in names]
            pgtypes = [pg_type_for_duckdb(t) for t in types]
            options = statement.options
            for option, listed in (("FORCE_NOT_NULL", options.force_not_null), ("FORCE_NULL", options.force_null)):
                for column in listed:
                    if column not in names:
                        raise QueryError("42P10", "HD_ERR_COPY_OPTION",
                                         f'{option} column "{column}" not referenced by COPY')
            source = f"__hd_copy_{secrets.token_hex(8)}"
            select = ", ".join(f"CAST(c{i} AS {t})" for i, t in enumerate(types))
            sql = query.engine_sql.replace(placeholder, f"SELECT {select} FROM {quote_identifier(source)}")
            execution.on_finish(pipeline._hold_data(plan).release)
            if own_transaction:
                pipeline._engine_command(session, "BEGIN TRANSACTION")
        decoder = CopyDecoder(names, pgtypes, options, engine_types=types, table=statement.table)
        return CopyOutcome(copy_in=CopyIn(pipeline, session, execution, decoder, sql, source, own_transaction))

    @staticmethod
    def _governed(text: str, statement_type: str) -> PreparedStatement:
        from engine_host.pipeline.pipeline import Kind, PreparedStatement  # the pipeline module imports this one
        return PreparedStatement(text=text, kind=Kind.ENGINE, engine_sql="", statement_type=statement_type)


class CopyIn:
    """A COPY FROM STDIN under way: the wire feeds it CopyData, then ends it with `done` or `fail`."""

    def __init__(self, pipeline: StatementPipeline, session: Session, execution: Execution, decoder: CopyDecoder,
                 sql: str, source: str, own_transaction: bool):
        self._pipeline = pipeline
        self._session = session
        self._execution = execution
        self._decoder = decoder
        self._sql = sql
        self._source = source
        self._own_transaction = own_transaction
        self.rows = 0
        self.binary = decoder.options.binary
        self.columns = len(decoder.names)
        self.ended = False

    def seconds_left(self) -> float | None:
        """How long the COPY may still wait for the client's data (None: no statement_timeout)."""
        deadline = self._execution.audit.deadline
        return None if deadline is None else max(0.0, deadline - time.perf_counter())

    def checkpoint(self) -> None:
        """End the COPY with 57014 if it was cancelled or its statement_timeout passed (rolled back, audited)."""
        self._guarded(lambda: None)

    def write(self, data: bytes) -> None:
        """One CopyData's bytes; raises QueryError (the COPY is then over, rolled back and audited)."""
        self._guarded(lambda: self._insert(self._decoder.feed(data)))

    def done(self) -> str:
        """CopyDone: insert what is left, store the audit record, commit; the command tag."""
        def finish() -> None:
            self._insert(self._decoder.finish())
            self._execution.audit.rows_written = self.rows
            self._execution.finish()
        self._guarded(finish)
        self.ended = True
        if self._own_transaction:
            self._pipeline._engine_command(self._session, "COMMIT")
        return f"COPY {self.rows}"

    def fail(self, message: str) -> QueryError:
        """CopyFail from the client: roll back; the error to report (57014, as PostgreSQL does)."""
        error = QueryError("57014", "HD_ERR_COPY_FAILED", f"COPY from stdin failed: {message}")
        self._abandon(error)
        return error

    def abort(self, error: QueryError) -> QueryError:
        """The COPY ends with `error` (a protocol violation, the connection gone): roll back and record it."""
        try:
            self._abandon(error)
        except duckdb.Error:
            pass  # the session's connection is already closed: DuckDB dropped the open transaction with it
        return error

    def abandon(self) -> None:
        """The connection ended mid-COPY: roll back and record it."""
        if not self.ended:
            self.abort(errors.connection_ended())

    def _guarded(self, step: object) -> None:
        assert callable(step)
        if self.ended:
            return
        try:
            self._stopped()  # statement_timeout and cancel, between chunks
            step()
        except CopyRefused as exc:
            error = refusal(exc)
        except duckdb.Error as exc:
            error = self._execution.engine_error(exc)
        except (pa.ArrowException, UnicodeDecodeError):
            error = QueryError("22P04", "HD_ERR_COPY_DATA", "malformed COPY data")
        except QueryError as exc:
            error = exc
        else:
            return
        self._abandon(error)
        raise error

    def _stopped(self) -> None:
        """Raise 57014 if a cancel or the statement's deadline came (the watchdog's interrupt is a timeout)."""
        audit = self._execution.audit
        if self._execution.timed_out or (audit.deadline is not None and time.perf_counter() > audit.deadline):
            raise QueryError("57014", "HD_ERR_STATEMENT_TIMEOUT", "canceling statement due to statement timeout",
                             hint="Load in smaller pieces, or raise statement_timeout for this session.")
        audit.checkpoint()

    def _abandon(self, error: QueryError) -> None:
        if self.ended:
            return
        self.ended = True
        self._session.statement_failed()
        self._pipeline._abandon(self._session, self._own_transaction, self._execution, error)
        self._unregister()

    def _insert(self, columns: Sequence[pa.Array] | None) -> None:
        if not columns:
            return
        table = pa.Table.from_arrays(list(columns), names=[f"c{i}" for i in range(len(columns))])
        engine = self._session.engine
        engine.apply(lambda cursor: _discard(cursor.register(self._source, table)))
        try:
            stream = engine.run(self._sql)
            try:
                while (batch := stream.next_batch()) is not None:
                    if batch.num_columns and batch.schema.names[0] == "Count":
                        self.rows += sum(v or 0 for v in batch.column(0).to_pylist())
            finally:
                stream.close()
        finally:
            self._unregister()
        self._stopped()

    def _unregister(self) -> None:
        """Drop the chunk's registration; in a failed transaction DuckDB refuses until the rollback."""
        try:
            self._session.engine.apply(lambda cursor: _discard(cursor.unregister(self._source)))
        except duckdb.Error:
            pass  # `_abandon` unregisters again after its rollback; the failing statement's error stands


def _table_name(statement: CopyStatement) -> str:
    assert statement.table is not None
    table = quote_identifier(statement.table)
    return f"{quote_identifier(statement.schema)}.{table}" if statement.schema else table


def _discard(_: object) -> None:
    """A setup step returns nothing: DuckDB's register/unregister return the connection, unused here."""
