"""One governed execution: its concurrency slot, timeout, metering and audit record, and its rows.

Rows are held back until the statement's audit record is stored. `GovernedRows` reads ahead up
to `read_ahead_rows` rows (and, when a max-rows quota applies, up to that limit + 1) before the
first row goes to the client; a result that ends within the read-ahead - the usual case - gets
its one complete record (rows and bytes included) before anything is sent, so a record that
cannot be written fails the statement with no rows returned. A result larger than the
read-ahead gets its record (marked `streamed`) before its first row and a completion record when
it ends.

An Execution is the one owner of what a running statement holds: its concurrency slot, its
timeout, its data lease and its engine stream (registered with `on_finish`). Every path out - last
row, client close, error, cancel, timeout, session end - goes through `finish`, which releases all
of them and writes the completion record exactly once. The session keeps its unfinished executions
(`Session.running`), so a connection that ends at any byte finishes every one of them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from engine_host.engine.duckdb_engine import batch_nbytes
from engine_host.pipeline.errors import QueryError, from_engine_error_redacted
from engine_host.pipeline.governance.rewrite import is_row_filter_violation
from engine_host.pipeline.governor import Governor, StatementAudit
from engine_host.pipeline.results import RowSource
from hd_core.phi_disclosures import DisclosedPatients
from hd_core.policy_eval import Subject

log = logging.getLogger(__name__)

READ_AHEAD_ROWS = 65_536
READ_AHEAD_BYTES = 64 * 1024 * 1024


class Execution:
    """The bookkeeping of one statement between admission and its audit record."""

    def __init__(self, governor: Governor, subject: Subject, settings: Mapping[str, str], audit: StatementAudit,
                 *, holds_slot: bool, on_timeout: Callable[[], None] | None = None, timeout_seconds: float = 0):
        self.governor = governor
        self.subject = subject
        self.settings = dict(settings)
        self.audit = audit
        self._holds_slot = holds_slot
        self._finished = False
        self._lock = threading.Lock()
        self.timed_out = False
        self._deadline = None
        self._cleanups: list[Callable[[], None]] = []
        if on_timeout is not None and timeout_seconds > 0:
            def fire() -> None:
                if self._finished:
                    return  # ended as the deadline came: its connection may already be closed
                self.timed_out = True
                on_timeout()
            self._deadline = governor.watchdog.arm(timeout_seconds, fire)

    def engine_error(self, exc: Exception) -> QueryError:
        """The client-facing error for an engine failure (the audit keeps its class and a redacted first line)."""
        message = str(exc)
        if is_row_filter_violation(message):
            return QueryError("42501", "HD_ERR_ROW_FILTER_CHECK",
                              "new row violates the row-level security policy for this table",
                              hint="Write only rows your row filter allows you to see.")
        if self.timed_out and type(exc).__name__ == "InterruptException":
            return QueryError("57014", "HD_ERR_STATEMENT_TIMEOUT", "canceling statement due to statement timeout",
                              hint="Narrow the query, or raise statement_timeout for this session.")
        error, full = from_engine_error_redacted(exc, self.audit.query_id)
        self.audit.engine_error_detail = full
        return error

    def on_finish(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` when the execution finishes (releasing what the statement held), last added first."""
        self._cleanups.append(cleanup)

    def record_now(self) -> None:
        """Write the audit record now (rows so far) without finishing; raises QueryError on failure."""
        self.governor.record(self.subject, self.settings, self.audit, final=False)

    def finish(self, error: QueryError | None = None, *, write: bool = True) -> None:
        """End the execution once: release its resources, meter it and (if `write`) store its record.

        Everything is released even if a release step fails (each failure is logged); the record is
        written last, so a sink that fails (QueryError) leaves nothing held.
        """
        with self._lock:
            if self._finished:
                return
            self._finished = True
        try:
            if self._deadline is not None:
                self.governor.watchdog.cancel(self._deadline)
            while self._cleanups:
                cleanup = self._cleanups.pop()
                try:
                    cleanup()
                except Exception as exc:  # noqa: BLE001 - by type only: engine texts can quote row values
                    log.error("releasing statement %s: %s failed (%s)", self.audit.query_id,
                              getattr(cleanup, "__qualname__", "a cleanup"), type(exc).__name__)
        finally:
            if self._holds_slot:
                self.governor.release()
        if error is not None and self.audit.error is None:
            self.audit.error = {"sqlstate": error.sqlstate, "code": error.code, "message": error.message}
        if write:
            self.governor.record(self.subject, self.settings, self.audit)

    @property
    def finished(self) -> bool:
        return self._finished


