"""Retried creates: the same Idempotency-Key and request answer once, on SQLite and on DynamoDB alike."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.integration.functions.conftest import ControlApi

MASK = {"kind": "mask", "rule_id": "mask_ssn", "table": "main.patients", "column": "ssn", "function": "partial",
        "visible_chars": 4}

# (path under the organisation, a request, another request, the IAM event the create records)
CREATES: dict[str, tuple[str, dict[str, Any], dict[str, Any], str]] = {
    "users": ("users", {"email": "a@x.com", "role": "Analyst", "password": "correct horse battery"},
              {"email": "b@x.com", "role": "Analyst"}, "user.invited"),
    "environments": ("environments", {"name": "analytics"}, {"name": "reporting"}, "environment.created"),
    "policies": ("policies", MASK, {**MASK, "rule_id": "mask_other"}, "policy.created"),
}


def _events(control: ControlApi) -> Counter[str]:
    events = control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin?limit=1000")
    return Counter(event["event_type"] for event in events)


def _create(control: ControlApi, path: str, body: dict[str, Any], idempotency_key: str | None, **kwargs: Any) -> Any:
    headers = {} if idempotency_key is None else {"Idempotency-Key": idempotency_key}
    return control.call("POST", f"/v1/organizations/{control.org_id}/{path}", body, headers=headers, **kwargs)


@pytest.mark.parametrize("route", sorted(CREATES))
def test_a_retry_with_the_same_key_and_request_returns_the_first_answer_without_a_second_write(
    control: ControlApi, route: str
) -> None:
    path, body, _, event_type = CREATES[route]
    first = _create(control, path, body, "retry-1")
    retried = _create(control, path, body, "retry-1")
    assert first.status == 201
    assert (retried.status, retried.json()) == (first.status, first.json())
    assert _events(control)[event_type] == 1


@pytest.mark.parametrize("route", sorted(CREATES))
def test_the_same_key_with_another_request_is_refused_and_writes_nothing(control: ControlApi, route: str) -> None:
    path, body, other, event_type = CREATES[route]
    assert _create(control, path, body, "retry-2").status == 201
    refused = _create(control, path, other, "retry-2")
    assert refused.status == 422 and refused.json()["error"]["code"] == "HD_ERR_IDEMPOTENCY_KEY_REUSED"
    assert _events(control)[event_type] == 1


def test_without_a_key_a_repeated_create_is_a_second_request(control: ControlApi) -> None:
    assert _create(control, "policies", MASK, None).status == 201
    assert _create(control, "policies", MASK, None).status == 409  # the id is taken: nothing replays it


def test_a_request_that_failed_stores_nothing_so_its_retry_runs(control: ControlApi) -> None:
    assert _create(control, "policies", MASK, None).status == 201
    assert _create(control, "policies", MASK, "retry-3").status == 409  # the id is taken
    control.ok("DELETE", f"/v1/organizations/{control.org_id}/policies/mask/mask_ssn")
    assert _create(control, "policies", MASK, "retry-3").status == 201


def test_a_key_belongs_to_its_caller(control: ControlApi) -> None:
    org = f"/v1/organizations/{control.org_id}"
    admin = control.ok("POST", f"{org}/users", {"email": "admin@x.com", "role": "Admin"})
    admin_key = control.ok("POST", f"{org}/api-keys", {"user_id": admin["user_id"], "scopes": ["users:manage"]})
    first = _create(control, "users", {"email": "c@x.com", "role": "Analyst"}, "shared-key")
    theirs = _create(control, "users", {"email": "c@x.com", "role": "Analyst"}, "shared-key", key=admin_key["api_key"])
    assert first.status == 201 and theirs.status == 409  # run for the second caller, not replayed to them
    assert _create(control, "users", {"email": "c@x.com", "role": "Analyst"}, "shared-key",
                   key="hd_live_notakey").status == 401


def test_a_retried_jit_request_is_one_request(control: ControlApi) -> None:
    org = f"/v1/organizations/{control.org_id}"
    analyst = control.ok("POST", f"{org}/users", {"email": "a@x.com", "role": "Analyst"})
    key = control.ok("POST", f"{org}/api-keys", {"user_id": analyst["user_id"], "scopes": ["read_only"]})["api_key"]
    body = {"role": "Admin", "reason": "incident 42", "duration_seconds": 900}
    first = _create(control, "jit-requests", body, "jit-1", key=key)
    retried = _create(control, "jit-requests", body, "jit-1", key=key)
    assert first.status == 201 and (retried.status, retried.json()) == (201, first.json())
    assert _events(control)["jit.requested"] == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "caf\u00e9"])
def test_a_malformed_key_is_refused(control: ControlApi, key: str) -> None:
    reply = _create(control, "environments", {"name": "analytics"}, key)
    assert reply.status in (400, 422), reply.body
    assert _events(control)["environment.created"] == 0
