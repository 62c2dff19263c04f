"""Users routes: invite, list with filters, role rules, suspension and removal, tenant isolation."""

from __future__ import annotations

import pytest

from tests.integration.functions.conftest import ControlApi


def _users(control: ControlApi) -> str:
    return f"/v1/organizations/{control.org_id}/users"


def _key_for(control: ControlApi, user_id: str, scopes: list[str]) -> str:
    created = control.ok("POST", f"/v1/organizations/{control.org_id}/api-keys",
                         {"user_id": user_id, "scopes": scopes, "env": "test"})
    return created["api_key"]


def test_invite_then_list_with_filters(control: ControlApi) -> None:
    control.ok("POST", _users(control), {"email": "a@example.com", "role": "Analyst", "department": "finance"})
    control.ok("POST", _users(control), {"email": "b@example.com", "role": "Auditor"})
    analysts = control.ok("GET", _users(control) + "?role=Analyst")
    assert [user["email"] for user in analysts] == ["a@example.com"]
    finance = control.ok("GET", _users(control) + "?department=finance")
    assert [user["email"] for user in finance] == ["a@example.com"]
    assert "password_hash" not in analysts[0] and "mfa_secret" not in analysts[0]


def test_inviting_an_existing_email_is_a_conflict(control: ControlApi) -> None:
    control.ok("POST", _users(control), {"email": "a@example.com", "role": "Analyst"})
    again = control.call("POST", _users(control), {"email": "A@example.com", "role": "Analyst"})
    assert again.status == 409 and again.json()["error"]["code"] == "HD_ERR_CONFLICT"


def test_an_analyst_cannot_manage_users(control: ControlApi) -> None:
    analyst = control.ok("POST", _users(control), {"email": "a@example.com", "role": "Analyst"})
    key = _key_for(control, analyst["user_id"], ["read_only"])
    refused = control.call("GET", _users(control), key=key)
    assert refused.status == 403 and refused.json()["error"]["code"] == "HD_ERR_FORBIDDEN"


def test_only_an_owner_may_promote_to_admin(control: ControlApi) -> None:
    admin = control.ok("POST", _users(control), {"email": "admin@example.com", "role": "Admin"})
    analyst = control.ok("POST", _users(control), {"email": "a@example.com", "role": "Analyst"})
    admin_key = _key_for(control, admin["user_id"], ["admin"])
    refused = control.call("PUT", f"{_users(control)}/{analyst['user_id']}/role", {"role": "Admin"}, key=admin_key)
    assert refused.status == 403
    promoted = control.ok("PUT", f"{_users(control)}/{analyst['user_id']}/role", {"role": "Admin"})
    assert promoted["role"] == "Admin"


def test_suspending_a_user_cuts_off_their_api_keys_at_once(control: ControlApi) -> None:
    analyst = control.ok("POST", _users(control), {"email": "a@example.com", "role": "Analyst"})
    key = _key_for(control, analyst["user_id"], ["read_only"])
    assert control.call("GET", "/v1/auth/whoami", key=key).status == 200
    control.ok("POST", f"{_users(control)}/{analyst['user_id']}/suspend")
    assert control.call("GET", "/v1/auth/whoami", key=key).status == 401
    control.ok("POST", f"{_users(control)}/{analyst['user_id']}/reactivate")
    assert control.call("GET", "/v1/auth/whoami", key=key).status == 200


def test_removing_a_user_revokes_their_keys(control: ControlApi) -> None:
    analyst = control.ok("POST", _users(control), {"email": "a@example.com", "role": "Analyst"})
    key = _key_for(control, analyst["user_id"], ["read_only"])
    removed = control.ok("DELETE", f"{_users(control)}/{analyst['user_id']}")
    assert removed["status"] == "removed"
    assert control.call("GET", "/v1/auth/whoami", key=key).status == 401
    keys = control.ok("GET", f"/v1/organizations/{control.org_id}/api-keys?user_id={analyst['user_id']}")
    assert all(item["revoked_at"] for item in keys)


def test_the_owner_cannot_demote_themselves(control: ControlApi) -> None:
    refused = control.call("PUT", f"{_users(control)}/{control.owner_id}/role", {"role": "Analyst"})
    assert refused.status in (403, 409)


def test_another_organisation_looks_like_it_does_not_exist(control: ControlApi) -> None:
    reply = control.call("GET", "/v1/organizations/org_someoneelse/users")
    assert reply.status == 404 and reply.json()["error"]["code"] == "HD_ERR_NOT_FOUND"


@pytest.mark.parametrize(
    ("field", "value", "hidden"),
    [("email", "ann\u202e@example.com", "U+202E"), ("email", "ann\u0000@example.com", "U+0000"),
     ("name", "Ann\u2067Smith", "U+2067"), ("name", "Ann\u200f", "U+200F"), ("department", "fin\u0000", "U+0000"),
     ("region", "eu\u2069", "U+2069")],
)
def test_names_and_emails_with_control_or_bidi_characters_are_refused(
    control: ControlApi, field: str, value: str, hidden: str
) -> None:
    body = {"email": "ann@example.com", "role": "Analyst", field: value}
    reply = control.call("POST", _users(control), body)
    assert reply.status == 422 and reply.json()["error"]["code"] == "HD_ERR_VALIDATION"
    assert hidden in reply.json()["error"]["message"]
    assert [user["email"] for user in control.ok("GET", _users(control))] == ["owner@example.com"]
