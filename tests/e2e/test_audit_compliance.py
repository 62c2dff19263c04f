"""PHI accounting of disclosures and the query audit chain, through a running `hd dev`: psycopg, the API and `hd`."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from engine_host.cli import main
from tests.harness import EngineHostProcess, query_audit_records, start_engine_host

ORG = "org_acme"
ANALYST = "usr_demo_acme_analyst"
POLICY_WAIT_SECONDS = 15.0


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    state_dir = tmp_path_factory.mktemp("hd")
    # Loaded at start, after the demo's own policies (same ids replace them): mrn becomes the encounters'
    # patient key and reads unmasked for the Owner; patient_name is masked for everyone.
    (state_dir / "policies.json").write_text(json.dumps({"version": 1, "policies": [
        {"kind": "column_tag", "tag_id": "tag_test_mrn_patient", "org_id": ORG, "table": "clinical.encounters",
         "column": "mrn", "pii_type": "mrn", "patient_key": True},
        {"kind": "mask", "rule_id": f"msk_{ORG}_enc_mrn", "org_id": ORG, "table": "clinical.encounters",
         "column": "mrn", "function": "partial", "visible_chars": 4, "exempt_roles": ["Owner"]},
        {"kind": "mask", "rule_id": "msk_test_patient_name", "org_id": ORG, "table": "clinical.encounters",
         "column": "patient_name", "function": "full"},
    ]}))
    process = start_engine_host(state_dir, "--demo", "--insecure-plaintext")
    try:
        # The Owner's id is made at the first start: its PHI grant goes through the API.
        api(process, "POST", f"/v1/organizations/{ORG}/policies",
            {"kind": "phi_grant", "grant_id": "phi_test_owner", "user_id": process.user, "reason": "accounting test"})
        yield process
    finally:
        process.stop()


def api(host: EngineHostProcess, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(host.api_url + path, data=data, method=method)
    request.add_header("X-API-Key", host.password)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as refused:
        refused.add_note(refused.read().decode())  # the error body, for the assertion and its report
        raise


def _env(host: EngineHostProcess) -> str:
    return str(api(host, "GET", f"/v1/organizations/{ORG}/environments")[0]["env_id"])


def _owner(host: EngineHostProcess) -> psycopg.Connection:
    return psycopg.connect(host.dsn(sslmode="disable"), autocommit=True)


def _run_when_allowed(host: EngineHostProcess, sql: str) -> list[tuple[Any, ...]]:
    """Run `sql` as the Owner once the host has picked up the PHI grant and masks (polled about once a second)."""
    deadline = time.monotonic() + POLICY_WAIT_SECONDS
    while True:
        with _owner(host) as conn:
            try:
                mrn_masked = conn.execute("SELECT mrn FROM clinical.encounters LIMIT 1").fetchone()[0].startswith("*")
                name_masked = conn.execute("SELECT patient_name FROM clinical.encounters LIMIT 1").fetchone()[0]
                if not mrn_masked and name_masked.startswith("*"):
                    return conn.execute(sql).fetchall()
            except psycopg.errors.InsufficientPrivilege:
                pass
        if time.monotonic() > deadline:
            raise AssertionError("the PHI policies were not picked up in time")
        time.sleep(0.3)


def _record_of(host: EngineHostProcess, marker: str) -> dict[str, Any]:
    """The completed audit record of the one statement whose redacted text holds `marker` (an identifier)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [r for r in query_audit_records(host.state_dir) if marker in str(r.get("sql_redacted"))]
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no audit record for {marker}")


def _disclosures(host: EngineHostProcess, patient_key: str) -> list[dict[str, Any]]:
    today = datetime.now(UTC).date()  # the statements ran moments ago, perhaps before midnight UTC
    query = urllib.parse.urlencode({"patient_key": patient_key, "start": (today - timedelta(days=1)).isoformat(),
                                    "end": today.isoformat()})
    return list(api(host, "GET", f"/v1/environments/{_env(host)}/audit/phi-disclosures?{query}")["disclosures"])


def test_unmasked_phi_is_accounted_with_its_columns_rows_grant_and_patient_hmacs(host: EngineHostProcess) -> None:
    rows = _run_when_allowed(host, "SELECT mrn, diagnosis AS acct_unmasked FROM clinical.encounters "
                                   "ORDER BY encounter_id LIMIT 5")
    record = _record_of(host, "acct_unmasked")

    assert record["rows_returned"] == 5
    assert record["phi_columns_returned"] == ["clinical.encounters.diagnosis"]
    disclosure = record["phi_disclosure"]
    assert disclosure["phi_grant_ids"] == ["phi_test_owner"] and disclosure["patient_keys"] == "recorded"
    assert disclosure["patient_count"] == len({mrn for mrn, _ in rows})
    # Only keyed HMACs are stored: no patient key appears anywhere in the audit folder.
    stored = b"".join(path.read_bytes() for path in (host.state_dir / "audit").rglob("*") if path.is_file())
    assert all(mrn.encode() not in stored for mrn, _ in rows)


def test_masked_phi_is_not_accounted(host: EngineHostProcess) -> None:
    _run_when_allowed(host, "SELECT mrn, patient_name AS acct_masked FROM clinical.encounters LIMIT 3")
    record = _record_of(host, "acct_masked")
    assert record["rows_returned"] == 3
    assert record["phi_columns_returned"] == [] and record["phi_disclosure"] is None


