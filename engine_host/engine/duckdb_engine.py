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
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as _typed_pc

from engine_host.engine.memory import EngineMemory
from engine_host.engine.views import sql_string

log = logging.getLogger(__name__)
# pyarrow-stubs' overloads of binary_length do not cover every string layout; used untyped.
pc: Any = _typed_pc

SetupStep = Callable[[duckdb.DuckDBPyConnection], None]

# The attached catalog that holds every relation with data (writable tables, Parquet views). Client
# names resolve against DuckDB's default catalog, which holds no data at all, so a table reference
# the governance rewrite did not turn into `hd_data.<schema>.<table>` fails to bind instead of
# reading raw rows. The guard refuses every client-written name under this catalog.
DATA_CATALOG = "hd_data"

# Rows per Arrow batch pulled from DuckDB: large enough to amortise per-batch encoding, small enough
# that a slow client holds at most a few MB per connection.
STREAM_BATCH_ROWS = 65_536


class ResultLimitExceeded(duckdb.Error):
    """A result (or one value in it) is larger than the host lets a statement return (54000).

    A DuckDB error class so it takes the path every engine failure of a running result takes
    (the execution finishes with it, its record says so); `sqlstate`/`code` say which limit.
    """

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.sqlstate = "54000"
        self.code = code


def _size_text(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


# id(batch) -> (a weak reference to the batch, its nbytes); an entry goes when its batch does.
_BATCH_BYTES: dict[int, tuple[weakref.ref[pa.RecordBatch], int]] = {}


def batch_nbytes(batch: pa.RecordBatch) -> int:
    """`batch.nbytes`, worked out once per batch.

    pyarrow computes `nbytes` afresh at every call, walking every buffer (about 50 us for a dozen
    columns, whatever the row count), and a batch's size is asked for by the result limits, the audit
    read-ahead and the audit record alike: for a one-row result that was most of its cost after DuckDB.
    """
    key = id(batch)
    known = _BATCH_BYTES.get(key)
    if known is not None and known[0]() is batch:
        return known[1]
    size = batch.nbytes

    def forget(ref: weakref.ref[pa.RecordBatch], key: int = key) -> None:
        if _BATCH_BYTES.get(key, (None, 0))[0] is ref:
            del _BATCH_BYTES[key]

    _BATCH_BYTES[key] = (weakref.ref(batch, forget), size)
    return size


def _check_batch(batch: pa.RecordBatch, memory: EngineMemory, total: int) -> int:
    """`total` + this batch's bytes; raises ResultLimitExceeded before a value or result over its cap is sent."""
    size = batch_nbytes(batch)
    if memory.max_value_bytes and size > memory.max_value_bytes:
        for index, column in enumerate(batch.columns):
            if column.nbytes <= memory.max_value_bytes:
                continue  # no value can be larger than all of its column's buffers together
            kind = column.type
            if not (pa.types.is_string(kind) or pa.types.is_binary(kind) or pa.types.is_large_string(kind)
                    or pa.types.is_large_binary(kind)):
                continue
            longest = pc.max(pc.binary_length(column)).as_py()
            if longest is not None and longest > memory.max_value_bytes:
                raise ResultLimitExceeded(
                    f"a value in column {batch.schema.names[index]!r} is {_size_text(longest)}, over the "
                    f"{_size_text(memory.max_value_bytes)} one value may be", "HD_ERR_VALUE_TOO_LARGE")
    total += size
    if memory.max_result_bytes and total > memory.max_result_bytes:
        raise ResultLimitExceeded(
            f"the result is larger than the {_size_text(memory.max_result_bytes)} one statement may return",
            "HD_ERR_RESULT_TOO_LARGE")
    return total


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

    def __init__(self, path: Path | None, *, allowed_directories: Sequence[Path], threads: int | None = None,
                 memory: EngineMemory | None = None):
        self._path = path
        self._allowed = [str(p.resolve()) for p in allowed_directories]
        self._threads = threads
        self.memory = memory or EngineMemory()
        self._con: duckdb.DuckDBPyConnection | None = None

    def _temp_directory(self) -> Path:
        if self.memory.temp_directory is not None:
            return self.memory.temp_directory
        if self._path is not None:
            return self._path.parent / "duckdb-tmp"
        # An in-memory database would spill into `.tmp` under the working directory.
        return Path(tempfile.gettempdir()) / f"hd-duckdb-tmp-{os.getpid()}"

    def open(self, setup: Sequence[SetupStep] = ()) -> None:
        """Connect, run the setup steps (table registration, catalog objects), then lock the configuration."""
        config: dict[str, Any] = {
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            # UUID, JSON and HUGEINT keep their identity in Arrow results, so clients see uuid/json/numeric.
            "arrow_lossless_conversion": True,
            # Set here, before lock_configuration: a statement that needs more gets 53200 (out of
            # memory) once spilling cannot help, and no session can raise the limit.
            "memory_limit": f"{max(1, self.memory.memory_limit() >> 20)}MiB",
            "temp_directory": str(self._temp_directory()),
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
        return EngineSession(self.connection.cursor(), self.memory)

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

    def __init__(self, reader: Any, session: EngineSession, memory: EngineMemory | None = None):
        self._reader = reader
        self._session = session
        self._memory = memory or EngineMemory()
        self._bytes = 0
        self._held: list[pa.RecordBatch] | None = None
        self._failure: ResultLimitExceeded | None = None
        self.schema: pa.Schema = reader.schema

    def next_batch(self) -> pa.RecordBatch | None:
        """The next batch, or None when the statement has no more rows. Blocking: call off the event loop.

        Raises ResultLimitExceeded (and closes the stream) at the first batch that holds a value over
        `max_value_bytes` or takes the result over `max_result_bytes`; that batch is never handed on.
        """
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        if self._held is not None:
            return self._held.pop(0) if self._held else None
        try:
            batch = self._reader.read_next_batch()
        except StopIteration:
            self.close()
            return None
        except OSError as exc:  # a failure mid-stream reaches Arrow's reader as OSError("INTERRUPT Error: ...")
            raise _stream_error(exc) from None
        self._checked(batch)
        return batch

    def _checked(self, batch: pa.RecordBatch) -> None:
        try:
            self._bytes = _check_batch(batch, self._memory, self._bytes)
        except ResultLimitExceeded:
            self.close()
            raise

    def detach(self) -> None:
        """Read the rest into memory so the session's connection can run another statement.

        Held at most `max_result_bytes`: a larger rest fails the suspended statement instead.
        """
        if self._held is None:
            held: list[pa.RecordBatch] = []
            try:
                for batch in self._reader:
                    self._checked(batch)
                    held.append(batch)
            except ResultLimitExceeded as exc:  # the suspended statement fails at its next read, not the new one
                held, self._failure = [], exc
            self._held = held
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


_STREAM_ERRORS = {"INTERRUPT": duckdb.InterruptException, "Conversion": duckdb.ConversionException,
                  "Invalid Input": duckdb.InvalidInputException, "Out of Range": duckdb.OutOfRangeException,
                  "Out of Memory": duckdb.OutOfMemoryException}


def _stream_error(exc: OSError) -> duckdb.Error:
    """DuckDB's own exception class for an error its Arrow stream reported as "<Kind> Error: message"."""
    kind, _, message = str(exc).partition(" Error: ")
    return _STREAM_ERRORS.get(kind, duckdb.Error)(message or str(exc))


class EngineSession:
    """One client's DuckDB connection: transactions, statements and interruption."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection, memory: EngineMemory | None = None):
        self._cursor = cursor
        self._memory = memory or EngineMemory()
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
            self._open = ResultStream(result.arrow_reader(), self, self._memory)
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