class GovernedRows(RowSource):
    """A statement's rows, counted, capped by the max-rows quota, and held back until audited."""

    def __init__(self, inner: RowSource, execution: Execution, *, max_rows: int | None = None,
                 read_ahead_rows: int = READ_AHEAD_ROWS, read_ahead_bytes: int = READ_AHEAD_BYTES):
        self._inner = inner
        self._execution = execution
        self._max_rows = max_rows
        self._read_ahead_rows = read_ahead_rows
        self._read_ahead_bytes = read_ahead_bytes
        self._held: list[pa.RecordBatch] = []
        self._started = False
        self._closed = False

    @property
    def exhausted(self) -> bool:
        return self._closed or (self._started and not self._held and self._inner.exhausted)

    def _start(self) -> None:
        """Read ahead, enforce max rows, and store the audit record before any row is released."""
        self._started = True
        audit = self._execution.audit
        limit_rows = self._read_ahead_rows if self._max_rows is None else max(self._read_ahead_rows,
                                                                              self._max_rows + 1)
        held_rows = held_bytes = 0
        while held_rows < limit_rows and (self._max_rows is not None or held_bytes < self._read_ahead_bytes):
            batch = self._pull(limit_rows - held_rows)
            if batch is None:
                break
            self._note_patients(batch)
            self._held.append(batch)
            held_rows += batch.num_rows
            held_bytes += batch_nbytes(batch)
            if self._max_rows is not None and held_rows > self._max_rows:
                self._fail(QueryError(
                    "53400", "HD_ERR_MAX_ROWS_EXCEEDED",
                    f"the result has more than the {self._max_rows} rows a query may return in this organisation",
                    hint="Add a LIMIT or a narrower WHERE clause, or ask an admin to raise max_rows_per_query.",
                ))
        audit.rows, audit.bytes = held_rows, held_bytes
        if self._inner.exhausted:
            self._finish_ok()
        else:
            audit.verdicts.append({"stage": "stream", "decision": "allow",
                                   "reason": "result larger than the audit read-ahead; a completion record follows"})
            try:
                self._execution.record_now()
            except QueryError as exc:
                self._fail(exc, write=False)

    def _note_patients(self, batch: pa.RecordBatch) -> None:
        """Record which patients' keys the batch carries (HMACs only), when the plan knows where they are."""
        audit = self._execution.audit
        plan = audit.plan
        if plan is None or not plan.patient_key_outputs or batch.num_rows == 0:
            return
        if audit.patients is None:
            key = self._execution.governor.audit.phi_key
            if key is None:
                return
            audit.patients = DisclosedPatients(key)
        for _, index in plan.patient_key_outputs:
            try:
                keys = pc.unique(batch.column(index)).drop_null().cast(pa.string())
            except (IndexError, pa.ArrowException):
                audit.patients.untraceable = True  # recorded as not traceable; never fails the statement
                continue
            audit.patients.add(value for value in keys.to_pylist() if value is not None)

    def _pull(self, limit: int | None) -> pa.RecordBatch | None:
        try:
            return self._inner.read(limit)
        except (duckdb.Error, pa.ArrowException) as exc:
            self._fail(self._execution.engine_error(exc))
        return None  # unreachable: _fail raises

    def _fail(self, error: QueryError, *, write: bool = True) -> None:
        self._held.clear()
        self._closed = True
        self._inner.close()
        try:
            self._execution.finish(error, write=write)
        except QueryError:
            pass  # the statement already fails with `error`; the audit sink's own failure is logged
        raise error

    def _finish_ok(self) -> None:
        try:
            self._execution.finish()
        except QueryError as exc:  # the record could not be stored: nothing may be released
            self._held.clear()
            self._closed = True
            raise exc from None

    def read(self, limit: int | None = None) -> pa.RecordBatch | None:
        if self._closed:
            return None
        if not self._started:
            self._start()
        if self._held:
            first = self._held[0]
            if limit is not None and first.num_rows > limit:
                self._held[0] = first.slice(limit)
                return first.slice(0, limit)
            return self._held.pop(0)
        if self._execution.finished:
            self._closed = True
            return None
        batch = self._pull(limit)
        if batch is None:
            self._closed = True
            self._finish_ok()
            return None
        self._note_patients(batch)
        self._execution.audit.rows += batch.num_rows
        self._execution.audit.bytes += batch_nbytes(batch)
        return batch

    def at_end(self) -> bool:
        if self._closed:
            return True
        if not self._started:
            self._start()
        if self._held:
            return False
        if self._execution.finished:
            return True
        try:
            end = self._inner.at_end()
        except (duckdb.Error, pa.ArrowException) as exc:
            self._fail(self._execution.engine_error(exc))
        if end:
            self._closed = True
            self._finish_ok()
        return end

    def close(self) -> None:
        """The client is done (or went away): finish with the rows sent so far."""
        if self._closed and self._execution.finished:
            return
        self._closed = True
        self._held.clear()
        self._inner.close()
        if not self._execution.finished:
            try:
                self._execution.finish()
            except QueryError:
                pass  # nothing more is sent on this result; the sink's failure is logged
