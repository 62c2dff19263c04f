"""Audit search through the control API (every test on SQLite + folders and on moto's DynamoDB + S3):
a default window, the environment in the path, lookup by `q_` reference, the outcome and error
filters, cursors over a defaulted window, and exports recorded in the IAM trail."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import boto3
import pytest
import requests

from hd_core import audit_export
from hd_core.errors import AuditWriteFailed
from tests.integration.functions.conftest import AUDIT_BUCKET, ControlApi


def _staging(control: ControlApi) -> str:
    environments = control.ok("GET", f"/v1/organizations/{control.org_id}/environments")
    return next(env["env_id"] for env in environments if env["key_env"] == "test")


def _store(control: ControlApi, query_id: str, *, ago: timedelta = timedelta(minutes=5), key_env: str | None = "live",
           org: str | None = None, user: str = "usr_a", error: dict[str, str] | None = None, denied: bool = False,
           total_ms: float = 3.0) -> None:
    record: dict[str, Any] = {
        "ts": (datetime.now(UTC) - ago).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "query_id": query_id, "org_id": org or control.org_id, "user_id": user, "agent_id": None,
        "sql_redacted": "SELECT ? FROM main.patients", "tables": ["main.patients"],
        "timings_ms": {"total": total_ms}, "rows_returned": 1, "error": error,
        "verdicts": [{"stage": "authorize", "decision": "deny" if denied else "allow", "reason": "r"}],
    }
    if key_env is not None:
        record["key_env"] = key_env
    control.audit_sink.write(record)


def _ids(page: dict[str, Any]) -> list[str]:
    return [record["query_id"] for record in page["records"]]


def _queries(control: ControlApi, env_id: str | None = None) -> str:
    return f"/v1/environments/{env_id or control.env_id}/audit/queries"


def test_without_start_and_end_the_search_covers_the_last_24_hours(control: ControlApi) -> None:
    _store(control, "q_recent", ago=timedelta(hours=23))
    _store(control, "q_old", ago=timedelta(hours=25))
    page = control.ok("GET", _queries(control))
    assert _ids(page) == ["q_recent"]
    start, end = datetime.fromisoformat(page["start"]), datetime.fromisoformat(page["end"])
    assert end - start == timedelta(hours=24) and abs(datetime.now(UTC) - end) < timedelta(minutes=1)
    # An explicit start reaches further back; a date is the whole day.
    since = (datetime.now(UTC) - timedelta(hours=26)).isoformat().replace("+00:00", "Z")
    assert _ids(control.ok("GET", f"{_queries(control)}?start={since}")) == ["q_old", "q_recent"]


def test_the_environment_in_the_path_filters_the_records(control: ControlApi) -> None:
    _store(control, "q_prod", key_env="live")
    _store(control, "q_stage", key_env="test")
    _store(control, "q_before_environments", key_env=None)
    assert _ids(control.ok("GET", _queries(control))) == ["q_prod"]
    assert _ids(control.ok("GET", _queries(control, _staging(control)))) == ["q_stage"]


def test_a_reference_finds_its_statement_in_its_environment_only(control: ControlApi) -> None:
    _store(control, "q_0123456789abcdef0123", error={"sqlstate": "XX000", "code": "HD_ERR_INTERNAL",
                                                    "message": "internal error (reference q_0123456789abcdef0123)"})
    _store(control, "q_0123456789abcdef0123", ago=timedelta(minutes=6))  # a streamed result's first record
    _store(control, "q_theirs", org="org_other")
    _store(control, "q_staging", key_env="test")
    found = control.ok("GET", f"{_queries(control)}/q_0123456789abcdef0123")
    assert found["query_id"] == "q_0123456789abcdef0123"
    assert [record["error"] for record in found["records"]] == [None, {
        "sqlstate": "XX000", "code": "HD_ERR_INTERNAL", "message": "internal error (reference q_0123456789abcdef0123)"}]
    for missing, env_id in (("q_theirs", control.env_id), ("q_staging", control.env_id), ("q_nothing", control.env_id),
                            ("q_0123456789abcdef0123", _staging(control))):
        reply = control.call("GET", f"{_queries(control, env_id)}/{missing}")
        assert reply.status == 404 and reply.json()["error"]["code"] == "HD_ERR_NOT_FOUND", missing
        assert missing in reply.json()["error"]["message"]


def test_a_reference_older_than_a_week_needs_a_start(control: ControlApi) -> None:
    _store(control, "q_last_month", ago=timedelta(days=9))
    assert control.call("GET", f"{_queries(control)}/q_last_month").status == 404
    start = (datetime.now(UTC) - timedelta(days=10)).date().isoformat()
    assert _ids(control.ok("GET", f"{_queries(control)}/q_last_month?start={start}")) == ["q_last_month"]


def test_outcome_sqlstate_and_code_filters(control: ControlApi) -> None:
    _store(control, "q_ok", ago=timedelta(minutes=4))
    _store(control, "q_denied", ago=timedelta(minutes=3), denied=True,
           error={"sqlstate": "42501", "code": "HD_ERR_PERMISSION_DENIED", "message": "permission denied"})
    _store(control, "q_failed", ago=timedelta(minutes=2),
           error={"sqlstate": "57014", "code": "HD_ERR_STATEMENT_TIMEOUT", "message": "timeout"})
    base = _queries(control)
    assert _ids(control.ok("GET", f"{base}?outcome=ok")) == ["q_ok"]
    assert _ids(control.ok("GET", f"{base}?outcome=denied")) == ["q_denied"]
    assert _ids(control.ok("GET", f"{base}?outcome=error")) == ["q_failed"]
    assert _ids(control.ok("GET", f"{base}?sqlstate=57014")) == ["q_failed"]
    assert _ids(control.ok("GET", f"{base}?code=HD_ERR_PERMISSION_DENIED")) == ["q_denied"]
    for bad in ("outcome=maybe", "sqlstate=123", "code=oops", "start=yesterday", "end=2026-13-01"):
        reply = control.call("GET", f"{base}?{bad}")
        assert reply.status in (400, 422) and reply.json()["error"]["code"].startswith("HD_ERR_"), bad


def test_a_cursor_pages_through_a_defaulted_window_that_does_not_move(control: ControlApi) -> None:
    for n in range(7):
        _store(control, f"q_{n:02d}", ago=timedelta(minutes=30 - n))
    seen: list[str] = []
    page = control.ok("GET", f"{_queries(control)}?limit=3")
    window = (page["start"], page["end"])
    while True:
        seen += _ids(page)
        assert (page["start"], page["end"]) == window
        if page["next_cursor"] is None:
            break
        _store(control, f"q_late_{len(seen)}", ago=timedelta(seconds=-5))  # after the window's end: not found
        page = control.ok("GET", f"{_queries(control)}?limit=3&cursor={page['next_cursor']}")
    assert seen == [f"q_{n:02d}" for n in range(7)]
    # The cursor belongs to its filter: another filter with it is refused.
    cursor = control.ok("GET", f"{_queries(control)}?limit=1")["next_cursor"]
    reply = control.call("GET", f"{_queries(control)}?limit=1&user_id=usr_b&cursor={cursor}")
    assert reply.status == 400 and "different filter" in reply.json()["error"]["message"]


def _fetch(control: ControlApi, url: str) -> bytes:
    if url.startswith("file://"):
        return Path(urlsplit(url).path).read_bytes()
    parts = urlsplit(url)
    assert parts.scheme == "https" and "X-Amz-Signature=" in parts.query and "X-Amz-Expires=900" in parts.query
    # moto answers a presigned GET made with requests (which it intercepts) the way S3 would.
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return response.content


def test_an_export_is_stored_fetched_by_its_url_and_recorded_in_the_iam_trail(control: ControlApi) -> None:
    _store(control, "q_a", ago=timedelta(minutes=9), user="usr_a")
    _store(control, "q_b", ago=timedelta(minutes=8), user="usr_b", error={
        "sqlstate": "22012", "code": "HD_ERR_ENGINE", "message": "=HYPERLINK(\"x\")"})
    _store(control, "q_stage", key_env="test")
    _store(control, "q_theirs", org="org_other")
    start = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    exported = control.ok("GET", f"{_queries(control)}/export?format=jsonl&start={quote(start)}")
    assert exported["record_count"] == 2 and exported["format"] == "jsonl"
    lines = _fetch(control, exported["url"]).decode().splitlines()
    assert [json.loads(line)["query_id"] for line in lines] == ["q_a", "q_b"]
    assert exported["size_bytes"] == sum(len(line.encode()) + 1 for line in lines)

    as_csv = control.ok("GET", f"{_queries(control)}/export?format=csv&start={quote(start)}&user_id=usr_b")
    rows = list(csv.DictReader(io.StringIO(_fetch(control, as_csv["url"]).decode())))
    assert [(row["query_id"], row["outcome"], row["sqlstate"]) for row in rows] == [("q_b", "error", "22012")]
    assert rows[0]["error_message"].startswith("'=")  # a spreadsheet must not run it as a formula

    events = [event for event in control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin?limit=1000")
              if event["event_type"] == "audit.exported"]
    assert [event["after"]["export_id"] for event in events] == [exported["export_id"], as_csv["export_id"]]
    first = events[0]
    assert first["actor"] == control.owner_id and first["target"] == control.env_id
    assert (first["after"]["start"], first["after"]["format"], first["after"]["record_count"]) == (start, "jsonl", 2)
    assert events[1]["after"]["filters"] == {"key_env": "live", "user_id": "usr_b"}
    if control.backend == "aws":
        stored_as = first["after"]["stored_as"]
        assert stored_as.startswith(f"audit/exports/{control.org_id}/") and stored_as in exported["url"]
        head = boto3.client("s3").head_object(Bucket=AUDIT_BUCKET, Key=stored_as)
        assert head["ContentType"] == "application/x-ndjson"


def test_an_export_too_big_for_one_request_is_refused_and_leaves_no_trace(
    control: ControlApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_export, "MAX_EXPORT_RECORDS", 2)
    for n in range(3):
        _store(control, f"q_{n}", ago=timedelta(minutes=5 - n))
    reply = control.call("GET", f"{_queries(control)}/export")
    assert reply.status == 400 and reply.json()["error"]["code"] == "HD_ERR_EXPORT_TOO_LARGE"
    too_long = control.call("GET", f"{_queries(control)}/export?start=2026-01-01&end=2026-03-01")
    assert too_long.status == 400 and "31 days" in too_long.json()["error"]["message"]
    events = control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin?limit=1000")
    assert "audit.exported" not in {event["event_type"] for event in events}


def test_an_analyst_can_neither_search_nor_export(control: ControlApi) -> None:
    org = f"/v1/organizations/{control.org_id}"
    user = control.ok("POST", f"{org}/users", {"email": "a@x.com", "role": "Analyst"})
    key = control.ok("POST", f"{org}/api-keys", {"user_id": user["user_id"], "scopes": ["read_only"]})["api_key"]
    for path in ("", "/export", "/q_0123"):
        assert control.call("GET", f"{_queries(control)}{path}", key=key).status == 403, path


def test_an_export_whose_iam_event_cannot_be_stored_is_discarded_and_no_url_is_given(
    control: ControlApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _store(control, "q_a")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AuditWriteFailed("the IAM trail cannot take an event")

    monkeypatch.setattr(control.services.trail, "record", refuse)
    reply = control.call("GET", f"{_queries(control)}/export")
    assert reply.status == 503 and reply.json()["error"]["code"] == "HD_ERR_AUDIT_UNAVAILABLE"
    assert "url" not in reply.body.decode()
    if control.backend == "aws":
        listed = boto3.client("s3").list_objects_v2(Bucket=AUDIT_BUCKET, Prefix="audit/exports/")
        assert listed.get("KeyCount", 0) == 0  # only a delete marker is left of it
    else:
        assert list((tmp_path / "audit" / "exports").rglob("*.jsonl")) == []
