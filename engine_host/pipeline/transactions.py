"""Transaction statements (BEGIN / COMMIT / ROLLBACK, savepoints) for the statement pipeline."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from engine_host.pipeline import errors
from engine_host.pipeline.cursors import IDENT, cursor_name
from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.results import Outcome
from engine_host.pipeline.session import FAILED_TRANSACTION, IN_TRANSACTION, Session
from engine_host.pipeline.settings import check_transaction_mode

if TYPE_CHECKING:
    from engine_host.pipeline.pipeline import PreparedStatement, StatementPipeline


class Transactions:
    """Transaction blocks and savepoints of the sessions of one pipeline."""

    def __init__(self, pipeline: StatementPipeline):
        self._pipeline = pipeline

    def run(self, session: Session, text: str) -> Outcome:
        from engine_host.pipeline.pipeline import (  # imported here: the pipeline module imports this one
            _TX_BEGIN,
            leading_words,
        )
        words = leading_words(text, 4)
        verb = words[0]
        if verb in ("SAVEPOINT", "RELEASE") or (verb in ("ROLLBACK", "ABORT") and "TO" in words[1:3]):
            return self._run_savepoint(session, text, verb)
        if verb in _TX_BEGIN:
            check_transaction_mode(text)
            if session.in_transaction:
                return Outcome(tag="BEGIN" if verb == "BEGIN" else "START TRANSACTION",
                               notices=["there is already a transaction in progress"])
            lease = self._pipeline.hold_snapshot()  # before BEGIN: DuckDB's snapshot cannot predate it
            try:
                self._pipeline._engine_command(session, "BEGIN TRANSACTION")
            except BaseException:
                lease.release()
                raise
            session.transaction_lease = lease
            session.transaction_status = IN_TRANSACTION
            return Outcome(tag="BEGIN" if verb == "BEGIN" else "START TRANSACTION")
        if not session.in_transaction:
            tag = "COMMIT" if verb in ("COMMIT", "END") else "ROLLBACK"
            return Outcome(tag=tag, notices=["there is no transaction in progress"])
        failed = session.transaction_status == FAILED_TRANSACTION
        commit = verb in ("COMMIT", "END") and not failed
        held, session.transaction_lease = session.transaction_lease, None
        session.transaction_ended()
        pending, session.pending_ddl = session.pending_ddl, []
        try:
            self._pipeline._engine_command(session, "COMMIT" if commit else "ROLLBACK")
        finally:
            if held is not None:  # held until DuckDB's transaction has ended
                held.release()
        if commit:
            for plan in pending:
                self._pipeline.governor.schema_changed(self._pipeline.subject(session), plan)
        return Outcome(tag="COMMIT" if commit else "ROLLBACK")

    def _run_savepoint(self, session: Session, text: str, verb: str) -> Outcome:
        """Savepoints, emulated where the result is exactly what Postgres would do.

        DuckDB has no savepoints. Rolling back to a savepoint is exact when nothing ran since it, or
        when it was taken before the transaction's first statement (then it is ROLLBACK + BEGIN);
        anything else is refused rather than silently undoing too much or too little.
        """
        m = _SAVEPOINT.match(text)
        if m is None:
            raise errors.syntax_error("could not parse this savepoint statement")
        name = cursor_name(m, text)
        if not session.in_transaction:
            raise QueryError("25P01", "HD_ERR_NO_TRANSACTION",
                             f"{verb} can only be used in transaction blocks")
        if verb == "SAVEPOINT":
            session.savepoints.append((name, session.transaction_statements))
            return Outcome(tag="SAVEPOINT")
        index = next((i for i in range(len(session.savepoints) - 1, -1, -1) if session.savepoints[i][0] == name),
                     None)
        if index is None:
            raise QueryError("3B001", "HD_ERR_NO_SUCH_SAVEPOINT", f'savepoint "{name}" does not exist')
        if verb == "RELEASE":
            del session.savepoints[index:]
            return Outcome(tag="RELEASE")
        taken_at = session.savepoints[index][1]
        del session.savepoints[index + 1:]
        failed = session.transaction_status == FAILED_TRANSACTION
        if taken_at == 0 and (failed or session.transaction_statements > 0):
            self._pipeline._engine_command(session, "ROLLBACK")
            self._pipeline._engine_command(session, "BEGIN TRANSACTION")
            session.local_tables, session.pending_ddl = None, []
        elif failed or session.transaction_statements != taken_at:
            session.transaction_status = FAILED_TRANSACTION
            raise errors.unsupported(
                "rolling back to a savepoint taken after other statements is not supported",
                hint="Roll back the whole transaction, or take the savepoint before the transaction's first statement.",
            )
        session.transaction_status = IN_TRANSACTION
        session.transaction_statements = taken_at
        return Outcome(tag="ROLLBACK")


_SAVEPOINT = re.compile(
    r"^\s*(?:SAVEPOINT|RELEASE(?:\s+SAVEPOINT)?|(?:ROLLBACK|ABORT)(?:\s+(?:WORK|TRANSACTION))?\s+TO(?:\s+SAVEPOINT)?)\s+"
    + IDENT + r"\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)


def ends_transaction(prepared: PreparedStatement) -> bool:
    from engine_host.pipeline.pipeline import (  # imported here: the pipeline module imports this one
        _TX_END,
        Kind,
        leading_words,
    )
    return prepared.kind is Kind.TRANSACTION and leading_words(prepared.text, 1)[0] in _TX_END
