"""The locked-down DuckDB database and the per-connection sessions that run statements on it.

DuckDB 2.0's public Python API materialises a DB-API result before it can be streamed, and has no
way to ask for parameter types without running a statement. The two private entry points used
here (`_bind` and `_submit(..., "stream")`) are what DuckDB's own relation layer calls for exactly
those jobs; they are wrapped in this one module so an upgrade that moves them breaks one place,
and tests/integration/engine covers both.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from engine_host.engine.tables import sql_string

log = logging.getLogger(__name__)

SetupStep = Callable[[duckdb.DuckDBPyConnection], None]

# The attached catalog that holds every relation with data (writable tables, Parquet views). Client
# names resolve against DuckDB's default catalog, which holds no data at all, so a table reference
# the governance rewrite did not turn into `hd_data.<schema>.<table>` fails to bind instead of
# reading raw rows. The guard refuses every client-written name under this catalog.
DATA_CATALOG = "hd_data"

# Rows per Arrow batch pulled from DuckDB: large enough to amortise per-batch encoding, small enough
# that a slow client holds at most a few MB per connection.
STREAM_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class StatementShape:
    """What DuckDB's binder says about a statement without running it."""

    parameter_types: tuple[str, ...]
    column_names: tuple[str, ...]
    column_types: tuple[Any, ...]
    returns_rows: bool
    writes: bool


class Database:
    """One DuckDB database (file-backed or in memory), set up once and then locked down.

    DuckDB's default catalog is an empty in-memory one; the data (the file at `path`, or memory)
    is attached as `DATA_CATALOG`. The file's own layout is unchanged, so an existing state folder
    opens as it is.
    """

    def __init__(self, path: Path | None, *, allowed_directories: Sequence[Path], threads: int | None = None):
        self._path = path
        self._allowed = [str(p.resolve()) for p in allowed_directories]
        self._threads = threads
        self._con: duckdb.DuckDBPyConnection | None = None

    def open(self, setup: Sequence[SetupStep] = ()) -> None:
        """Connect, run the setup steps (table registration, catalog objects), then lock the configuration."""
        config: dict[str, Any] = {
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            # UUID, JSON and HUGEINT keep their identity in Arrow results, so clients see uuid/json/numeric.
            "arrow_lossless_conversion": True,
        }
        if self._threads:
            config["threads"] = self._threads
        con = duckdb.connect(":memory:", config=config)
        source = str(self._path) if self._path else ":memory:"
        con.execute(f"ATTACH {sql_string(source)} AS {DATA_CATALOG}")
        # EXPLAIN returns the binder's unoptimised plan too: the bound-plan check reads it, before any
        # optimisation could fold a scan away (clients' EXPLAIN shows the physical plan only).
        con.execute("SET GLOBAL explain_output = 'all'")
        for step in setup:
            step(con)
        self._lock_down(con)
        self._con = con

    def _lock_down(self, con: duckdb.DuckDBPyConnection) -> None:
        # Order matters (FIELD-NOTES): directory allowlist before external access goes off, and
        # lock_configuration last so no statement can undo any of it.
        con.execute("SET allowed_directories = $1", [self._allowed])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise RuntimeError("database is not open")
        return self._con

    def session(self) -> EngineSession:
        """A new connection to the database with its own transaction state."""
        return EngineSession(self.connection.cursor())

    def checkpoint(self) -> None:
        """Flush the write-ahead log into the database file (used on shutdown)."""
        if self._con is not None and self._path is not None:
            self._con.execute(f"CHECKPOINT {DATA_CATALOG}")

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


class ResultStream:
    """Batches of one running statement, pulled on demand so memory stays bounded."""

    def __init__(self, reader: Any, session: EngineSession):
        self._reader = reader
        self._session = session
        self._held: list[pa.RecordBatch] | None = None
        self.schema: pa.Schema = reader.schema

    def next_batch(self) -> pa.RecordBatch | None:
        """The next batch, or None when the statement has no more rows. Blocking: call off the event loop."""
        if self._held is not None:
            return self._held.pop(0) if self._held else None
        try:
            batch = self._reader.read_next_batch()
        except StopIteration:
            self.close()
            return None
        return batch

    def detach(self) -> None:
        """Read the rest into memory so the session's connection can run another statement."""
        if self._held is None:
            self._held = list(self._reader)
            self._release()

    def close(self) -> None:
        if self._held is None:
            self._held = []
        self._release()

    def _release(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
            self._session._finished(self)


class EngineSession:
    """One client's DuckDB connection: transactions, statements and interruption."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection):
        self._cursor = cursor
        self._open: ResultStream | None = None
        self._lock = threading.Lock()
        self._interrupts = 0

    def apply(self, step: SetupStep) -> None:
        """Run a configuration step (e.g. setting session variables) on this connection."""
        step(self._cursor)

    def statement_kinds(self, sql: str) -> list[tuple[str, str]]:
        """Split a query string into (DuckDB statement type, text) pairs using DuckDB's own parser."""
        return [(stmt.type.name, stmt.query) for stmt in self._cursor.extract_statements(sql)]

    def describe(self, sql: str, values: Sequence[object] | None = None) -> StatementShape:
        """Bind a statement (no execution) and report its parameter and result types."""
        self._make_room()
        names, types, parameters, return_type, _deferred, writes = self._cursor._bind(
            sql, with_writes=True, values=list(values) if values is not None else None
        )
        return StatementShape(
            parameter_types=tuple(str(t) for _, t in parameters),
            column_names=tuple(names),
            column_types=tuple(types),
            returns_rows=return_type == "query_result",
            writes=bool(writes),
        )

    def bound_plan(self, sql: str, values: Sequence[object] | None = None) -> list[dict[str, Any]]:
        """The binder's (unoptimised) logical plan of a statement, as DuckDB's JSON EXPLAIN gives it."""
        self._make_room()
        rows = self._cursor.execute(f"EXPLAIN (FORMAT json) {sql}", list(values) if values else None).fetchall()
        for key, value in rows:
            if key == "logical_plan":
                plan = json.loads(value)
                return plan if isinstance(plan, list) else [plan]
        raise RuntimeError("DuckDB returned no logical plan (explain_output must be 'all')")

    def run(self, sql: str, values: Sequence[object] | None = None) -> ResultStream:
        """Start a statement and return its result stream (DDL and DML stream a single Count/Success row)."""
        self._make_room()
        params = list(values) if values else None
        result = self._cursor._submit(sql, params, "stream", STREAM_BATCH_ROWS)
        with self._lock:
            self._open = ResultStream(result.arrow_reader(), self)
            return self._open

    def _make_room(self) -> None:
        # DuckDB allows one open result per connection; a suspended portal gives way by buffering its rest.
        with self._lock:
            current = self._open
        if current is not None:
            current.detach()

    def _finished(self, stream: ResultStream) -> None:
        with self._lock:
            if self._open is stream:
                self._open = None

    def interrupt(self) -> None:
        """Interrupt the running statement (safe from any thread).

        DuckDB stops the query it is running; the stages that run in Python before it (parse, guard,
        rewrite) see the request through `interrupts` at their next checkpoint.
        """
        self._interrupts += 1
        self._cursor.interrupt()

    @property
    def interrupts(self) -> int:
        """How many interrupts were requested so far: a statement notes it at its start and compares."""
        return self._interrupts

    def close(self) -> None:
        with self._lock:
            current, self._open = self._open, None
        if current is not None:
            current.close()
        try:
            self._cursor.close()
        except duckdb.Error as exc:  # closing must not mask the reason the session ended
            log.debug("closing DuckDB cursor failed: %s", exc)
