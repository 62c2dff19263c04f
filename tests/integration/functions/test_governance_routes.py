"""Policies, JIT and quota routes: validation by the engine's validator, version bumps, grants, limits."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import date
from typing import Any

import pytest

from functions.shared.wiring import install_services
from hd_core.models import Role, utc_now
from hd_core.policy_eval import Subject, effective_role
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


class CountingStore:
    """The control store, counting the calls made to each of its methods."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return method(*args, **kwargs)

        return counted


def _store_calls_to_list_policies(control: ControlApi) -> Counter[str]:
    counting = CountingStore(control.services.store)
    install_services(replace(control.services, store=counting))
    try:
        listed = control.ok("GET", f"{_org(control)}/policies")
    finally:
        install_services(control.services)
    assert len({item["policy_version"] for item in listed}) == 1
    return counting.calls


def test_listing_policies_reads_the_store_the_same_number_of_times_however_many_there_are(control: ControlApi) -> None:
    control.ok("POST", f"{_org(control)}/policies", MASK)
    with_one = _store_calls_to_list_policies(control)
    for number in range(5):
        control.ok("POST", f"{_org(control)}/policies", {**MASK, "rule_id": f"mask_{number}", "table": "main.later",
                                                         "column": f"c{number}", "pending": True})
    with_six = _store_calls_to_list_policies(control)
    assert with_six == with_one
    assert with_six["policy_snapshot"] == 1 and with_six["policy_version"] == with_six["get_policy"] == 0


def test_an_unsafe_policy_is_refused_by_the_engines_validator(control: ControlApi) -> None:
    control.ok("POST", f"{_org(control)}/policies",
               {"kind": "column_tag", "tag_id": "t1", "table": "main.patients", "column": "ssn", "pii_type": "ssn"})
    reply = control.call("POST", f"{_org(control)}/policies", {**MASK, "function": "hash"})
    assert reply.status == 400 and reply.json()["error"]["code"] == "HD_ERR_POLICY_INVALID"
    assert control.call("POST", f"{_org(control)}/policies", {"kind": "mask", "rule_id": "x"}).status == 422


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


def _member(control: ControlApi, email: str, role: str, scopes: list[str]) -> tuple[str, str]:
    user = control.ok("POST", f"{_org(control)}/users", {"email": email, "role": role})
    key = control.ok("POST", f"{_org(control)}/api-keys", {"user_id": user["user_id"], "scopes": scopes})
    return user["user_id"], key["api_key"]


def _effective_role(control: ControlApi, user_id: str) -> Role:
    """The role an engine host would give the user now, from the policy snapshot it loads."""
    user = control.services.store.get_user(user_id)
    assert user is not None
    subject = Subject(user_id=user_id, org_id=control.org_id, role=user.role, scopes=(), key_id="k", env="live")
    return effective_role(control.services.store.policy_snapshot(), subject, utc_now())


def test_an_admin_cannot_approve_an_elevation_to_admin_only_an_owner_can(control: ControlApi) -> None:
    analyst_id, analyst_key = _member(control, "a@x.com", "Analyst", ["read_only"])
    _, admin_key = _member(control, "ad@x.com", "Admin", ["admin"])
    request = control.ok("POST", f"{_org(control)}/jit-requests",
                         {"role": "Admin", "reason": "incident 7", "duration_seconds": 900}, key=analyst_key)
    approve = f"{_org(control)}/jit-requests/{request['request_id']}/approve"
    refused = control.call("POST", approve, {}, key=admin_key)
    assert refused.status == 403 and refused.json()["error"]["code"] == "HD_ERR_FORBIDDEN"
    assert _effective_role(control, analyst_id) == Role.ANALYST
    assert control.ok("POST", approve, {})["status"] == "approved"
    assert _effective_role(control, analyst_id) == Role.ADMIN


def test_revoking_an_approved_elevation_ends_it_on_the_engine_and_is_audited(control: ControlApi) -> None:
    analyst_id, analyst_key = _member(control, "a@x.com", "Analyst", ["read_only"])
    request = control.ok("POST", f"{_org(control)}/jit-requests",
                         {"role": "Developer", "reason": "deploy", "duration_seconds": 3600}, key=analyst_key)
    jit_path = f"{_org(control)}/jit-requests/{request['request_id']}"
    control.ok("POST", f"{jit_path}/approve", {})
    assert _effective_role(control, analyst_id) == Role.DEVELOPER

    revoked = control.ok("POST", f"{jit_path}/revoke", {"reason": "deploy finished early"})

    assert revoked["status"] == "revoked"
    assert _effective_role(control, analyst_id) == Role.ANALYST
    events = control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin?limit=1000")
    last = events[-1]
    assert (last["event_type"], last["actor"], last["target"]) == ("jit.revoked", control.owner_id,
                                                                  request["request_id"])
    assert last["after"]["reason"] == "deploy finished early"
    assert control.ok("POST", f"{jit_path}/revoke", {})["status"] == "revoked"  # a retry changes nothing
    assert control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin?limit=1000")[-1] == last
    pending = control.ok("POST", f"{_org(control)}/jit-requests",
                         {"role": "Developer", "reason": "again", "duration_seconds": 600}, key=analyst_key)
    not_approved = control.call("POST", f"{_org(control)}/jit-requests/{pending['request_id']}/revoke", {})
    assert not_approved.status == 409 and not_approved.json()["error"]["code"] == "HD_ERR_CONFLICT"


