"""Every error has the same shape, the right status, and never a stack trace."""

from __future__ import annotations

import json
import re

import pytest

from functions.shared.http import json_depth
from functions.users import handler as users_handler
from tests.integration.functions.conftest import ControlApi


def _assert_error(reply, status: int, code: str) -> None:
    assert reply.status == status, reply.body
    error = reply.json()["error"]
    assert error["code"] == code and error["message"] and error["request_id"]


def test_no_credentials_is_401(control: ControlApi) -> None:
    _assert_error(control.call("GET", f"/v1/organizations/{control.org_id}/users", anonymous=True), 401,
                  "HD_ERR_AUTH_FAILED")


def test_a_malformed_key_is_401(control: ControlApi) -> None:
    reply = control.call("GET", "/v1/auth/whoami", headers={"Authorization": "ApiKey hd_live_nonsense"},
                         anonymous=True)
    assert reply.status == 401


def test_an_unknown_route_is_404_in_the_error_shape(control: ControlApi) -> None:
    _assert_error(control.call("GET", "/v1/nothing-here"), 404, "HD_ERR_NO_ROUTE")


def test_a_body_that_breaks_the_schema_is_422(control: ControlApi) -> None:
    reply = control.call("POST", f"/v1/organizations/{control.org_id}/users", {"email": "a@x.com", "role": "King"})
    _assert_error(reply, 422, "HD_ERR_VALIDATION")
    assert "role" in reply.json()["error"]["message"]


def test_an_unexpected_failure_is_a_generic_500_without_internals(
    control: ControlApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(users_handler.directory, "list_users", explode)
    reply = control.call("GET", f"/v1/organizations/{control.org_id}/users")
    _assert_error(reply, 500, "HD_ERR_INTERNAL")
    assert b"secret internal detail" not in reply.body and b"Traceback" not in reply.body


def test_a_failing_aws_backend_is_a_503_to_retry(control: ControlApi, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    def throttled(*args: object, **kwargs: object) -> None:
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "Query")

    monkeypatch.setattr(users_handler.directory, "list_users", throttled)
    reply = control.call("GET", f"/v1/organizations/{control.org_id}/users")
    _assert_error(reply, 503, "HD_ERR_BACKEND_UNAVAILABLE")
    assert b"slow down" not in reply.body


def _body_operations() -> list[tuple[str, str]]:
    from functions.openapi import DOCUMENT_PATH

    document = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    return [(method.upper(), path) for path, operations in document["paths"].items()
            for method, operation in operations.items() if "requestBody" in operation]


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_a_deeply_nested_body_is_a_400_on_every_route_that_takes_one(control: ControlApi, opening: str) -> None:
    closing = "]" if opening == "[" else "}"
    nested = (opening * 1000 + "1" + closing * 1000).encode()
    operations = _body_operations()
    assert len(operations) >= 15
    for method, template in operations:
        url = template.replace("{org_id}", control.org_id).replace("{kind}", "mask")
        url = re.sub(r"\{\w+\}", "x_1", url)
        reply = control.dispatcher.invoke(method, url, body=nested, headers={
            "X-API-Key": control.owner_key, "Content-Type": "application/json"})
        _assert_error(reply, 400, "HD_ERR_INVALID_REQUEST")
        assert b"deeper than 64" in reply.body, (method, template)


def test_nesting_within_the_limit_is_parsed_as_usual(control: ControlApi) -> None:
    # 60 levels inside a policy document: parsed, then refused by the document's schema, not by the depth limit.
    document = {"kind": "abac", "name": "deep", "effect": "deny", "actions": ["*"], "resources": ["*"],
                "reason": "r", "conditions": json.loads("[" * 60 + "]" * 60)}
    reply = control.call("POST", f"/v1/organizations/{control.org_id}/policies", document)
    assert reply.status == 422 and reply.json()["error"]["code"] == "HD_ERR_VALIDATION"
    assert json_depth(json.dumps(document)) == 61
