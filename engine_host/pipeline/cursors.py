"""SQL cursors (DECLARE / FETCH / MOVE / CLOSE) for the statement pipeline.

A cursor's query takes the pipeline's one path (prepare, govern, admit), then reads on a DuckDB
connection of its own; FETCH and MOVE read its rows a slice at a time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import duckdb

from engine_host.pgcompat.types.arrow_types import pg_type_for_arrow
from engine_host.pgcompat.types.declared import with_declared
from engine_host.pipeline import errors
from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.execution import GovernedRows
from engine_host.pipeline.results import Outcome, ResultColumn, RowSource, SqlCursor
from engine_host.pipeline.session import Session

if TYPE_CHECKING:
    from engine_host.pipeline.pipeline import PreparedStatement, StatementPipeline


class Cursors:
    """The SQL cursors of the sessions of one pipeline."""

    def __init__(self, pipeline: StatementPipeline):
        self._pipeline = pipeline

    def run(self, session: Session, text: str, params: Sequence[bytes | None] | None = None,
            param_formats: Sequence[int] = (), declared_oids: Sequence[int] = ()) -> Outcome:
        """Run a cursor statement; a DECLARE's `params` are its query's `$n` values (psycopg's server-side cursors)."""
        from engine_host.pipeline.pipeline import leading_words  # imported here: the pipeline module imports this one
        verb = leading_words(text, 1)[0]
        if verb == "DECLARE":
            return self._declare(session, text, params, param_formats, declared_oids)
        if verb == "CLOSE":
            name = cursor_name(_CLOSE.match(text), text)
            if name.upper() == "ALL":
                for cursor in session.cursors.values():
                    cursor.close()
                session.cursors.clear()
            else:
                self._cursor(session, name).close()
                session.cursors.pop(name, None)
            return Outcome(tag="CLOSE CURSOR")
        m = _FETCH.match(text)
        if not m:
            raise errors.syntax_error("could not parse this FETCH/MOVE statement")
        cursor = self._cursor(session, cursor_name(m, text))
        count = _fetch_count(m)
        if verb == "MOVE":
            moved = _skip_rows(cursor.rows, count)
            return Outcome(tag=f"MOVE {moved}")
        return Outcome(tag="", columns=cursor.columns, rows=_LimitedRows(cursor.rows, count), row_tag="FETCH")

    def query_of(self, session: Session, text: str, declared_oids: Sequence[int] = ()) -> PreparedStatement | None:
        """The prepared query of a DECLARE (None for any other cursor statement), for its parameter types."""
        m = _DECLARE.match(text)
        if m is None:
            return None
        try:
            return self._pipeline.prepare(session, m.group("query"), declared_oids)
        except QueryError as exc:
            raise _at_query(exc, m) from None

    def _declare(self, session: Session, text: str, params: Sequence[bytes | None] | None,
                 param_formats: Sequence[int], declared_oids: Sequence[int]) -> Outcome:
        from engine_host.pipeline.pipeline import (  # imported here: the pipeline module imports this one
            Kind,
            statement_kind,
        )
        m = _DECLARE.match(text)
        if not m:
            raise errors.syntax_error("could not parse this DECLARE statement")
        name = cursor_name(m, text)
        if name in session.cursors:
            raise QueryError("42P03", "HD_ERR_DUPLICATE_CURSOR", f'cursor "{name}" already exists')
        if m.group("scroll") and "NO" not in m.group("scroll").upper():
            raise errors.unsupported("scrollable cursors are not supported", hint="Declare the cursor NO SCROLL.")
        not_a_select = QueryError("42601", "HD_ERR_SYNTAX", "DECLARE CURSOR can only be used with a SELECT query")
        if statement_kind(m.group("query")) is not Kind.ENGINE:
            raise not_a_select
        try:
            # Refusals are audited by its `govern` stage; positions count from the DECLARE, as the client sent it.
            query = self._pipeline.prepare(session, m.group("query"), declared_oids)
        except QueryError as exc:
            raise Audited(_at_query(exc, m)) from None
        if query.statement_type != "SELECT":
            raise not_a_select
        try:
            values = self._pipeline._decode_parameters(session, query, params, param_formats)
        except QueryError as exc:  # before admission: no Execution records it
            self._pipeline.record_unadmitted(session, query.text, exc)
            raise Audited(exc) from None
        # A cursor reads on a connection of its own so the session can run statements between FETCHes;
        # it takes no concurrency slot, since a client may keep it open between FETCHes indefinitely.
        engine = self._pipeline._database.session()
        try:
            execution = self._pipeline._admit(session, query, take_slot=False, engine=engine)
        except QueryError as exc:
            engine.close()
            raise Audited(exc) from None
        try:
            execution.on_finish(self._pipeline._hold_data(query.plan).release)
        except QueryError as exc:
            engine.close()
            self._pipeline._abandon(session, False, execution, exc)
            raise Audited(exc) from None
        try:
            stream = engine.run(query.engine_sql, values or None)
        except duckdb.Error as exc:
            engine.close()
            error = execution.engine_error(exc)
            self._pipeline._abandon(session, False, execution, error)
            raise Audited(error) from None
        execution.on_finish(stream.close)
        declared = query.plan.declared_types if query.plan is not None else ()
        types = with_declared([pg_type_for_arrow(f.type) for f in stream.schema], declared)
        columns = [ResultColumn(f.name, t) for f, t in zip(stream.schema, types, strict=True)]
        max_rows = self._pipeline.governor.max_rows(session.principal.org_id)
        rows = GovernedRows(RowSource(stream), execution, max_rows=max_rows)
        session.cursors[name] = SqlCursor(name, columns, rows, engine, bool(m.group("binary")))
        return Outcome(tag="DECLARE CURSOR")

    def _cursor(self, session: Session, name: str) -> SqlCursor:
        cursor = session.cursors.get(name)
        if cursor is None:
            raise QueryError("34000", "HD_ERR_NO_SUCH_CURSOR", f'cursor "{name}" does not exist')
        return cursor

    def fetch_columns(self, session: Session, text: str) -> list[ResultColumn] | None:
        from engine_host.pipeline.pipeline import leading_words  # imported here: the pipeline module imports this one
        m = _FETCH.match(text)
        if m and leading_words(text, 1)[0] == "FETCH":
            return self._cursor(session, cursor_name(m, text)).columns
        return None

    def describe(self, session: Session, name: str) -> list[ResultColumn] | None:
        """Columns of a DECLAREd cursor (drivers Describe it as a portal), or None if there is none."""
        cursor = session.cursors.get(name)
        return cursor.columns if cursor is not None else None

IDENT = r'(?:"(?P<qname>(?:[^"]|"")+)"|(?P<name>[A-Za-z_][\w$]*))'
_DECLARE = re.compile(
    r"^\s*DECLARE\s+" + IDENT + r"\s+(?P<binary>BINARY\s+)?(?:(?:ASENSITIVE|INSENSITIVE)\s+)?"
    r"(?P<scroll>(?:NO\s+)?SCROLL\s+)?CURSOR\s+(?:(?:WITH|WITHOUT)\s+HOLD\s+)?FOR\s+(?P<query>.+?)\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_FETCH = re.compile(
    r"^\s*(?:FETCH|MOVE)\s+(?:(?P<dir>NEXT|FORWARD\s+ALL|FORWARD\s+\d+|FORWARD|ALL|\d+)\s+)?(?:FROM\s+|IN\s+)?"
    + IDENT + r"\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_CLOSE = re.compile(r"^\s*CLOSE\s+" + IDENT + r"\s*;?\s*$", re.IGNORECASE | re.DOTALL)


def _at_query(error: QueryError, m: re.Match[str]) -> QueryError:
    """`error` (raised for a DECLARE's query) with its position counted from the start of the DECLARE."""
    if error.position is not None:
        error.position += m.start("query")
    return error


def cursor_name(m: re.Match[str] | None, text: str) -> str:
    if m is None:
        raise errors.syntax_error(f"could not parse cursor statement: {text[:60]!r}")
    return m.group("qname").replace('""', '"') if m.group("qname") else m.group("name").lower()


def _fetch_count(m: re.Match[str]) -> int | None:
    direction = " ".join((m.group("dir") or "NEXT").upper().split())
    if direction in ("ALL", "FORWARD ALL"):
        return None
    if direction in ("NEXT", "FORWARD"):
        return 1
    return int(direction.split()[-1])


class _LimitedRows(RowSource):
    """At most `limit` rows of a cursor's rows, leaving the cursor open for the next FETCH."""

    def __init__(self, inner: RowSource, limit: int | None):
        self._inner = inner
        self._left = limit

    @property
    def exhausted(self) -> bool:
        return self._left == 0 or self._inner.exhausted

    def at_end(self) -> bool:
        return self._left == 0 or self._inner.at_end()

    def read(self, limit: int | None = None) -> object:  # type: ignore[override]
        if self._left == 0:
            return None
        want = limit if self._left is None else (self._left if limit is None else min(limit, self._left))
        batch = self._inner.read(want)
        if batch is not None and self._left is not None:
            self._left -= batch.num_rows
        return batch

    def close(self) -> None:
        # Closing a FETCH result leaves the cursor itself open; CLOSE or the session end closes it.
        self._left = 0


def _skip_rows(rows: RowSource, count: int | None) -> int:
    moved = 0
    while count is None or moved < count:
        batch = rows.read(None if count is None else count - moved)
        if batch is None:
            break
        moved += batch.num_rows
    return moved


class Audited(Exception):
    """A statement's error whose audit record is already written (by the Execution of a DECLARE's query)."""

    def __init__(self, error: QueryError):
        super().__init__(error.message)
        self.error = error


def declares_cursor(prepared: PreparedStatement) -> bool:
    from engine_host.pipeline.pipeline import Kind, leading_words  # imported here: the pipeline module imports this one
    return prepared.kind is Kind.CURSOR and leading_words(prepared.text, 1)[0] == "DECLARE"