def test_someone_without_users_manage_cannot_revoke_anothers_elevation(control: ControlApi) -> None:
    _, analyst_key = _member(control, "a@x.com", "Analyst", ["read_only"])
    _, other_key = _member(control, "b@x.com", "Analyst", ["read_only"])
    request = control.ok("POST", f"{_org(control)}/jit-requests",
                         {"role": "Developer", "reason": "deploy", "duration_seconds": 600}, key=analyst_key)
    jit_path = f"{_org(control)}/jit-requests/{request['request_id']}"
    control.ok("POST", f"{jit_path}/approve", {})
    assert control.call("POST", f"{jit_path}/revoke", {}, key=other_key).status == 403
    assert control.ok("POST", f"{jit_path}/revoke", {}, key=analyst_key)["status"] == "revoked"  # their own


@pytest.mark.parametrize("rule_id", ["a/b", "a\u0000b", "a#b", "../x", "a b", "x" * 129])
def test_a_policy_id_a_url_path_could_not_carry_is_refused(control: ControlApi, rule_id: str) -> None:
    reply = control.call("POST", f"{_org(control)}/policies", {**MASK, "rule_id": rule_id})
    assert reply.status == 422 and reply.json()["error"]["code"] == "HD_ERR_VALIDATION"
    assert control.services.store.list_policies(control.org_id) == []


@pytest.mark.parametrize("path_id", ["a%00b", "a%2Fb", "%E2%80%AEx"])
def test_an_id_in_a_path_outside_the_id_pattern_is_a_422(control: ControlApi, path_id: str) -> None:
    reply = control.call("GET", f"{_org(control)}/policies/mask/{path_id}")
    assert reply.status == 422 and reply.json()["error"]["code"] == "HD_ERR_VALIDATION"
    reply = control.call("POST", f"{_org(control)}/jit-requests/{path_id}/revoke", {})
    assert reply.status == 422 and reply.json()["error"]["code"] == "HD_ERR_VALIDATION"


def test_a_reason_with_a_bidi_override_is_refused(control: ControlApi) -> None:
    reply = control.call("POST", f"{_org(control)}/jit-requests",
                         {"role": "Admin", "reason": "routine \u202ekcatta", "duration_seconds": 600})
    assert reply.status == 422 and "U+202E" in reply.json()["error"]["message"]


@pytest.mark.parametrize("reason", ["\u00a0", " \t\n", "\u3000"])
def test_a_blank_jit_reason_breaks_the_documented_schema_not_a_later_check(control: ControlApi, reason: str) -> None:
    """The document says what the route accepts: a reason that is only blanks is a 422, as the schema promises."""
    reply = control.call("POST", f"/v1/organizations/{control.org_id}/jit-requests",
                         {"role": "Developer", "reason": reason, "duration_seconds": 600})
    assert reply.status == 422 and reply.json()["error"]["code"] == "HD_ERR_VALIDATION"


def test_without_an_engine_a_dry_run_answers_masks_uncounted_and_explain_is_409(control: ControlApi) -> None:
    """A control Lambda in AWS has no engine beside it (hd_core/policy_preview.py): what it can still answer."""
    before = control.ok("GET", f"{_org(control)}/policies")
    reply = control.call("POST", f"{_org(control)}/policies?dry_run=true", MASK)

    assert reply.status == 200, reply.body
    preview = reply.json()
    assert preview["stored"] is False and preview["dry_run"]["row_counts"] == "unavailable"
    effects = {effect["role"]: effect for effect in preview["dry_run"]["effects"]}
    assert effects["Analyst"] == {"role": "Analyst", "rows_before": None, "rows_after": None,
                                  "masked_before": [], "masked_after": ["ssn"]}
    assert control.ok("GET", f"{_org(control)}/policies") == before

    explain = control.call("POST", f"{_org(control)}/policies/explain",
                           {"user_id": control.owner_id, "sql": "SELECT ssn FROM main.patients"})
    assert explain.status == 409 and explain.json()["error"]["code"] == "HD_ERR_ENGINE_REQUIRED"


def test_a_dry_run_is_refused_like_the_create_it_previews(control: ControlApi) -> None:
    reply = control.call("POST", f"{_org(control)}/policies?dry_run=true", {**MASK, "column": "social"})

    assert reply.status == 422 and reply.json()["error"]["code"] == "HD_ERR_UNKNOWN_COLUMN"
