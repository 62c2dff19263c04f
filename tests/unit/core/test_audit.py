"""The query audit record: redacted SQL only, one sorted JSON line, partitioned by its UTC day."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from hd_core.audit import QueryAuditRecord, audit_partition, format_audit_ts

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _record(sql: str = "SELECT name FROM crm.customers WHERE email = 'jane@example.com'") -> QueryAuditRecord:
    return QueryAuditRecord.begin(
        sql=sql,
        org_id="org_1",
        user_id="usr_1",
        key_id="key_1",
        role="Analyst",
        source_ip="10.0.0.7",
        agent_id="agt_1",
        agent_framework="langchain",
        request_id="req_1",
        statement_kind="SELECT",
        at=T0,
    )


def test_partition_is_the_utc_day() -> None:
    assert audit_partition(T0) == "audit/queries/2026/03/01/"
    late_in_new_york = datetime(2026, 2, 28, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert audit_partition(late_in_new_york) == "audit/queries/2026/03/01/"


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError):
        audit_partition(datetime(2026, 3, 1))


def test_ts_is_iso_utc_with_milliseconds() -> None:
    assert format_audit_ts(T0) == "2026-03-01T12:00:00.123Z"
    assert _record().ts == "2026-03-01T12:00:00.123Z"


def test_raw_sql_is_never_stored() -> None:
    record = _record()
    line = record.to_json_line()
    assert "jane" not in line
    assert record.sql_redacted == "SELECT name FROM crm.customers WHERE email = ?"
    assert not hasattr(record, "sql")


def test_json_line_has_every_field_sorted_on_one_line() -> None:
    record = _record()
    record.tables = ["crm.customers"]
    record.masked_columns = ["crm.customers.email"]
    record.row_filters_applied = ["crm.customers"]
    record.add_verdict("authorize", "allow", "role Analyst may read crm.customers")
    record.add_timing("parse", 0.4)
    record.add_timing("execute", 3.5)
    record.add_timing("execute", 1.0)
    record.rows_returned, record.bytes_returned, record.credits = 3, 120, 0.001
    line = record.to_json_line()
    assert "\n" not in line
    decoded = json.loads(line)
    assert list(decoded) == sorted(decoded)
    assert set(decoded) == {
        "ts",
        "query_id",
        "org_id",
        "user_id",
        "key_id",
        "role",
        "source_ip",
        "key_env",
        "agent_id",
        "agent_framework",
        "request_id",
        "priority",
        "dialect",
        "sql_redacted",
        "statement_kind",
        "tables",
        "rows_returned",
        "bytes_returned",
        "rows_written",
        "masked_columns",
        "phi_columns_returned",
        "phi_disclosure",
        "row_filters_applied",
        "verdicts",
        "timings_ms",
        "credits",
        "error",
        "engine_error_detail",
    }
    assert decoded["verdicts"] == [
        {"stage": "authorize", "decision": "allow", "reason": "role Analyst may read crm.customers"}
    ]
    assert decoded["timings_ms"] == {"parse": 0.4, "execute": 4.5}
    assert decoded["error"] is None
    assert decoded["query_id"].startswith("qry_")


def test_verdict_decision_must_be_allow_or_deny() -> None:
    with pytest.raises(ValueError):
        _record().add_verdict("authorize", "maybe", "?")  # type: ignore[arg-type]


def test_failure_keeps_the_full_engine_text_minus_pii() -> None:
    record = _record()
    message = "Conversion Error: Could not convert string 'jane@example.com' to INT32 at row 7"
    record.fail(sqlstate="22P02", code="HD_ERR_ENGINE", message=message, engine_error_detail="LINE 1: ... 415-555-2671")
    decoded = json.loads(record.to_json_line())
    assert decoded["error"] == {
        "sqlstate": "22P02",
        "code": "HD_ERR_ENGINE",
        "message": "Conversion Error: Could not convert string '[EMAIL]' to INT32 at row 7",
    }
    assert decoded["engine_error_detail"] == "LINE 1: ... [PHONE]"


def test_non_finite_numbers_become_null_not_nan() -> None:
    record = _record()
    record.credits = float("nan")
    record.add_timing("execute", float("inf"))
    line = record.to_json_line()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line)["credits"] is None
