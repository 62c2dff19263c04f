"""Stages that run in Python count against the statement timeout and stop when the statement is cancelled."""

from __future__ import annotations

import time

import pytest

from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.governor import Governor, StatementAudit


def _audit(*, deadline: float | None = None, interrupted: bool = False) -> StatementAudit:
    return StatementAudit(query_id="q_test", sql="SELECT 1", dialect="postgres", started=time.perf_counter(),
                          deadline=deadline, interrupted=lambda: interrupted)


def test_a_stage_after_the_deadline_is_refused_as_a_statement_timeout_and_audited() -> None:
    audit = _audit(deadline=time.perf_counter() - 0.001)
    ran: list[bool] = []
    with pytest.raises(QueryError) as caught:
        Governor._stage(audit, "guard", lambda: ran.append(True))
    assert (caught.value.sqlstate, caught.value.code) == ("57014", "HD_ERR_STATEMENT_TIMEOUT")
    assert ran == []
    assert audit.verdicts[-1]["decision"] == "deny" and audit.error is not None


def test_a_cancelled_statement_stops_at_its_next_stage() -> None:
    audit = _audit(interrupted=True)
    with pytest.raises(QueryError) as caught:
        Governor._stage(audit, "policy", lambda: None)
    assert (caught.value.sqlstate, caught.value.code) == ("57014", "HD_ERR_CANCELED")


def test_stages_within_the_deadline_run_and_the_engine_gets_what_is_left() -> None:
    audit = _audit(deadline=time.perf_counter() + 10)
    assert Governor._stage(audit, "guard", lambda: 7) == 7
    left = audit.remaining_seconds(10)
    assert 9 < left <= 10
    assert _audit(deadline=time.perf_counter() - 5).remaining_seconds(10) == 0.001  # still armed, fires at once
    assert _audit().remaining_seconds(30) == 30  # no deadline given: the engine's own timeout stands
