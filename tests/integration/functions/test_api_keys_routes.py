"""API key routes: plaintext once, IP allowlists, rotation with a 72-hour grace, revocation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.functions.conftest import ControlApi


def _keys(control: ControlApi) -> str:
    return f"/v1/organizations/{control.org_id}/api-keys"


def test_create_shows_the_plaintext_once_and_never_again(control: ControlApi) -> None:
    created = control.ok("POST", _keys(control), {"scopes": ["read_only"], "env": "test", "name": "ci"})
    assert created["api_key"].startswith("hd_test_")
    listed = control.ok("GET", _keys(control))
    fetched = control.ok("GET", f"{_keys(control)}/{created['key']['key_id']}")
    assert created["api_key"] not in str(listed) + str(fetched)
    assert "key_hash" not in fetched


def test_a_key_outside_its_ip_allowlist_is_refused(control: ControlApi) -> None:
    created = control.ok("POST", _keys(control), {"scopes": ["read_only"], "allowed_cidrs": ["10.1.0.0/16"]})
    key = created["api_key"]
    assert control.call("GET", "/v1/auth/whoami", key=key, source_ip="10.1.2.3").status == 200
    refused = control.call("GET", "/v1/auth/whoami", key=key, source_ip="192.0.2.9")
    # Like a wrong secret, so the refusal does not confirm that the key is genuine.
    assert refused.status == 401 and refused.json()["error"]["code"] == "HD_ERR_AUTH_FAILED"


def test_a_bad_cidr_is_refused_by_the_schema(control: ControlApi) -> None:
    reply = control.call("POST", _keys(control), {"scopes": ["read_only"], "allowed_cidrs": ["not-a-network"]})
    assert reply.status == 422 and reply.json()["error"]["code"] == "HD_ERR_VALIDATION"


def test_rotation_keeps_both_keys_valid_for_72_hours(control: ControlApi) -> None:
    old = control.ok("POST", _keys(control), {"scopes": ["read_only"]})
    rotated = control.ok("POST", f"{_keys(control)}/{old['key']['key_id']}/rotate")
    assert control.call("GET", "/v1/auth/whoami", key=old["api_key"]).status == 200
    assert control.call("GET", "/v1/auth/whoami", key=rotated["api_key"]).status == 200
    grace_end = datetime.fromisoformat(rotated["previous"]["expires_at"])
    expected = datetime.now(UTC) + timedelta(hours=72)
    assert abs((grace_end - expected).total_seconds()) < 60
    assert rotated["previous"]["rotated_to"] == rotated["key"]["key_id"]
    again = control.call("POST", f"{_keys(control)}/{old['key']['key_id']}/rotate")
    assert again.status == 409


def test_a_revoked_key_is_refused_at_once(control: ControlApi) -> None:
    created = control.ok("POST", _keys(control), {"scopes": ["read_only"]})
    assert control.call("GET", "/v1/auth/whoami", key=created["api_key"]).status == 200
    control.ok("DELETE", f"{_keys(control)}/{created['key']['key_id']}")
    assert control.call("GET", "/v1/auth/whoami", key=created["api_key"]).status == 401


def test_a_key_cannot_be_wider_than_its_users_role(control: ControlApi) -> None:
    analyst = control.ok("POST", f"/v1/organizations/{control.org_id}/users", {"email": "a@x.com", "role": "Analyst"})
    reply = control.call("POST", _keys(control), {"user_id": analyst["user_id"], "scopes": ["users:manage"]})
    assert reply.status == 403 and reply.json()["error"]["code"] == "HD_ERR_SCOPE_NOT_ALLOWED"


def test_the_expiry_schedule_records_each_expired_key_once(control: ControlApi) -> None:
    from dataclasses import replace

    from functions.api_keys.handler import lambda_handler

    created = control.ok("POST", _keys(control), {"scopes": ["read_only"]})
    store = control.services.store
    record = store.get_api_key(created["key"]["key_id"])
    assert record is not None
    store.update_api_key(replace(record, expires_at=datetime.now(UTC) - timedelta(minutes=1)))
    schedule_event = {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
    assert lambda_handler(schedule_event, None) == {"expired_keys_recorded": 1}
    assert lambda_handler(schedule_event, None) == {"expired_keys_recorded": 0}
    events = control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin?limit=1000")
    assert [e["target"] for e in events if e["event_type"] == "api_key.expired"] == [record.key_id]
    assert control.call("GET", "/v1/auth/whoami", key=created["api_key"]).status == 401


@pytest.mark.parametrize("name", ["build\u202ekey", "nul\x00key", "zero\u200bwidth"])
def test_a_key_name_with_control_or_format_characters_is_refused(control: ControlApi, name: str) -> None:
    body = {"scopes": ["read_only"], "name": name}
    reply = control.call("POST", f"/v1/organizations/{control.org_id}/api-keys", body)
    assert reply.status == 422 and reply.json()["error"]["code"] == "HD_ERR_VALIDATION"


def test_a_key_id_outside_the_id_pattern_is_refused_before_any_lookup(control: ControlApi) -> None:
    reply = control.call("GET", f"/v1/organizations/{control.org_id}/api-keys/hd_live_x%00y")
    assert reply.status == 422 and reply.json()["error"]["code"] == "HD_ERR_VALIDATION"
