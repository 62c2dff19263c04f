"""`hd keys|users|policies|audit` against a real `hd dev --demo`: the CLI as an operator or a script uses it.

Commands run in-process through `engine_host.cli.main` (stdout/stderr captured), plus a few as
real subprocesses where the environment and the absence of tracebacks are the point.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from engine_host.cli import main
from engine_host.cli.listing import ListingColumn, render_table
from tests.harness import EngineHostProcess, start_engine_host

ANALYST = "usr_demo_acme_analyst"
ORG = "org_acme"
PLAINTEXT_KEY = re.compile(r"hd_(?:live|test)_[0-9A-Za-z]{32}")


@dataclass(frozen=True)
class Run:
    status: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    process = start_engine_host(tmp_path_factory.mktemp("hd"), "--demo", "--insecure-plaintext")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def hd(host: EngineHostProcess, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run `hd <argv>` in-process against the test host, as its Owner unless `--api-key` is given."""

    def run(*argv: str) -> Run:
        connection = ["--api-url", host.api_url]
        if "--api-key" not in argv:
            connection += ["--api-key", host.password]
        capsys.readouterr()
        status = main(["--log-level", "ERROR", *argv, *connection])
        captured = capsys.readouterr()
        return Run(status, captured.out, captured.err)

    return run


def _unique_email() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}@example.com"


def _create_key(hd: Any, name: str) -> dict[str, Any]:
    created = hd("keys", "create", "--user", ANALYST, "--env", "test", "--scope", "read_only", "--name", name, "--json")
    assert created.status == 0, created.err
    return dict(created.json())


def _assert_one_clean_error_line(run: Run) -> str:
    assert run.status == 1
    assert run.out == ""
    assert "Traceback" not in run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hd: "), run.err
    return lines[0]


# --- hd keys --------------------------------------------------------------------------------------


def test_keys_create_prints_the_plaintext_once_with_a_warning_that_it_is_not_shown_again(hd: Any) -> None:
    created = hd("keys", "create", "--user", ANALYST, "--env", "test", "--scope", "read_only",
                 "--name", "cli-create", "--cidr", "127.0.0.1/32", "--expires-in-days", "30")

    assert created.status == 0, created.err
    plaintexts = PLAINTEXT_KEY.findall(created.out)
    assert len(plaintexts) == 1 and plaintexts[0].startswith("hd_test_")
    assert "only time the API key is shown" in created.err
    assert "127.0.0.1/32" in created.out and "query:read" in created.out
    # The key really works, and only as what it was issued for: the analyst reads their own keys with it.
    own_keys = hd("keys", "list", "--json", "--api-key", plaintexts[0])
    assert own_keys.status == 0, own_keys.err
    assert {key["user_id"] for key in own_keys.json()} == {ANALYST}


def test_keys_list_shows_a_table_and_its_json_form_parses(hd: Any) -> None:
    created = _create_key(hd, "cli-list")
    key_id = created["key"]["key_id"]

    table = hd("keys", "list", "--user", ANALYST)
    listed = hd("keys", "list", "--user", ANALYST, "--json")

    assert table.status == 0 and listed.status == 0
    header, *rows = table.out.splitlines()
    assert header.split()[:3] == ["KEY_ID", "USER_ID", "ENV"]
    row = next(line for line in rows if line.startswith(key_id))
    assert "cli-list" in row and "active" in row
    assert PLAINTEXT_KEY.search(table.out) is None  # a listing never shows a plaintext key
    assert key_id in {key["key_id"] for key in listed.json()}


