"""`hd audit queries [<q_ref>]` and `hd audit export` against a real `hd dev --demo`: the engine records each
statement's environment, an error's reference finds its record, and an export lands in a file and the IAM trail."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from tests.e2e.test_api_cli import ANALYST, ORG, hd, host
from tests.harness import EngineHostProcess

__all__ = ["hd", "host"]  # test_api_cli's host and in-process `hd`, imported so pytest finds them here

REFERENCE = re.compile(r"reference (q_[0-9a-f]{20})")


def _failing_statement(host: EngineHostProcess) -> str:
    """Run a statement that fails on a value as the demo analyst (an hd_test_ key); returns the reference quoted."""
    analyst_key = (host.state_dir / "demo-keys" / "acme-analyst.key").read_text().strip()
    with psycopg.connect(host.dsn(user=ANALYST, password=analyst_key, sslmode="disable"), autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM sales.orders").fetchall()
        with pytest.raises(psycopg.Error) as failed:
            conn.execute("SELECT CAST('not a number' AS INTEGER)").fetchall()
    found = REFERENCE.search(str(failed.value))
    assert found is not None, str(failed.value)
    return found.group(1)


def test_an_error_reference_finds_its_record_in_the_callers_environment(hd: Any, host: EngineHostProcess) -> None:
    reference = _failing_statement(host)

    shown = hd("audit", "queries", reference)
    as_json = hd("audit", "queries", reference, "--json")

    assert shown.status == 0, shown.err
    assert re.search(rf"^query id\s+{reference}$", shown.out, re.MULTILINE)
    assert re.search(r"^environment\s+test$", shown.out, re.MULTILINE)
    assert re.search(r"^outcome\s+error$", shown.out, re.MULTILINE)
    (record,) = as_json.json()["records"]
    assert (record["query_id"], record["user_id"], record["key_env"]) == (reference, ANALYST, "test")
    assert record["error"]["sqlstate"] == "22P02"
    missing = hd("audit", "queries", "q_00000000000000000000")
    assert missing.status == 1 and "HD_ERR_NOT_FOUND" in missing.err and "Traceback" not in missing.err


def test_search_defaults_to_the_last_day_and_filters_by_outcome(hd: Any, host: EngineHostProcess) -> None:
    reference = _failing_statement(host)

    failures = hd("audit", "queries", "--user", ANALYST, "--outcome", "error", "--all", "--json")
    successes = hd("audit", "queries", "--user", ANALYST, "--outcome", "ok", "--table", "sales.orders", "--json")
    table = hd("audit", "queries", "--user", ANALYST, "--sqlstate", "22P02")

    assert failures.status == 0, failures.err
    assert reference in {record["query_id"] for record in failures.json()["records"]}
    assert all(record["error"] is not None for record in failures.json()["records"])
    assert successes.json()["records"] and all(r["error"] is None for r in successes.json()["records"])
    header, *rows = table.out.splitlines()
    assert header.split()[:2] == ["TIME", "USER_ID"] and any(ANALYST in row for row in rows)
    # The production environment (hd_live_ keys) saw none of the analyst's hd_test_ statements.
    environments = requests.get(f"{host.api_url}/v1/organizations/{ORG}/environments",
                                headers={"X-API-Key": host.password}, timeout=10).json()
    production = next(env["env_id"] for env in environments if env["key_env"] == "live")
    assert hd("audit", "queries", "--env", production, "--user", ANALYST, "--json").json()["records"] == []


def test_an_export_is_downloaded_and_recorded_in_the_iam_trail(
    hd: Any, host: EngineHostProcess, tmp_path: Path
) -> None:
    reference = _failing_statement(host)
    target = tmp_path / "audit.csv"

    exported = hd("audit", "export", "--format", "csv", "--user", ANALYST, "--output", str(target))
    trail = hd("audit", "iam", "--all", "--limit", "1000", "--json")

    assert exported.status == 0, exported.err
    assert re.search(r"^records\s+\d+$", exported.out, re.MULTILINE) and f"saved to    {target}" in exported.out
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert reference in {row["query_id"] for row in rows}
    assert {row["user_id"] for row in rows} == {ANALYST} and {row["key_env"] for row in rows} == {"test"}
    events = [event for event in trail.json() if event["event_type"] == "audit.exported"]
    assert events and events[-1]["after"]["format"] == "csv"
    assert events[-1]["after"]["filters"] == {"key_env": "test", "user_id": ANALYST}
    assert events[-1]["after"]["record_count"] == len(rows)
