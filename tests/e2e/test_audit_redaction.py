"""The query audit never stores data: engine errors that quote values are kept by their shape only.

A failed cast and a unique violation make DuckDB quote the offending value (and echo the statement
in a `LINE 1:` excerpt). The client gets a generic message with a reference; the audit record keeps
the SQLSTATE, the code, the DuckDB error class and the message's shape under that reference, and
no stored record holds the value, whichever protocol carried it.
"""

from __future__ import annotations

import json
import uuid
from datetime import date
from pathlib import Path

import psycopg
import pytest

from hd_core.adapters.local_audit import LocalFolderAuditArchive
from hd_core.audit_search import QueryAuditFilter, search_query_audit
from tests.e2e.protocols import PROTOCOLS, cursor
from tests.harness import EngineHostProcess


def audit_text(state_dir: Path) -> str:
    return "".join(path.read_text() for path in sorted((state_dir / "audit" / "queries").rglob("*.jsonl")))


def record_for(state_dir: Path, query_id: str) -> dict:
    records = [json.loads(line) for line in audit_text(state_dir).splitlines()]
    return next(r for r in records if r["query_id"] == query_id)


def reference(error: psycopg.Error) -> str:
    primary = error.diag.message_primary or ""
    return primary.split("(reference ", 1)[1].split(")", 1)[0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_failed_cast_is_audited_without_the_value(engine_host: EngineHostProcess, protocol: str) -> None:
    secret = f"zz-secret-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            cursor(conn, f"SELECT CAST('{secret}' AS INTEGER)", protocol)
        error = caught.value
        assert (error.sqlstate, error.diag.message_detail) == ("22P02", "HD_ERR_INVALID_VALUE")
        assert secret not in str(error)
    record = record_for(engine_host.state_dir, reference(error))
    assert record["error"]["sqlstate"] == "22P02" and record["error"]["code"] == "HD_ERR_INVALID_VALUE"
    detail = record["engine_error_detail"]
    assert detail.startswith("ConversionException: ") and "?" in detail and "LINE" not in detail
    assert secret not in audit_text(engine_host.state_dir)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_parameter_that_fails_to_cast_is_audited_without_the_value(engine_host: EngineHostProcess,
                                                                     protocol: str) -> None:
    secret = f"zz-secret-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn, pytest.raises(psycopg.Error) as caught:
        cursor(conn, "SELECT CAST(%s AS INTEGER)", protocol, (secret,))
    assert caught.value.sqlstate == "22P02"
    assert secret not in audit_text(engine_host.state_dir)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_unique_violation_is_audited_without_the_key(engine_host: EngineHostProcess, protocol: str) -> None:
    secret = f"zz-secret-{uuid.uuid4().hex[:8]}"
    table = f"audit_redaction_{protocol}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        cursor(conn, f"CREATE TABLE {table} (email VARCHAR PRIMARY KEY, n INTEGER)", protocol)
        try:
            cursor(conn, f"INSERT INTO {table} VALUES ('{secret}', 987654321)", protocol)
            with pytest.raises(psycopg.Error) as caught:
                cursor(conn, f"INSERT INTO {table} VALUES ('{secret}', 987654321)", protocol)
            error = caught.value
            assert error.sqlstate == "23505" and secret not in str(error)
            cursor(conn, "SELECT 1", protocol)  # the connection goes on
        finally:
            conn.execute(f"DROP TABLE {table}")
    record = record_for(engine_host.state_dir, reference(error))
    assert record["error"]["sqlstate"] == "23505" and record["error"]["code"] == "HD_ERR_CONSTRAINT"
    assert record["engine_error_detail"].startswith("ConstraintException: ")
    stored = audit_text(engine_host.state_dir)
    assert secret not in stored and "987654321" not in stored


def test_audit_search_returns_the_redacted_detail(engine_host: EngineHostProcess) -> None:
    secret = f"zz-secret-{uuid.uuid4().hex[:8]}"
    tag = f"redaction-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        conn.execute(f"SET hd.request_id = '{tag}'")
        with pytest.raises(psycopg.Error):
            conn.execute(f"SELECT CAST('{secret}' AS INTEGER)")
    stored = [json.loads(line) for line in audit_text(engine_host.state_dir).splitlines()]
    mine = next(r for r in stored if r.get("request_id") == tag)
    day = date.fromisoformat(mine["ts"][:10])
    query = QueryAuditFilter(org_id=mine["org_id"], start=day, end=day, user_id=mine["user_id"])
    archive = LocalFolderAuditArchive(engine_host.state_dir)
    found, cursor = [], None
    while True:
        page = search_query_audit(archive, query, limit=1000, cursor=cursor)
        found += page.records
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    [searched] = [r for r in found if r.get("request_id") == tag]
    detail = searched["engine_error_detail"]
    assert detail == mine["engine_error_detail"]
    assert isinstance(detail, str) and detail.startswith("ConversionException: ")
    assert secret not in json.dumps(found)