def test_a_rotated_key_names_its_successor_and_a_revoked_key_is_refused(hd: Any) -> None:
    created = _create_key(hd, "cli-rotate")
    old_id, old_plaintext = created["key"]["key_id"], created["api_key"]

    rotated = hd("keys", "rotate", old_id, "--json")
    assert rotated.status == 0, rotated.err
    successor = rotated.json()
    assert successor["api_key"] != old_plaintext
    assert successor["previous"]["rotated_to"] == successor["key"]["key_id"]
    assert successor["previous"]["expires_at"] is not None  # the grace period ends
    assert "rotated" in next(line for line in hd("keys", "list").out.splitlines() if line.startswith(old_id))

    revoked = hd("keys", "revoke", old_id)
    assert revoked.status == 0 and f"revoked {old_id}" in revoked.out
    assert hd("keys", "get", old_id, "--json").json()["revoked_at"] is not None
    refused = hd("keys", "list", "--api-key", old_plaintext)
    line = _assert_one_clean_error_line(refused)
    assert re.fullmatch(r"hd: authentication failed \(HD_ERR_AUTH_FAILED, request \S+\)", line), line


def test_a_malformed_key_gives_one_clean_error_line_with_code_and_request_id(hd: Any) -> None:
    refused = hd("users", "list", "--api-key", "hd_live_" + "A" * 32)

    line = _assert_one_clean_error_line(refused)
    assert re.fullmatch(r"hd: authentication failed \(HD_ERR_[A-Z_]+, request \S+\)", line), line


# --- hd users -------------------------------------------------------------------------------------


def test_users_invite_list_suspend_and_role_change(hd: Any) -> None:
    email = _unique_email()
    invited = hd("users", "invite", "--email", email, "--role", "Analyst", "--name", "Cli Person",
                 "--department", "Finance", "--region", "eu-west")
    assert invited.status == 0, invited.err
    shown_id = re.search(r"^user id\s+(\S+)$", invited.out, re.MULTILINE)
    assert shown_id is not None, invited.out
    user_id = shown_id.group(1)

    listed = hd("users", "list", "--email-contains", email.split("@")[0])
    assert listed.status == 0
    header, row = listed.out.splitlines()
    assert header.split()[:3] == ["USER_ID", "EMAIL", "NAME"]
    assert row.startswith(user_id) and "Finance" in row and "active" in row

    suspended = hd("users", "suspend", user_id)
    assert suspended.status == 0 and "suspended" in suspended.out
    only_suspended = hd("users", "list", "--status", "suspended", "--json").json()
    assert user_id in {user["user_id"] for user in only_suspended}
    assert all(user["status"] == "suspended" for user in only_suspended)

    changed = hd("users", "role", user_id, "Developer", "--json")
    assert changed.status == 0 and changed.json()["role"] == "Developer"
    assert hd("users", "reactivate", user_id, "--json").json()["status"] == "active"


def test_inviting_an_email_twice_is_a_clean_conflict(hd: Any) -> None:
    email = _unique_email()
    assert hd("users", "invite", "--email", email, "--role", "Auditor").status == 0

    again = hd("users", "invite", "--email", email, "--role", "Auditor")

    assert "(HD_ERR_CONFLICT, request " in _assert_one_clean_error_line(again)


# --- hd policies ----------------------------------------------------------------------------------


def test_policies_add_list_and_remove_through_the_api(hd: Any, tmp_path: Path) -> None:
    mask = {"kind": "mask", "rule_id": "cli_mask_currency", "table": "sales.orders", "column": "currency",
            "function": "full"}
    policy_file = tmp_path / "policies.json"
    policy_file.write_text(json.dumps({"version": 1, "policies": [
        {"kind": "column_tag", "tag_id": "cli_tag_region", "org_id": ORG, "table": "sales.orders",
         "column": "region", "pii_type": "phone"},
        {"kind": "mask", "rule_id": "cli_mask_region", "table": "sales.orders", "column": "region",
         "function": "partial", "visible_chars": 2},
    ]}))

    one = hd("policies", "add", "--json", json.dumps(mask))
    several = hd("policies", "add", "--file", str(policy_file))

    assert one.status == 0 and one.out.startswith("added mask cli_mask_currency (policy version ")
    assert several.status == 0, several.err
    assert [line.split()[:3] for line in several.out.splitlines()] == [
        ["added", "column_tag", "cli_tag_region"], ["added", "mask", "cli_mask_region"]]
    masks = hd("policies", "list", "--kind", "mask")
    assert any(line.startswith("mask") and "cli_mask_currency" in line and "sales.orders.currency" in line
               for line in masks.out.splitlines())
    document = hd("policies", "get", "mask", "cli_mask_region", "--json").json()["document"]
    assert document["function"] == "partial" and document["org_id"] == ORG

    removed = hd("policies", "remove", "mask", "cli_mask_currency")

    assert removed.status == 0 and removed.out.startswith("removed mask cli_mask_currency")
    ids = {policy["id"] for policy in hd("policies", "list", "--json").json()}
    assert "cli_mask_currency" not in ids and {"cli_tag_region", "cli_mask_region"} <= ids
    gone = hd("policies", "remove", "mask", "cli_mask_currency")
    assert "(HD_ERR_NOT_FOUND, request " in _assert_one_clean_error_line(gone)


