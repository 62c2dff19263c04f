"""Policies that say what they will do (issue 22), against a real `hd dev --demo`, through the API and the CLI.

Policies are checked against the live catalog the engine records; a dry run shows per role the rows
visible and columns masked before and after, counted by the engine and compared here with what a
real Postgres client counts; `hd policies explain` shows the governed plan of a statement for a
user; every create and replace says who is exempt.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from engine_host.cli import main
from tests.harness import EngineHostProcess, start_engine_host

ORG = "org_acme"
ANALYST = "usr_demo_acme_analyst"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    process = start_engine_host(tmp_path_factory.mktemp("hd-preview"), "--demo", "--insecure-plaintext")
    try:
        yield process
    finally:
        process.stop()


def _api(host: EngineHostProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{host.api_url}/v1/organizations/{ORG}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"X-API-Key": host.password, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _hd(host: EngineHostProcess, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["--log-level", "ERROR", *argv, "--api-url", host.api_url, "--api-key", host.password])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _count(host: EngineHostProcess, sql: str) -> int:
    with psycopg.connect(host.dsn()) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def _policy_ids(host: EngineHostProcess) -> set[str]:
    status, listed = _api(host, "GET", "/policies")
    assert status == 200
    return {policy["id"] for policy in listed}


# --- validation against the live catalog -------------------------------------------------------------------


def test_a_mask_on_a_table_or_column_the_catalog_lacks_is_a_422_naming_it(host: EngineHostProcess) -> None:
    no_table = _api(host, "POST", "/policies", {"kind": "mask", "table": "sales.ordres", "column": "amount",
                                                "function": "full"})
    no_column = _api(host, "POST", "/policies", {"kind": "mask", "table": "sales.orders", "column": "amuont",
                                                 "function": "full"})
    bad_filter = _api(host, "POST", "/policies", {"kind": "row_filter", "table": "sales.orders",
                                                  "filter": "regoin = {region}"})

    assert no_table[0] == 422 and no_table[1]["error"]["code"] == "HD_ERR_UNKNOWN_TABLE"
    assert "sales.ordres" in no_table[1]["error"]["message"] and '"pending": true' in no_table[1]["error"]["message"]
    assert no_column[0] == 422 and no_column[1]["error"]["code"] == "HD_ERR_UNKNOWN_COLUMN"
    assert "amuont" in no_column[1]["error"]["message"] and "amount" in no_column[1]["error"]["message"]
    assert bad_filter[0] == 422 and bad_filter[1]["error"]["code"] == "HD_ERR_UNKNOWN_COLUMN"
    assert "regoin" in bad_filter[1]["error"]["message"]


def test_a_policy_ahead_of_its_table_needs_pending_and_a_table_created_over_the_wire_is_known_at_once(
        host: EngineHostProcess) -> None:
    table = f"main.later_{uuid.uuid4().hex[:8]}"
    ahead = _api(host, "POST", "/policies", {"kind": "mask", "table": table, "column": "secret", "function": "full",
                                             "pending": True})
    assert ahead[0] == 201 and ahead[1]["document"]["pending"] is True
    with psycopg.connect(host.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id INTEGER, secret VARCHAR)")
    known = _api(host, "POST", "/policies", {"kind": "mask", "table": table, "column": "secret", "function": "null"})
    wrong = _api(host, "POST", "/policies", {"kind": "mask", "table": table, "column": "secrte", "function": "full",
                                             "pending": True})

    assert known[0] == 201, known
    assert wrong[0] == 422 and wrong[1]["error"]["code"] == "HD_ERR_UNKNOWN_COLUMN"  # pending excuses the table only


def test_the_cli_reports_an_unknown_column_in_one_line_with_its_code(
        host: EngineHostProcess, capsys: pytest.CaptureFixture[str]) -> None:
    document = {"kind": "mask", "table": "crm.customers", "column": "ssn_number", "function": "full"}

    status, out, err = _hd(host, capsys, "policies", "add", "--json", json.dumps(document))

    assert status != 0 and out == ""
    assert "HD_ERR_UNKNOWN_COLUMN" in err and "ssn_number" in err and "Traceback" not in err


# --- who is exempt -------------------------------------------------------------------------------------------


def test_every_create_says_who_is_exempt_and_warns_when_the_callers_own_role_is_affected(
        host: EngineHostProcess) -> None:
    masked = _api(host, "POST", "/policies", {"kind": "mask", "table": "sales.orders", "column": "currency",
                                              "function": "full"})
    spared = _api(host, "POST", "/policies", {"kind": "row_filter", "table": "sales.orders",
                                              "filter": "status <> 'cancelled'", "exempt_roles": ["Owner", "Admin"]})

    assert masked[0] == 201 and spared[0] == 201
    assert masked[1]["exemption"]["exempt_roles"] == []
    assert "no role is exempt" in masked[1]["exemption"]["note"]
    assert masked[1]["exemption"]["warnings"] == ["your own role (Owner) is not exempt: "
                                                  "sales.orders.currency is masked for you too"]
    assert spared[1]["exemption"]["exempt_roles"] == ["Owner", "Admin"] and spared[1]["exemption"]["warnings"] == []
    assert "Analyst" in spared[1]["exemption"]["note"]
    for created in (masked, spared):
        _api(host, "DELETE", f"/policies/{created[1]['kind']}/{created[1]['id']}")


# --- dry run -------------------------------------------------------------------------------------------------


def test_a_dry_run_counts_each_roles_rows_before_and_after_like_a_client_does_and_stores_nothing(
        host: EngineHostProcess) -> None:
    before_ids = _policy_ids(host)
    document = {"kind": "row_filter", "rule_id": "dry_eu_only", "table": "sales.orders",
                "filter": "region = 'eu-west'", "exempt_roles": ["Admin"]}

    status, answer = _api(host, "POST", "/policies?dry_run=true", document)

    assert status == 200 and answer["stored"] is False, answer
    assert _policy_ids(host) == before_ids
    preview = answer["dry_run"]
    assert preview["row_counts"] == "counted" and preview["table"] == "sales.orders"
    effects = {effect["role"]: effect for effect in preview["effects"]}
    every = _count(host, "SELECT count(*) FROM sales.orders")
    eu = _count(host, "SELECT count(*) FROM sales.orders WHERE region = 'eu-west'")
    assert 0 < eu < every
    assert (effects["Owner"]["rows_before"], effects["Owner"]["rows_after"]) == (every, eu)
    assert (effects["Admin"]["rows_before"], effects["Admin"]["rows_after"]) == (every, every)
    assert (effects["Analyst"]["rows_before"], effects["Analyst"]["rows_after"]) == (every, eu)
    assert answer["exemption"]["warnings"]  # the Owner itself is filtered


def test_a_dry_run_of_a_mask_lists_the_columns_masked_per_role(host: EngineHostProcess) -> None:
    document = {"kind": "mask", "table": "crm.customers", "column": "full_name", "function": "partial",
                "exempt_roles": ["Owner", "Admin"]}

    status, answer = _api(host, "POST", "/policies?dry_run=true", document)

    assert status == 200, answer
    effects = {effect["role"]: effect for effect in answer["dry_run"]["effects"]}
    assert "full_name" not in effects["Owner"]["masked_after"]
    assert "full_name" in effects["Analyst"]["masked_after"] and "full_name" not in effects["Analyst"]["masked_before"]
    assert "ssn" in effects["Analyst"]["masked_before"]  # the demo's own masks show on both sides
    assert effects["Analyst"]["rows_before"] == effects["Analyst"]["rows_after"]


def test_hd_policies_add_dry_run_prints_a_row_per_role_and_stores_nothing(
        host: EngineHostProcess, capsys: pytest.CaptureFixture[str]) -> None:
    before_ids = _policy_ids(host)
    document = {"kind": "row_filter", "table": "sales.orders", "filter": "status = 'shipped'"}

    status, out, err = _hd(host, capsys, "policies", "add", "--dry-run", "--json", json.dumps(document))

    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("dry run of row_filter ") and "(nothing stored) on sales.orders" in lines[0]
    assert lines[1].split() == ["ROLE", "ROWS", "BEFORE", "ROWS", "AFTER", "MASKED", "BEFORE", "MASKED", "AFTER"]
    shipped = _count(host, "SELECT count(*) FROM sales.orders WHERE status = 'shipped'")
    owner = next(line for line in lines if line.startswith("Owner"))
    assert owner.split()[1:3] == [str(_count(host, "SELECT count(*) FROM sales.orders")), str(shipped)]
    assert any("no role is exempt" in line for line in lines)
    assert _policy_ids(host) == before_ids


# --- explain -------------------------------------------------------------------------------------------------


def test_explain_shows_the_analysts_tenant_filter_row_filter_and_masks(
        host: EngineHostProcess, capsys: pytest.CaptureFixture[str]) -> None:
    status, answer = _api(host, "POST", "/policies/explain",
                          {"user_id": ANALYST, "sql": "SELECT full_name, ssn, email FROM crm.customers"})

    assert status == 200 and answer["verdict"] == "allowed" and answer["role"] == "Analyst", answer
    (table,) = answer["tables"]
    assert table["table"] == "crm.customers" and table["action"] == "select"
    assert {"rule_id": "tenant", "filter": "org_id = 'org_acme'"} in table["row_filters"]
    masks = {mask["column"]: mask for mask in table["masks"]}
    assert masks["ssn"]["function"] == "full" and masks["ssn"]["rule_id"] == "msk_org_acme_cust_ssn"
    assert masks["email"] == {"column": "email", "function": "partial", "rule_id": "msk_org_acme_cust_email",
                              "visible_chars": 4}
    assert answer["masked_columns"] == ["crm.customers.email", "crm.customers.ssn"]
    assert "org_acme" in answer["governed_sql"]

    code, out, err = _hd(host, capsys, "policies", "explain", "--user", ANALYST, "--sql",
                         "SELECT first_name FROM hr.employees")
    assert code == 0, err
    assert out.splitlines()[0] == f"user {ANALYST} (role Analyst): ALLOWED"
    assert "rows:  department = {department}  [rls_org_acme_emp_department]" in out


def test_explain_names_the_stage_and_rule_that_refuse_a_statement(
        host: EngineHostProcess, capsys: pytest.CaptureFixture[str]) -> None:
    agent = "usr_demo_acme_agent"
    status, denied = _api(host, "POST", "/policies", {
        "kind": "abac", "policy_id": "no_orders_for_agent_role", "name": "service accounts stay off orders",
        "effect": "deny", "actions": ["select"], "resources": ["sales.orders"],
        "conditions": {"roles": ["ServiceAccount"]}, "reason": "orders are for people"})
    assert status == 201, denied
    try:
        code, out, err = _hd(host, capsys, "policies", "explain", "--user", agent, "--sql",
                             "SELECT count(*) FROM sales.orders")
        guard = _api(host, "POST", "/policies/explain", {"user_id": ANALYST, "sql": "SELECT * FROM read_csv('/etc')"})
    finally:
        _api(host, "DELETE", "/policies/abac/no_orders_for_agent_role")

    assert code == 0, err
    assert out.splitlines()[0].endswith("REFUSED")
    assert "refused at the abac stage: 42501 HD_ERR_ABAC_DENIED: denied by policy 'service accounts stay off orders'" \
        in out
    assert guard[0] == 200 and guard[1]["verdict"] == "refused" and guard[1]["refusal"]["stage"] == "guard"


def test_explain_for_a_user_of_another_organisation_is_not_found(host: EngineHostProcess) -> None:
    status, answer = _api(host, "POST", "/policies/explain",
                          {"user_id": "usr_demo_globex_analyst", "sql": "SELECT 1"})

    assert status == 404 and answer["error"]["code"] == "HD_ERR_NOT_FOUND"


def test_hd_policies_add_says_on_stderr_who_is_exempt_and_keeps_one_stdout_line_per_policy(
        host: EngineHostProcess, capsys: pytest.CaptureFixture[str]) -> None:
    document = {"kind": "mask", "rule_id": "cli_exempt_note", "table": "sales.orders", "column": "status",
                "function": "full"}

    status, out, err = _hd(host, capsys, "policies", "add", "--json", json.dumps(document))
    _api(host, "DELETE", "/policies/mask/cli_exempt_note")

    assert status == 0 and out.splitlines() == [out.splitlines()[0]] and out.startswith("added mask cli_exempt_note")
    assert "no role is exempt" in err and "warning: your own role (Owner) is not exempt" in err
