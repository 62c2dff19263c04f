"""Bounded statements over a real connection: too long or too deeply nested is an audited 54001 refusal.

Over the simple and the extended protocol alike, the refusal carries HD_ERR_STATEMENT_TOO_COMPLEX,
leaves exactly one audit record and at most one log line (never a traceback), and the connection
goes on: before these limits, 3,000 nested parentheses ended it with "internal error".
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.e2e.protocols import PROTOCOLS, refused, run
from tests.harness import EngineHostProcess

NESTING_LIMIT = 128  # engine_host.pipeline.governance.guard.MAX_NESTING_DEPTH
SIZE_LIMIT = 1024 * 1024  # engine_host.pipeline.governance.guard.MAX_STATEMENT_CHARS
DEEP = "SELECT " + "(" * 3000 + "1" + ")" * 3000


def audit_records(state_dir: Path) -> Iterator[dict]:
    for path in sorted((state_dir / "audit" / "queries").rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            yield json.loads(line)


def tagged(engine_host: EngineHostProcess) -> tuple[psycopg.Connection, str]:
    """An Owner connection whose audit records carry a request id of their own."""
    tag = f"limits-{uuid.uuid4().hex[:12]}"
    conn = psycopg.connect(engine_host.dsn(), autocommit=True)
    conn.execute(f"SET hd.request_id = '{tag}'")
    return conn, tag


def records_of(engine_host: EngineHostProcess, tag: str) -> list[dict]:
    return [r for r in audit_records(engine_host.state_dir) if r.get("request_id") == tag]


def new_log_lines(engine_host: EngineHostProcess, since: int) -> list[str]:
    time.sleep(0.3)  # the host's output is pumped by a thread
    return engine_host.output[since:]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_deep_nesting_is_refused_audited_once_and_the_connection_goes_on(engine_host: EngineHostProcess,
                                                                        protocol: str) -> None:
    conn, tag = tagged(engine_host)
    with conn:
        before = len(engine_host.output)
        error = refused(conn, DEEP, protocol)
        assert (error.sqlstate, error.diag.message_detail) == ("54001", "HD_ERR_STATEMENT_TOO_COMPLEX")
        assert f"limit of {NESTING_LIMIT} levels" in (error.diag.message_primary or "")
        assert "split" in (error.diag.message_hint or "")
        assert run(conn, "SELECT 1", protocol) == [(1,)]
        assert run(conn, "SELECT 1", "simple" if protocol == "extended" else "extended") == [(1,)]
    lines = new_log_lines(engine_host, before)
    assert not any("Traceback" in line or "RecursionError" in line for line in lines), lines
    assert len([line for line in lines if "refused" in line]) <= 1, lines
    records = records_of(engine_host, tag)
    refusals = [r for r in records if r["error"] is not None]
    assert len(refusals) == 1
    assert refusals[0]["error"]["sqlstate"] == "54001"
    assert refusals[0]["error"]["code"] == "HD_ERR_STATEMENT_TOO_COMPLEX"
    assert any(v["decision"] == "deny" for v in refusals[0]["verdicts"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_two_mib_statement_is_refused_and_audited_briefly(engine_host: EngineHostProcess, protocol: str) -> None:
    big = "SELECT '" + "zz-secret-" * (2 * 1024 * 1024 // 10) + "' AS s"
    conn, tag = tagged(engine_host)
    with conn:
        error = refused(conn, big, protocol)
        assert (error.sqlstate, error.diag.message_detail) == ("54001", "HD_ERR_STATEMENT_TOO_COMPLEX")
        assert f"limit of {SIZE_LIMIT} characters" in (error.diag.message_primary or "")
        assert run(conn, "SELECT 2", protocol) == [(2,)]
    [record] = [r for r in records_of(engine_host, tag) if r["error"] is not None]
    assert record["error"]["code"] == "HD_ERR_STATEMENT_TOO_COMPLEX"
    assert "zz-secret" not in record["sql_redacted"] and len(record["sql_redacted"]) < 10_000


def test_many_statements_over_the_limit_are_refused_before_any_parser_runs(engine_host: EngineHostProcess) -> None:
    # DuckDB's own statement splitter took ~16 s on 2 MiB of `SELECT 1;`: the size limit comes first.
    conn, tag = tagged(engine_host)
    with conn:
        started = time.monotonic()
        error = refused(conn, "SELECT 1;" * (2 * 1024 * 1024 // 9), "simple")
        assert (error.sqlstate, error.diag.message_detail) == ("54001", "HD_ERR_STATEMENT_TOO_COMPLEX")
        assert time.monotonic() - started < 10
    assert len([r for r in records_of(engine_host, tag) if r["error"] is not None]) == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nesting_inside_strings_and_comments_does_not_count(engine_host: EngineHostProcess, protocol: str) -> None:
    deep = "(" * 3000
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        assert run(conn, f"SELECT '{deep}' AS s /* {deep} */", protocol) == [(deep,)]
        assert run(conn, f"SELECT 1 AS \"{deep[:60]}\" -- {deep}\n", protocol) == [(1,)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nesting_up_to_the_limit_runs(engine_host: EngineHostProcess, protocol: str) -> None:
    at_limit = "SELECT " + "(" * NESTING_LIMIT + "7" + ")" * NESTING_LIMIT
    over = "SELECT " + "(" * (NESTING_LIMIT + 1) + "7" + ")" * (NESTING_LIMIT + 1)
    with psycopg.connect(engine_host.demo_dsn("acme-analyst"), autocommit=True) as conn:
        assert run(conn, at_limit, protocol) == [(7,)]
        assert refused(conn, over, protocol).sqlstate == "54001"
        masked = ("SELECT " + "lower(" * (NESTING_LIMIT - 1) + "ssn" + ")" * (NESTING_LIMIT - 1)
                  + " FROM crm.customers LIMIT 3")
        assert {r[0] for r in run(conn, masked, protocol)} == {"***"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nesting_the_scanner_does_not_count_is_still_54001(engine_host: EngineHostProcess, protocol: str) -> None:
    """A chain of casts parses, then recursing over it fails later in planning: the same refusal."""
    conn, tag = tagged(engine_host)
    with conn:
        for sql in ("SELECT 1" + "::int" * 3000, "SELECT " + "NOT " * 3000 + "true"):
            error = refused(conn, sql, protocol)
            assert (error.sqlstate, error.diag.message_detail) == ("54001", "HD_ERR_STATEMENT_TOO_COMPLEX")
            assert run(conn, "SELECT 3", protocol) == [(3,)]
    assert len([r for r in records_of(engine_host, tag) if r["error"] is not None]) == 2


def test_deep_nesting_in_a_catalog_query_is_refused_the_same_way(engine_host: EngineHostProcess) -> None:
    """Catalog probes are parsed by the catalog layer before the guard: its recursion is caught too."""
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        sql = "SELECT pg_backend_pid() + " + "(" * 3000 + "1" + ")" * 3000
        for protocol in PROTOCOLS:
            error = refused(conn, sql, protocol)
            assert (error.sqlstate, error.diag.message_detail) == ("54001", "HD_ERR_STATEMENT_TOO_COMPLEX")
            assert run(conn, "SELECT 1", protocol) == [(1,)]
