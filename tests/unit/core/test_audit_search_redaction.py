"""Audit search hands auditors error texts redacted, even from records written before the engine redacted them."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from hd_core.adapters.local_audit import LocalFolderAuditArchive, LocalFolderAuditSink
from hd_core.audit import format_audit_ts
from hd_core.audit_search import QueryAuditFilter, for_auditors, search_query_audit

DAY = date(2026, 3, 1)
SECRET = "zz-secret-77"


def _old_record(query_id: str) -> dict[str, object]:
    """A record as hosts wrote it before error details were redacted."""
    return {
        "ts": format_audit_ts(datetime(2026, 3, 1, 12, tzinfo=UTC)), "query_id": query_id, "org_id": "org_a",
        "user_id": "usr_1", "tables": [], "timings_ms": {"total": 3.0},
        "error": {"sqlstate": "22P02", "code": "HD_ERR_INVALID_VALUE",
                  "message": f"Could not convert string '{SECRET}' to INT32"},
        "engine_error_detail": (f"ConversionException: Conversion Error: Could not convert string '{SECRET}' to "
                                f"INT32\n\nLINE 1: SELECT CAST('{SECRET}' AS INTEGER)\n                    ^"),
        "verdicts": [{"stage": "guard", "decision": "allow", "reason": ""},
                     {"stage": "plan_check", "decision": "deny",
                      "reason": f"HD_ERR_INVALID_VALUE: Could not convert string '{SECRET}' to INT32"}],
    }


def test_search_redacts_old_records_on_the_way_out(tmp_path: Path) -> None:
    with LocalFolderAuditSink(tmp_path, host_id="h1") as sink:
        sink.write(_old_record("q_old"))
    page = search_query_audit(LocalFolderAuditArchive(tmp_path), QueryAuditFilter(org_id="org_a", start=DAY, end=DAY))
    [record] = page.records
    assert SECRET not in repr(record)
    assert record["engine_error_detail"] == "ConversionException: Conversion Error: Could not convert string ? to INT32"
    assert record["error"] == {"sqlstate": "22P02", "code": "HD_ERR_INVALID_VALUE",
                               "message": "Could not convert string ? to INT32"}
    verdicts = record["verdicts"]
    assert isinstance(verdicts, list)
    assert verdicts[1]["reason"] == "HD_ERR_INVALID_VALUE: Could not convert string ? to INT32"
    assert record["query_id"] == "q_old"


def test_redacting_for_auditors_leaves_the_stored_record_and_clean_fields_alone() -> None:
    stored = _old_record("q_1")
    stored["sql_redacted"] = "SELECT CAST(? AS INT)"
    shown = for_auditors(stored)
    assert SECRET in str(stored["engine_error_detail"])  # a copy is redacted, not the archive's record
    assert shown["sql_redacted"] == "SELECT CAST(? AS INT)"
    assert for_auditors(shown) == shown


def test_records_without_errors_or_with_odd_shapes_pass_through() -> None:
    plain: dict[str, object] = {"ts": "2026-03-01T00:00:00+00:00", "query_id": "q", "error": None,
                                "engine_error_detail": None,
                                "verdicts": ["not-a-dict", {"stage": "x", "decision": "allow"}]}
    assert for_auditors(plain) == plain