def test_a_refused_policy_reports_the_validators_message(hd: Any) -> None:
    bad = {"kind": "mask", "table": "sales.orders", "column": "currency", "function": "scramble"}

    refused = hd("policies", "--json", "add", "--json", json.dumps(bad))

    line = _assert_one_clean_error_line(refused)
    assert line.startswith("hd: policy 1 of 1 refused (0 added before it): ") and "request " in line


def test_a_policy_written_for_another_organization_is_not_sent(hd: Any) -> None:
    foreign = {"kind": "mask", "org_id": "org_globex", "table": "sales.orders", "column": "status", "function": "full"}

    refused = hd("policies", "add", "--json", json.dumps(foreign))

    assert "for organization org_globex, not org_acme" in _assert_one_clean_error_line(refused)
    assert all(policy["document"].get("column") != "status" or policy["kind"] != "mask"
               for policy in hd("policies", "list", "--json").json())


# --- hd audit -------------------------------------------------------------------------------------


def test_audit_verify_chain_is_valid_after_administrative_changes(hd: Any) -> None:
    assert hd("users", "invite", "--email", _unique_email(), "--role", "Analyst").status == 0
    _create_key(hd, "cli-audit")

    report = hd("audit", "verify-chain")  # no --env: the organization's first environment
    as_json = hd("audit", "verify-chain", "--json")
    events = hd("audit", "iam", "--all", "--limit", "2", "--json")

    assert report.status == 0, report.err
    assert re.search(r"^chain valid\s+yes$", report.out, re.MULTILINE)
    verification = as_json.json()
    assert verification["chain_valid"] is True and verification["first_break"] is None
    assert events.status == 0 and len(events.json()) == verification["entry_count"]
    assert {"user.invited", "api_key.created"} <= {event["event_type"] for event in events.json()}
    assert [event["seq"] for event in events.json()] == list(range(1, verification["entry_count"] + 1))


def test_a_tampered_chain_fails_verification_with_status_3_and_names_the_first_break(
    hd: Any, host: EngineHostProcess
) -> None:
    assert hd("users", "invite", "--email", _unique_email(), "--role", "Analyst").status == 0
    store = sqlite3.connect(host.state_dir / "control.sqlite3")
    (target,) = store.execute("SELECT target FROM iam_events WHERE chain_id = ? AND seq = 1", (ORG,)).fetchone()
    try:
        with store:
            store.execute("UPDATE iam_events SET target = 'tampered' WHERE chain_id = ? AND seq = 1", (ORG,))
        broken = hd("audit", "verify-chain")
    finally:
        with store:
            store.execute("UPDATE iam_events SET target = ? WHERE chain_id = ? AND seq = 1", (target, ORG))
        store.close()

    assert broken.status == 3
    assert re.search(r"^chain valid\s+no$", broken.out, re.MULTILINE)
    assert "broken at position 1 (edited)" in broken.out and "broken at position 1" in broken.err
    assert hd("audit", "verify-chain").status == 0


