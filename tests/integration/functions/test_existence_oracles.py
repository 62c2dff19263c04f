"""No route tells a caller that another organisation's id exists.

Every operation of the checked-in OpenAPI document that takes an organisation, environment, user,
key, policy or JIT request id in its path is called twice by the same caller: once with the id of
a real object of another organisation, once with a made-up id of the same shape. The two answers
must be the same status and the same bytes apart from the request id. Uniqueness that has to hold
across organisations (e-mails, federated identities, policy ids, table bindings) answers a clash
in the caller's own organisation and one in another organisation with the same 409.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import quote

import pytest

from functions.openapi import DOCUMENT_PATH
from hd_core.api_keys import issue_api_key
from hd_core.bootstrap import ensure_environments
from hd_core.models import ALL_SCOPES, BASE62_ALPHABET, Organization, OrgStatus, Role, User, UserStatus, new_id, utc_now
from hd_core.table_owners import record_owner
from hd_core.webhook_models import WebhookEndpoint
from tests.integration.functions.conftest import ControlApi

ID_PARAMETERS = ("org_id", "env_id", "user_id", "key_id", "object_id", "request_id", "endpoint_id")
TODAY = date.today().isoformat()
MASK = {"kind": "mask", "table": "main.patients", "column": "ssn", "function": "full"}

# A valid request for every operation that takes a body or a required query, so a probe gets past
# validation to the lookup (two 422s would match without proving anything).
BODIES: dict[tuple[str, str], Any] = {
    ("PATCH", "/v1/organizations/{org_id}"): {"mfa_required": False},
    ("POST", "/v1/organizations/{org_id}/api-keys"): {"scopes": ["read_only"], "env": "test"},
    ("PATCH", "/v1/organizations/{org_id}/api-keys/{key_id}"): {"rotate_every_days": 30},
    ("POST", "/v1/organizations/{org_id}/environments"): {"name": "probe", "key_env": "test"},
    ("POST", "/v1/organizations/{org_id}/jit-requests"): {"role": "Developer", "reason": "probe",
                                                          "duration_seconds": 600},
    ("POST", "/v1/organizations/{org_id}/jit-requests/{request_id}/approve"): {},
    ("POST", "/v1/organizations/{org_id}/jit-requests/{request_id}/deny"): {},
    ("POST", "/v1/organizations/{org_id}/jit-requests/{request_id}/revoke"): {},
    ("POST", "/v1/organizations/{org_id}/policies"): {**MASK, "rule_id": "probe_mask", "column": "phone"},
    ("PUT", "/v1/organizations/{org_id}/policies/{kind}/{object_id}"): MASK,
    ("POST", "/v1/organizations/{org_id}/policies/explain"): {"user_id": "usr_probe", "sql": "SELECT 1"},
    ("PUT", "/v1/organizations/{org_id}/quota"): {"monthly_credits": 10},
    ("POST", "/v1/organizations/{org_id}/webhooks"): {"url": "https://hooks.example.com/hd", "events": ["key.revoked"]},
    ("POST", "/v1/organizations/{org_id}/forget-requests"): {"subject_id": "probe-subject"},
    ("POST", "/v1/organizations/{org_id}/users"): {"email": "probe@example.com", "role": "Analyst"},
    ("POST", "/v1/organizations/{org_id}/users/{user_id}/identities"): {"external_id": "https://idp.example#probe"},
    ("PUT", "/v1/organizations/{org_id}/users/{user_id}/role"): {"role": "Developer"},
    ("PUT", "/v1/organizations/{org_id}/users/{user_id}/password"): {"password": "a probe reset passphrase"},
    ("POST", "/v1/environments/{env_id}/shadow-mode/upload"): {"text": "select 1", "format": "sql"},
    ("POST", "/v1/environments/{env_id}/shadow-mode/replay"): {"query_set_id": "qs_" + "0" * 32,
                                                               "comparison_dsn": "host=db.example"},
}
QUERIES: dict[tuple[str, str], str] = {
    ("GET", "/v1/environments/{env_id}/audit/queries"): f"start={TODAY}&end={TODAY}",
    ("GET", "/v1/organizations/{org_id}/usage"): f"start={TODAY}&end={TODAY}",
    ("GET", "/v1/environments/{env_id}/audit/phi-disclosures"): f"patient_key=p-1&start={TODAY}&end={TODAY}",
    ("DELETE", "/v1/organizations/{org_id}/users/{user_id}/identities"): "external_id=" + quote("https://idp.example#x"),
}
FIXED_PARAMETERS = {"kind": "mask"}


@dataclass(frozen=True)
class Tenant:
    """The ids of one organisation's objects, one of each kind a path can name."""

    org_id: str
    env_id: str
    user_id: str
    key_id: str
    object_id: str
    request_id: str
    endpoint_id: str
    owner_key: str
    member_key: str


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    document = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    return [
        (method.upper(), path, operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if any("{" + name + "}" in path for name in ID_PARAMETERS)
    ]


def _made_up_like(real: str) -> str:
    """An id of the same shape as `real` that names nothing: its random tail redrawn."""
    return real[:-6] + "".join(secrets.choice(BASE62_ALPHABET) for _ in range(6))


def _member_key(control: ControlApi, org: str, owner_key: str, email: str) -> tuple[str, str, str]:
    """An Analyst of the organisation with a read-only key: (user id, key id, plaintext)."""
    user = control.ok("POST", f"/v1/organizations/{org}/users", {"email": email, "role": "Analyst"}, key=owner_key)
    key = control.ok("POST", f"/v1/organizations/{org}/api-keys",
                     {"user_id": user["user_id"], "scopes": ["read_only"], "env": "test"}, key=owner_key)
    return user["user_id"], key["key"]["key_id"], key["api_key"]


def _other_tenant(control: ControlApi) -> Tenant:
    """Another organisation with one object of every kind, made through the API by its own Owner."""
    store = control.services.store
    org = Organization(org_id=new_id("org"), name="Globex", status=OrgStatus.ACTIVE, created_at=utc_now())
    store.put_org(org)
    owner = User(user_id=new_id("usr"), org_id=org.org_id, email="owner@globex.example", role=Role.OWNER,
                 status=UserStatus.ACTIVE, department=None, region=None, created_at=utc_now())
    store.put_user(owner)
    owner_key, _ = issue_api_key(store, control.services.hasher, org_id=org.org_id, user_id=owner.user_id,
                                 scopes=ALL_SCOPES)
    env_id = ensure_environments(store, org.org_id)[0].env_id
    user_id, key_id, member_key = _member_key(control, org.org_id, owner_key, "analyst@globex.example")
    path = f"/v1/organizations/{org.org_id}"
    # main.patients is the deployment organisation's table: to Globex it does not exist.
    control.ok("POST", f"{path}/policies", {**MASK, "rule_id": "globex_mask", "pending": True}, key=owner_key)
    request = control.ok("POST", f"{path}/jit-requests",
                         {"role": "Developer", "reason": "theirs", "duration_seconds": 600}, key=member_key)
    # Their webhook endpoint, stored directly: creating one through the API would resolve its host.
    endpoint = WebhookEndpoint(endpoint_id=new_id("whk"), org_id=org.org_id, url="https://hooks.globex.example/",
                               events=("key.revoked",), secret_sealed="hdsealed:v1:x:y", created_at=utc_now(),
                               created_by=owner.user_id)
    store.put_webhook_endpoint(endpoint)
    return Tenant(org.org_id, env_id, user_id, key_id, "globex_mask", request["request_id"], endpoint.endpoint_id,
                  owner_key, member_key)


def _url(method: str, template: str, ids: dict[str, str]) -> str:
    url = template
    for name, value in {**FIXED_PARAMETERS, **ids}.items():
        url = url.replace("{" + name + "}", value)
    query = QUERIES.get((method, template))
    return url if query is None else f"{url}?{query}"


def _normalised(reply: Any) -> tuple[int, bytes]:
    body = reply.body
    request_id = reply.json().get("error", {}).get("request_id") if reply.status >= 400 else None
    return reply.status, body if request_id is None else body.replace(request_id.encode(), b"<request id>")


def _probes(control: ControlApi, theirs: Tenant, method: str, template: str) -> list[tuple[str, str]]:
    """(their URL, made-up URL) pairs: their org with their objects, and our org with one of their objects."""
    params = [name for name in ID_PARAMETERS if "{" + name + "}" in template]
    theirs_ids = {name: getattr(theirs, name) for name in params}
    made_up = {name: _made_up_like(value) for name, value in theirs_ids.items()}
    probes = []
    if "org_id" in params:
        probes.append((_url(method, template, theirs_ids), _url(method, template, made_up)))
    for name in params:
        if name == "org_id":
            continue
        own = {"org_id": control.org_id} if "org_id" in params else {}
        probes.append((_url(method, template, {**made_up, **own, name: theirs_ids[name]}),
                       _url(method, template, {**made_up, **own})))
    return probes


def test_every_operation_taking_an_id_is_probed_with_a_valid_request() -> None:
    operations = _operations()
    assert len(operations) >= 30
    for method, path, operation in operations:
        if "requestBody" in operation:
            assert (method, path) in BODIES, f"add a valid body for {method} {path} to BODIES"
        required = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query" and p.get("required")]
        if required:
            assert (method, path) in QUERIES, f"add the required query {required} of {method} {path} to QUERIES"


@pytest.mark.parametrize("caller", ["owner", "analyst"])
def test_another_organisations_ids_answer_exactly_like_made_up_ones(control: ControlApi, caller: str) -> None:
    theirs = _other_tenant(control)
    key = control.owner_key if caller == "owner" else _member_key(control, control.org_id, control.owner_key,
                                                                 "analyst@example.com")[2]
    probed = 0
    for method, template, _ in _operations():
        body = BODIES.get((method, template))
        for their_url, made_up_url in _probes(control, theirs, method, template):
            their_reply = control.call(method, their_url, body, key=key)
            made_up_reply = control.call(method, made_up_url, body, key=key)
            assert their_reply.status >= 400, (method, their_url, their_reply.body)
            assert _normalised(their_reply) == _normalised(made_up_reply), (method, template)
            probed += 1
    assert probed >= 40
    # Nothing of theirs was touched by any of the probes.
    store = control.services.store
    member = store.get_user(theirs.user_id)
    assert member is not None and (member.status, member.role) == (UserStatus.ACTIVE, Role.ANALYST)
    assert control.call("GET", "/v1/auth/whoami", key=theirs.member_key).status == 200
    request = store.get_jit_request(theirs.request_id)
    assert request is not None and request.status == "pending"


def _clash(control: ControlApi, method: str, url: str, body: dict[str, Any], probed: str) -> tuple[int, bytes]:
    """The answer to a write that clashes, with the caller's own probed value blanked out of the message."""
    reply = control.call(method, url, body)
    status, normalised = _normalised(reply)
    return status, normalised.replace(probed.encode(), b"<probed>")


def test_an_email_taken_here_or_elsewhere_is_the_same_conflict(control: ControlApi) -> None:
    _other_tenant(control)
    users = f"/v1/organizations/{control.org_id}/users"
    control.ok("POST", users, {"email": "mine@example.com", "role": "Analyst"})
    here = _clash(control, "POST", users, {"email": "mine@example.com", "role": "Analyst"}, "mine@example.com")
    elsewhere = _clash(control, "POST", users, {"email": "analyst@globex.example", "role": "Analyst"},
                       "analyst@globex.example")
    assert here[0] == 409 and here == elsewhere


def test_a_federated_identity_linked_here_or_elsewhere_is_the_same_conflict(control: ControlApi) -> None:
    theirs = _other_tenant(control)
    their_identity, my_identity = "https://idp.example#globex-1", "https://idp.example#acme-1"
    control.ok("POST", f"/v1/organizations/{theirs.org_id}/users/{theirs.user_id}/identities",
               {"external_id": their_identity}, key=theirs.owner_key)
    mine, other_mine = (_member_key(control, control.org_id, control.owner_key, f"{n}@example.com")[0]
                        for n in ("a", "b"))
    users = f"/v1/organizations/{control.org_id}/users"
    control.ok("POST", f"{users}/{mine}/identities", {"external_id": my_identity})
    here = _clash(control, "POST", f"{users}/{other_mine}/identities", {"external_id": my_identity}, my_identity)
    elsewhere = _clash(control, "POST", f"{users}/{other_mine}/identities", {"external_id": their_identity},
                       their_identity)
    assert here[0] == 409 and here == elsewhere


def test_a_policy_id_taken_here_or_elsewhere_is_the_same_conflict(control: ControlApi) -> None:
    theirs = _other_tenant(control)
    policies = f"/v1/organizations/{control.org_id}/policies"
    control.ok("POST", policies, {**MASK, "rule_id": "acme_mask"})
    document = {**MASK, "column": "phone"}
    here = _clash(control, "POST", policies, {**document, "rule_id": "acme_mask"}, "acme_mask")
    elsewhere = _clash(control, "POST", policies, {**document, "rule_id": theirs.object_id}, theirs.object_id)
    assert here[0] == 409 and here == elsewhere


def test_binding_another_organisations_table_is_binding_a_table_that_does_not_exist(control: ControlApi) -> None:
    """Tables are bound when created (hd_core.table_owners); the API binds none, and says nothing of whose a name is."""
    theirs = _other_tenant(control)
    record_owner(control.services.store, "sales.globex_orders", theirs.org_id)
    policies = f"/v1/organizations/{control.org_id}/policies"
    elsewhere = _clash(control, "POST", policies,
                       {"kind": "table_binding", "binding_id": "again_1", "table": "sales.globex_orders"},
                       "sales.globex_orders")
    nowhere = _clash(control, "POST", policies,
                     {"kind": "table_binding", "binding_id": "again_1", "table": "sales.nobody_made"},
                     "sales.nobody_made")
    assert elsewhere[0] == 404 and elsewhere == nowhere