def test_the_disclosure_lookup_names_who_when_and_under_which_grant(host: EngineHostProcess) -> None:
    rows = _run_when_allowed(host, "SELECT mrn AS acct_lookup, diagnosis FROM clinical.encounters "
                                   "ORDER BY encounter_id LIMIT 2")
    record = _record_of(host, "acct_lookup")
    disclosed = rows[0][0]
    with _owner(host) as conn:
        (other,) = conn.execute("SELECT mrn FROM clinical.encounters WHERE mrn NOT IN (%s, %s) LIMIT 1",
                                (rows[0][0], rows[1][0])).fetchone()

    found = [d for d in _disclosures(host, disclosed) if d["query_id"] == record["query_id"]]
    elsewhere = [d for d in _disclosures(host, other) if d["query_id"] == record["query_id"]]

    assert len(found) == 1 and elsewhere == []
    (entry,) = found
    assert entry["match"] == "recorded" and entry["user_id"] == host.user and entry["role"] == "Owner"
    assert entry["phi_grant_ids"] == ["phi_test_owner"] and entry["ts"] == record["ts"]
    assert entry["phi_columns"] == ["clinical.encounters.diagnosis"] and entry["rows_returned"] == 2


def test_phi_returned_without_the_patient_key_is_a_possible_disclosure_of_anyone(host: EngineHostProcess) -> None:
    _run_when_allowed(host, "SELECT diagnosis AS acct_untraced, count(*) FROM clinical.encounters GROUP BY 1")
    record = _record_of(host, "acct_untraced")
    assert record["phi_disclosure"]["patient_keys"] == "not_traceable"
    assert record["phi_disclosure"]["patient_key_hmacs"] == []
    matches = [d for d in _disclosures(host, "any-patient") if d["query_id"] == record["query_id"]]
    assert [d["match"] for d in matches] == ["possible"]


def test_a_blank_patient_key_is_refused_with_a_code(host: EngineHostProcess) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        _disclosures(host, "")
    assert refused.value.code == 422
    assert "HD_ERR_" in refused.value.__notes__[0]


# --- the query audit chain ---------------------------------------------------------------------------


def _hd(host: EngineHostProcess, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["--log-level", "ERROR", *argv, "--api-url", host.api_url, "--api-key", host.password])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _day_file(host: EngineHostProcess) -> Path:
    (path,) = sorted((host.state_dir / "audit" / "queries").rglob("*.jsonl"))[-1:]
    return path


def test_the_query_chain_verifies_and_a_deleted_record_is_found_by_api_and_cli(
    host: EngineHostProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(host.demo_dsn("acme-analyst", sslmode="disable"), autocommit=True) as conn:
        for n in range(5):
            conn.execute(f"SELECT {n} AS chain_probe").fetchall()
    report = api(host, "GET", f"/v1/environments/{_env(host)}/audit/admin/verify-chain?trail=queries")
    status, out, _ = _hd(host, capsys, "audit", "verify-chain", "--trail", "queries")
    assert report["trail"] == "queries" and report["chain_valid"] is True, report
    assert status == 0 and "yes" in out

    path = _day_file(host)
    original = path.read_bytes()
    lines = original.split(b"\n")[:-1]
    try:
        # Remove the third record (no statement runs meanwhile, so nothing is appended).
        path.write_bytes(b"".join(line + b"\n" for line in lines[:2] + lines[3:]))
        broken = api(host, "GET", f"/v1/environments/{_env(host)}/audit/admin/verify-chain?trail=queries")
        status, _, err = _hd(host, capsys, "audit", "verify-chain", "--trail", "queries")
    finally:
        path.write_bytes(original)  # nothing ran meanwhile: the host's chain head still matches
    chain = next(c for c in broken["chains"] if not c["chain_valid"])
    assert broken["chain_valid"] is False
    assert (chain["first_break"]["position"], chain["first_break"]["kind"]) == (3, "deleted")
    assert status == 3 and "broken at position 3 (deleted)" in err


def test_the_iam_trail_stays_the_default(host: EngineHostProcess) -> None:
    report = api(host, "GET", f"/v1/environments/{_env(host)}/audit/admin/verify-chain")
    dated = api(host, "GET", f"/v1/environments/{_env(host)}/audit/admin/verify-chain?start=2026-01-01")
    assert "entry_count" in report and "chains" not in report
    assert dated.keys() == report.keys()  # days mean nothing to the IAM trail


def test_hd_dev_query_checkpoints_say_they_are_query_checkpoints(
    host: EngineHostProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(host.demo_dsn("acme-analyst", sslmode="disable"), autocommit=True) as conn:
        conn.execute("SELECT 1 AS checkpoint_probe").fetchall()
    folder = host.state_dir / "audit" / "query-checkpoints"
    deadline = time.monotonic() + POLICY_WAIT_SECONDS
    while not list(folder.rglob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.1)  # a new chain's first head is signed in the background at once
    documents = [json.loads(path.read_bytes()) for path in folder.rglob("*.json")]
    assert documents and {d["message_type"] for d in documents} == {"hd.query_checkpoint.v1"}
    status, out, _ = _hd(host, capsys, "audit", "verify-chain", "--trail", "queries")
    assert status == 0 and "UNCHAINED" in out.splitlines()[0]
