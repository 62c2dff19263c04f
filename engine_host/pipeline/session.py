"""A client session as the pipeline sees it: who is connected and the state their statements share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from engine_host.engine.duckdb_engine import EngineSession
from engine_host.pipeline import errors
from engine_host.pipeline.settings import SessionSettings
from hd_core.models import Principal

if TYPE_CHECKING:
    from engine_host.engine.table_catalog import TableInfo
    from engine_host.pipeline.execution import Execution
    from engine_host.pipeline.governor import GovernedPlan
    from engine_host.pipeline.pipeline import PreparedStatement
    from engine_host.pipeline.results import SqlCursor

IDLE, IN_TRANSACTION, FAILED_TRANSACTION = "I", "T", "E"


class Releasable(Protocol):
    def release(self) -> None: ...


@dataclass
class Session:
    """One authenticated connection's identity, settings, transaction state and open SQL cursors."""

    principal: Principal
    client_address: str
    startup: dict[str, str]
    settings: SessionSettings
    engine: EngineSession
    backend_pid: int = 0
    # The connection holds a concurrency slot for the statements it runs now (`StatementPipeline.enter_gate`).
    slot_held: bool = False
    transaction_status: str = IDLE
    cursors: dict[str, SqlCursor] = field(default_factory=dict)
    # Prepared statements by name: one namespace, as in PostgreSQL, for the protocol's Parse (the wire
    # holds this very dict) and SQL's PREPARE (pipeline/sql_prepared.py); "" is the unnamed statement.
    statements: dict[str, PreparedStatement] = field(default_factory=dict)
    # Statements run in the current transaction, and (name, statements before it) per savepoint:
    # enough to emulate the savepoint patterns drivers use without DuckDB having savepoints.
    transaction_statements: int = 0
    savepoints: list[tuple[str, int]] = field(default_factory=list)
    # While the open transaction holds DDL: the tables as this session sees them, and the DDL
    # whose ownership bookkeeping waits for COMMIT.
    local_tables: dict[str, TableInfo] | None = None
    pending_ddl: list[GovernedPlan] = field(default_factory=list)
    # Statements admitted and not yet finished (a result still being sent, an open cursor). Each
    # leaves when it finishes; whatever is left when the session closes is finished then.
    running: set[Execution] = field(default_factory=set)
    # What the open explicit transaction holds on table versions (pipeline/transactions.py), released when it ends.
    transaction_lease: Releasable | None = None

    @property
    def in_transaction(self) -> bool:
        return self.transaction_status != IDLE

    def transaction_ended(self) -> None:
        self.transaction_status = IDLE
        self.transaction_statements = 0
        self.savepoints.clear()
        self.local_tables = None
        self._release_transaction_lease()

    def _release_transaction_lease(self) -> None:
        lease, self.transaction_lease = self.transaction_lease, None
        if lease is not None:
            lease.release()

    def statement_failed(self) -> None:
        """A failed statement poisons an explicit transaction until ROLLBACK, as in Postgres."""
        if self.transaction_status == IN_TRANSACTION:
            self.transaction_status = FAILED_TRANSACTION

    def track(self, execution: Execution) -> None:
        """Hold `execution` until it finishes, so the session's end finishes it if nothing else did."""
        self.running.add(execution)
        execution.on_finish(lambda: self.running.discard(execution))

    def close(self) -> None:
        """End the session, whichever way its connection ended.

        Every statement still running is finished first (slot, timeout, lease and stream released,
        completion record written), then the cursors and the DuckDB connection are closed.
        """
        try:
            for execution in list(self.running):
                try:
                    execution.finish(errors.connection_ended())
                except errors.QueryError:
                    pass  # the record could not be stored: the writer logged it, and nothing is held
        finally:
            cursors, self.cursors = list(self.cursors.values()), {}
            try:
                for cursor in cursors:
                    cursor.close()
            finally:
                try:
                    self.engine.close()  # ends an open transaction, so what it held can go
                finally:
                    self._release_transaction_lease()