def test_audit_queries_follows_next_cursor_with_all_and_reports_progress(
    hd: Any, host: EngineHostProcess
) -> None:
    analyst_key = (host.state_dir / "demo-keys" / "acme-analyst.key").read_text().strip()
    with psycopg.connect(host.dsn(user=ANALYST, password=analyst_key, sslmode="disable"), autocommit=True) as conn:
        for threshold in range(3):
            conn.execute("SELECT count(*) FROM sales.orders WHERE amount > %s", (threshold,)).fetchall()
    today = datetime.now(UTC).date()
    window = ["--start", (today - timedelta(days=1)).isoformat(), "--end", today.isoformat(), "--user", ANALYST,
              "--table", "sales.orders", "--limit", "1"]

    first_page = hd("audit", "queries", *window)
    everything = hd("audit", "queries", *window, "--all", "--json")

    assert first_page.status == 0, first_page.err
    header, *rows = first_page.out.splitlines()
    assert header.split()[:2] == ["TIME", "USER_ID"] and len(rows) == 1
    assert "--cursor " in first_page.err
    records = everything.json()["records"]
    assert everything.status == 0 and len(records) >= 3
    assert everything.json()["next_cursor"] is None
    assert all(record["user_id"] == ANALYST for record in records)
    assert len(records) == len({record["query_id"] for record in records})
    assert "records so far" in everything.err


# --- connection problems --------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_api_asks_whether_hd_dev_is_running(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"

    status = main(["keys", "list", "--api-url", url, "--api-key", "hd_test_" + "A" * 32])

    captured = capsys.readouterr()
    assert status == 1 and captured.out == ""
    assert captured.err.startswith(f"hd: cannot reach the control API at {url}: is `hd dev` running?")


def test_without_any_api_key_the_error_says_where_it_looked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HD_API_KEY", raising=False)

    status = main(["users", "list", "--state-dir", str(tmp_path)])

    err = capsys.readouterr().err
    assert status == 1 and err.startswith("hd: no API key: pass --api-key, set HD_API_KEY")
    assert str(tmp_path / "owner.key") in err and "HD_ERR_NO_API_KEY" in err


def test_as_a_subprocess_it_reads_url_and_owner_key_from_the_environment(host: EngineHostProcess) -> None:
    env = {**os.environ, "HD_API_URL": host.api_url, "HD_STATE_DIR": str(host.state_dir)}
    env.pop("HD_API_KEY", None)

    listed = subprocess.run([sys.executable, "-m", "engine_host.cli", "users", "list", "--json"],
                            capture_output=True, text=True, env=env, timeout=60, check=False)
    unreachable = subprocess.run(
        [sys.executable, "-m", "engine_host.cli", "audit", "verify-chain", "--api-url",
         f"http://127.0.0.1:{_closed_port()}"],
        capture_output=True, text=True, env=env, timeout=60, check=False)

    assert listed.returncode == 0, listed.stderr
    assert ANALYST in {user["user_id"] for user in json.loads(listed.stdout)}
    assert unreachable.returncode == 1 and "Traceback" not in unreachable.stderr
    assert "is `hd dev` running?" in unreachable.stderr


# --- tables ---------------------------------------------------------------------------------------


def test_tables_have_a_header_fixed_width_columns_and_cut_long_values_with_an_ellipsis() -> None:
    columns = (ListingColumn("ID", "id", 6), ListingColumn("NAME", "name", 10), ListingColumn("SCOPES", "scopes", 40))
    rows: list[dict[str, Any]] = [
        {"id": "k1", "name": "a rather long key name", "scopes": ["query:read", "tables:list"]},
        {"id": "key_123456789", "name": None, "scopes": []},
    ]

    header, first, second = render_table(columns, rows).splitlines()

    assert header == "ID      NAME        SCOPES"
    assert first == "k1      a rather …  query:read, tables:list"
    assert second == "key_1…  -           -"


def test_table_cells_cannot_carry_terminal_control_characters() -> None:
    table = render_table([ListingColumn("NAME", "name")], [{"name": "evil\x1b]0;owned\x07\nname"}])

    assert "\x1b" not in table and "\x07" not in table and len(table.splitlines()) == 2
