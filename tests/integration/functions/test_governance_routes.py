"""Policies, JIT and quota routes: validation by the engine's validator, version bumps, grants, limits."""

from __future__ import annotations

from datetime import date

from tests.integration.functions.conftest import ControlApi

MASK = {"kind": "mask", "rule_id": "mask_ssn", "table": "main.patients", "column": "ssn", "function": "partial",
        "visible_chars": 4}


def _org(control: ControlApi) -> str:
    return f"/v1/organizations/{control.org_id}"


def test_policy_crud_bumps_the_policy_version(control: ControlApi) -> None:
    created = control.ok("POST", f"{_org(control)}/policies", MASK)
    assert created["kind"] == "mask" and created["id"] == "mask_ssn"
    version = created["policy_version"]
    replaced = control.ok("PUT", f"{_org(control)}/policies/mask/mask_ssn", {**MASK, "function": "full"})
    assert replaced["document"]["function"] == "full" and replaced["policy_version"] > version
    listed = control.ok("GET", f"{_org(control)}/policies?kind=mask")
    assert [item["id"] for item in listed] == ["mask_ssn"]
    deleted = control.ok("DELETE", f"{_org(control)}/policies/mask/mask_ssn")
    assert deleted["policy_version"] > replaced["policy_version"]
    assert control.call("GET", f"{_org(control)}/policies/mask/mask_ssn").status == 404


def test_an_unsafe_policy_is_refused_by_the_engines_validator(control: ControlApi) -> None:
    control.ok("POST", f"{_org(control)}/policies",
               {"kind": "column_tag", "tag_id": "t1", "table": "main.patients", "column": "ssn", "pii_type": "ssn"})
    reply = control.call("POST", f"{_org(control)}/policies", {**MASK, "function": "hash"})
    assert reply.status == 400 and reply.json()["error"]["code"] == "HD_ERR_POLICY_INVALID"
    assert control.call("POST", f"{_org(control)}/policies", {"kind": "mask", "rule_id": "x"}).status == 400


def test_jit_request_and_approval_create_an_expiring_grant(control: ControlApi) -> None:
    analyst = control.ok("POST", f"{_org(control)}/users", {"email": "a@x.com", "role": "Analyst"})
    key = control.ok("POST", f"{_org(control)}/api-keys", {"user_id": analyst["user_id"], "scopes": ["read_only"]})
    request = control.ok("POST", f"{_org(control)}/jit-requests",
                         {"role": "Admin", "reason": "incident 42", "duration_seconds": 900}, key=key["api_key"])
    assert request["status"] == "pending"
    self_approval = control.call("POST", f"{_org(control)}/jit-requests/{request['request_id']}/approve", {},
                                 key=key["api_key"])
    assert self_approval.status == 403
    approved = control.ok("POST", f"{_org(control)}/jit-requests/{request['request_id']}/approve", {"reason": "ok"})
    assert approved["status"] == "approved" and approved["grant_id"]
    grants = control.services.store.list_policies(control.org_id)
    assert any(getattr(obj, "grant_id", None) == approved["grant_id"] for obj in grants)
    twice = control.call("POST", f"{_org(control)}/jit-requests/{request['request_id']}/deny", {})
    assert twice.status == 409


def test_quota_is_set_by_the_owner_and_shown_with_usage(control: ControlApi) -> None:
    quota = control.ok("PUT", f"{_org(control)}/quota", {"monthly_credits": 500, "max_rows_per_query": 10000})
    assert quota["monthly_credits"] == 500 and quota["max_rows_per_query"] == 10000
    assert control.ok("GET", f"{_org(control)}/quota")["credits_used_this_month"] >= 0
    today = date.today().isoformat()
    assert control.ok("GET", f"{_org(control)}/usage?start={today}&end={today}&group_by=user") == []


def test_an_admin_cannot_change_the_quota(control: ControlApi) -> None:
    admin = control.ok("POST", f"{_org(control)}/users", {"email": "ad@x.com", "role": "Admin"})
    key = control.ok("POST", f"{_org(control)}/api-keys", {"user_id": admin["user_id"], "scopes": ["admin"]})
    reply = control.call("PUT", f"{_org(control)}/quota", {"monthly_credits": 1}, key=key["api_key"])
    assert reply.status == 403
