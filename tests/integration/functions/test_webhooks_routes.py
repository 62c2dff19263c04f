"""Webhooks end to end on both backends: the routes, the events admin changes emit, signed delivery with retries.

Deliveries go to a real HTTPS receiver on loopback (tests/webhook_receiver.py) that verifies every
signature and fails the first two attempts; the clock is wound by hand, so the backoff is observed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from hd_core.models import utc_now
from hd_core.webhook_admin import secret_sealer
from hd_core.webhook_delivery import (
    CLAIM_LEASE,
    DeliveryOptions,
    backoff_ceiling,
    deliver,
    set_default_options,
)
from hd_core.webhook_models import DeliveryStatus
from tests.clocks import HandWoundClock
from tests.integration.functions.conftest import ControlApi
from tests.webhook_receiver import WebhookReceiver, make_self_signed

MASK = {"kind": "mask", "rule_id": "mask_wh", "table": "main.patients", "column": "ssn", "function": "partial",
        "visible_chars": 4}


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[WebhookReceiver]:
    cert, key = make_self_signed(tmp_path)
    served = WebhookReceiver(cert, key)
    yield served
    served.close()


@pytest.fixture
def local_options(receiver: WebhookReceiver) -> Iterator[DeliveryOptions]:
    """`hd dev`'s delivery options, trusting the receiver's certificate (creation checks URLs with them too)."""
    options = DeliveryOptions(local_mode=True, ca_file=str(receiver.cert_path))
    previous = set_default_options(options)
    yield options
    set_default_options(previous)


def _hooks(control: ControlApi) -> str:
    return f"/v1/organizations/{control.org_id}/webhooks"


def _create(control: ControlApi, receiver: WebhookReceiver, events: list[str], **kwargs: object) -> dict[str, object]:
    created = control.ok("POST", _hooks(control), {"url": receiver.url(), "events": events, **kwargs})
    receiver.secret = str(created["secret"])
    return created


def test_a_delivery_is_signed_retried_with_backoff_and_logged(
    control: ControlApi, receiver: WebhookReceiver, local_options: DeliveryOptions
) -> None:
    created = _create(control, receiver, ["policy.changed"], description="ops")
    assert str(created["secret"]).startswith("whsec_")
    endpoint_id = str(created["endpoint_id"])
    listed = control.ok("GET", _hooks(control))
    assert [item["endpoint_id"] for item in listed] == [endpoint_id]
    assert "secret" not in listed[0]  # shown once, at creation
    stored = control.services.store.get_webhook_endpoint(endpoint_id)
    assert stored is not None and receiver.secret not in stored.secret_sealed  # sealed at rest

    receiver.script = [500, 503]  # the first two attempts fail
    control.ok("POST", f"/v1/organizations/{control.org_id}/policies", MASK)
    [pending] = control.services.store.list_webhook_deliveries(endpoint_id)
    assert pending.status is DeliveryStatus.PENDING and pending.event_type == "policy.changed"

    clock = HandWoundClock(utc_now())
    sealer = secret_sealer(control.services.keys)
    rng = random.Random(19)
    attempts = []
    for expected_status in (500, 503, 200):
        due = control.services.store.get_webhook_delivery(endpoint_id, pending.event_id)
        assert due is not None and due.next_attempt_at is not None
        clock.at = max(clock.at, due.next_attempt_at)
        before = clock.at
        after = deliver(control.services.store, sealer, endpoint_id, pending.event_id, options=local_options,
                        clock=clock, rng=rng)
        assert after is not None and after.status_code == expected_status
        attempts.append(after)
        if expected_status != 200:
            # Full jitter: the next attempt is somewhere in [now, now + base * 2^(n-1)].
            assert after.status is DeliveryStatus.PENDING and after.next_attempt_at is not None
            wait = (after.next_attempt_at - before).total_seconds()
            assert 0 <= wait <= backoff_ceiling(after.attempt)
            # Not due before its time: another pass sends nothing.
            assert deliver(control.services.store, sealer, endpoint_id, pending.event_id, options=local_options,
                           clock=clock) == after or wait == 0
    assert [attempt.attempt for attempt in attempts] == [1, 2, 3]
    assert attempts[-1].status is DeliveryStatus.DELIVERED and attempts[-1].next_attempt_at is None

    assert [request.status for request in receiver.received] == [500, 503, 200]
    assert all(request.verified for request in receiver.received)
    assert {request.headers["Hd-Webhook-Id"] for request in receiver.received} == {pending.event_id}
    body = json.loads(receiver.received[0].body)
    assert body["type"] == "policy.changed" and body["org_id"] == control.org_id and body["id"] == pending.event_id
    assert body["data"] == {"change": "created", "kind": "mask", "id": "mask_wh", "actor": control.owner_id,
                            "request_id": body["data"]["request_id"]}
    assert len({request.body for request in receiver.received}) == 1  # the same bytes every attempt

    log = control.ok("GET", f"{_hooks(control)}/{endpoint_id}/deliveries")
    assert [(entry["event_id"], entry["status"], entry["attempts"], entry["status_code"]) for entry in log] == [
        (pending.event_id, "delivered", 3, 200)]
    assert control.ok("GET", f"{_hooks(control)}/{endpoint_id}/deliveries?limit=1") == log


def test_a_tampered_or_stale_delivery_does_not_verify(receiver: WebhookReceiver) -> None:
    from hd_core.webhooks import signed_headers, verify_signature

    headers = signed_headers("whsec_a", "evt_1", 1_000_000, '{"a":1}')
    assert verify_signature("whsec_a", headers, '{"a":1}', now=1_000_100)
    assert verify_signature("whsec_a", {k.lower(): v for k, v in headers.items()}, b'{"a":1}', now=1_000_100)
    assert not verify_signature("whsec_b", headers, '{"a":1}', now=1_000_100)
    assert not verify_signature("whsec_a", headers, '{"a":2}', now=1_000_100)
    assert not verify_signature("whsec_a", headers, '{"a":1}', now=1_000_301)
    assert not verify_signature("whsec_a", {**headers, "Hd-Webhook-Timestamp": "1000001"}, '{"a":1}', now=1_000_100)


def test_admin_changes_emit_their_events_to_subscribed_endpoints_only(
    control: ControlApi, receiver: WebhookReceiver, local_options: DeliveryOptions
) -> None:
    org = f"/v1/organizations/{control.org_id}"
    everything = _create(control, receiver, ["user.role_changed", "jit.requested", "jit.approved", "key.revoked",
                                             "policy.changed"])
    only_keys = _create(control, receiver, ["key.revoked"])
    analyst = control.ok("POST", f"{org}/users", {"email": "wh@x.com", "role": "Analyst"})
    key = control.ok("POST", f"{org}/api-keys", {"user_id": analyst["user_id"], "scopes": ["read_only"]})
    request = control.ok("POST", f"{org}/jit-requests", {"role": "Developer", "reason": "incident 7",
                                                        "duration_seconds": 900}, key=key["api_key"])
    control.ok("POST", f"{org}/jit-requests/{request['request_id']}/approve", {"reason": "ok"})
    control.ok("PUT", f"{org}/users/{analyst['user_id']}/role", {"role": "Developer"})
    control.ok("DELETE", f"{org}/api-keys/{key['key']['key_id']}")
    control.ok("POST", f"{org}/policies", MASK)
    control.ok("PUT", f"{org}/policies/mask/mask_wh", {**MASK, "function": "full"})
    control.ok("DELETE", f"{org}/policies/mask/mask_wh")

    def events(endpoint: dict[str, object]) -> list[tuple[str, dict[str, object]]]:
        log = control.services.store.list_webhook_deliveries(str(endpoint["endpoint_id"]))
        return [(entry.event_type, json.loads(entry.body)["data"]) for entry in reversed(log)]

    got = events(everything)
    assert [kind for kind, _ in got] == ["jit.requested", "jit.approved", "user.role_changed", "key.revoked",
                                          "policy.changed", "policy.changed", "policy.changed"]
    assert got[0][1]["request_id"] == request["request_id"] and got[0][1]["status"] == "pending"
    assert got[1][1]["status"] == "approved" and got[1][1]["grant_id"]
    assert got[2][1] | {"request_id": None} == {"user_id": analyst["user_id"], "from_role": "Analyst",
                                                "to_role": "Developer", "actor": control.owner_id, "request_id": None}
    assert got[3][1]["key_id"] == key["key"]["key_id"] and got[3][1]["revoked_at"]
    assert [data["change"] for _, data in got[4:]] == ["created", "updated", "deleted"]
    assert [kind for kind, _ in events(only_keys)] == ["key.revoked"]
    assert all("key_hash" not in json.dumps(data) and key["api_key"] not in json.dumps(data) for _, data in got)


def test_create_and_delete_are_iam_events_without_the_secret(
    control: ControlApi, receiver: WebhookReceiver, local_options: DeliveryOptions
) -> None:
    created = _create(control, receiver, ["key.revoked"])
    endpoint_id = str(created["endpoint_id"])
    assert control.ok("DELETE", f"{_hooks(control)}/{endpoint_id}") == {"endpoint_id": endpoint_id, "deleted": True}
    assert control.ok("GET", _hooks(control)) == []
    assert control.call("DELETE", f"{_hooks(control)}/{endpoint_id}").status == 404
    assert control.call("GET", f"{_hooks(control)}/{endpoint_id}/deliveries").status == 404
    chain = control.services.store.list_iam_events(control.org_id)
    mine = [event for event in chain if event.target == endpoint_id]
    assert [event.event_type for event in mine] == ["webhook.created", "webhook.deleted"]
    assert mine[0].after is not None and mine[0].after["url"] == receiver.url()
    text = json.dumps([event.after for event in mine] + [event.before for event in mine])
    assert receiver.secret not in text and "hdsealed" not in text


def test_the_routes_need_webhooks_manage_and_stay_in_the_org(
    control: ControlApi, receiver: WebhookReceiver, local_options: DeliveryOptions
) -> None:
    org = f"/v1/organizations/{control.org_id}"
    analyst = control.ok("POST", f"{org}/users", {"email": "an@x.com", "role": "Analyst"})
    key = control.ok("POST", f"{org}/api-keys", {"user_id": analyst["user_id"], "scopes": ["read_only"]})
    refused = control.call("GET", _hooks(control), key=key["api_key"])
    assert refused.status == 403 and refused.json()["error"]["code"] == "HD_ERR_FORBIDDEN"
    assert control.call("POST", _hooks(control), {"url": receiver.url(), "events": ["key.revoked"]},
                        key=key["api_key"]).status == 403
    assert control.call("GET", "/v1/organizations/org_someoneelse/webhooks").status == 404
    unknown = control.call("POST", _hooks(control), {"url": receiver.url(), "events": ["key.stolen"]})
    assert unknown.status == 422


@pytest.mark.parametrize("url", [
    "http://hooks.example.com/",  # plain http off loopback
    "https://10.1.2.3/hook",  # private
    "https://169.254.169.254/latest/meta-data/",  # link-local: the instance metadata service
    "https://[fd00::1]/hook",  # IPv6 ULA
    "https://[::ffff:192.168.1.1]/hook",  # IPv4-mapped private
    "https://user:pw@127.0.0.1/hook",  # credentials in the URL
])
def test_unsafe_urls_are_refused_at_creation(control: ControlApi, url: str, local_options: DeliveryOptions) -> None:
    reply = control.call("POST", _hooks(control), {"url": url, "events": ["key.revoked"]})
    assert reply.status == 400, reply.body
    assert reply.json()["error"]["code"] == "HD_ERR_WEBHOOK_TARGET_REFUSED"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/hook", "https://127.0.0.1/a b", "https://hooks.tést/"])
def test_urls_the_document_excludes_are_422(control: ControlApi, url: str) -> None:
    assert control.call("POST", _hooks(control), {"url": url, "events": ["key.revoked"]}).status == 422


def test_loopback_is_refused_outside_local_mode(control: ControlApi, receiver: WebhookReceiver) -> None:
    previous = set_default_options(DeliveryOptions(local_mode=False, ca_file=str(receiver.cert_path)))
    try:
        reply = control.call("POST", _hooks(control), {"url": receiver.url(), "events": ["key.revoked"]})
    finally:
        set_default_options(previous)
    assert reply.status == 400 and "loopback" in reply.json()["error"]["message"]


def test_a_deleted_endpoint_fails_its_pending_deliveries_and_takes_no_new_events(
    control: ControlApi, receiver: WebhookReceiver, local_options: DeliveryOptions
) -> None:
    created = _create(control, receiver, ["policy.changed"])
    endpoint_id = str(created["endpoint_id"])
    control.ok("POST", f"/v1/organizations/{control.org_id}/policies", MASK)
    control.ok("DELETE", f"{_hooks(control)}/{endpoint_id}")
    control.ok("DELETE", f"/v1/organizations/{control.org_id}/policies/mask/mask_wh")
    [pending] = control.services.store.list_webhook_deliveries(endpoint_id)
    clock = HandWoundClock(utc_now() + CLAIM_LEASE)
    after = deliver(control.services.store, secret_sealer(control.services.keys), endpoint_id, pending.event_id,
                    options=local_options, clock=clock)
    assert after is not None and after.status is DeliveryStatus.FAILED and "deleted" in after.error
    assert receiver.received == []
