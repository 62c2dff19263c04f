"""GovernedRows: no row leaves before the audit record is stored; max-rows is enforced before any row."""

from __future__ import annotations

import pyarrow as pa
import pytest

from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.execution import GovernedRows
from engine_host.pipeline.governor import StatementAudit
from engine_host.pipeline.results import RowSource


class _Stream:
    def __init__(self, sizes: list[int]):
        self._batches = [pa.record_batch([pa.array(range(n))], names=["i"]) for n in sizes]

    def next_batch(self) -> pa.RecordBatch | None:
        return self._batches.pop(0) if self._batches else None

    def close(self) -> None:
        self._batches = []


class _Execution:
    """Records what happened, in order; `fail_audit` makes storing the record fail."""

    def __init__(self, fail_audit: bool = False):
        self.audit = StatementAudit(query_id="q_test", sql="SELECT 1", dialect="postgres", started=0.0)
        self.events: list[str] = []
        self.finished = False
        self.fail_audit = fail_audit

    def record_now(self) -> None:
        self.events.append(f"record:{self.audit.rows}")
        if self.fail_audit:
            raise QueryError("58030", "HD_ERR_AUDIT_UNAVAILABLE", "audit down")

    def finish(self, error: QueryError | None = None, *, write: bool = True) -> None:
        self.finished = True
        self.events.append(f"finish:{self.audit.rows}:{error.code if error else 'ok'}")
        if write and self.fail_audit:
            raise QueryError("58030", "HD_ERR_AUDIT_UNAVAILABLE", "audit down")

    def engine_error(self, exc: Exception) -> QueryError:
        return QueryError("XX000", "HD_ERR_ENGINE", str(exc))


def _rows(sizes: list[int], execution: _Execution, **kwargs: int) -> GovernedRows:
    return GovernedRows(RowSource(_Stream(sizes)), execution, **kwargs)  # type: ignore[arg-type]


def _drain(rows: GovernedRows, execution: _Execution) -> list[str]:
    seen = []
    while (batch := rows.read()) is not None:
        seen.append(f"batch:{batch.num_rows}:finished={execution.finished}")
    return seen


def test_small_result_is_audited_in_full_before_the_first_row() -> None:
    execution = _Execution()
    seen = _drain(_rows([3, 2], execution), execution)
    assert execution.events == ["finish:5:ok"]
    assert seen == ["batch:3:finished=True", "batch:2:finished=True"]


def test_no_row_is_released_when_the_record_cannot_be_stored() -> None:
    execution = _Execution(fail_audit=True)
    rows = _rows([3], execution)
    with pytest.raises(QueryError) as caught:
        rows.read()
    assert caught.value.code == "HD_ERR_AUDIT_UNAVAILABLE"
    assert rows.read() is None


def test_result_over_max_rows_fails_before_any_row() -> None:
    execution = _Execution()
    rows = _rows([4, 4], execution, max_rows=5)
    with pytest.raises(QueryError) as caught:
        rows.read()
    assert caught.value.code == "HD_ERR_MAX_ROWS_EXCEEDED"
    assert execution.events[-1].endswith(":HD_ERR_MAX_ROWS_EXCEEDED")
    assert rows.read() is None


def test_result_at_max_rows_is_delivered_whole() -> None:
    execution = _Execution()
    seen = _drain(_rows([4, 1], execution, max_rows=5), execution)
    assert [s.split(":")[1] for s in seen] == ["4", "1"]


def test_large_result_gets_a_record_before_its_first_row_and_a_completion_record() -> None:
    execution = _Execution()
    rows = _rows([4, 4, 4], execution, read_ahead_rows=5)
    first = rows.read()
    assert first is not None and execution.events == ["record:5"]  # read ahead exactly 5 rows
    _drain(rows, execution)
    assert execution.events == ["record:5", "finish:12:ok"]


def test_closing_early_finishes_once_with_rows_so_far() -> None:
    execution = _Execution()
    rows = _rows([4, 4, 4], execution, read_ahead_rows=5)
    rows.read()
    rows.close()
    rows.close()
    assert execution.events == ["record:5", "finish:5:ok"]
