"""verify-chain announces a break as `audit.chain_broken`, once per break however often it is verified again."""

from __future__ import annotations

import json
from pathlib import Path

from hd_core.models import utc_now
from hd_core.webhook_admin import secret_sealer
from hd_core.webhook_events import chain_broken_event_id
from hd_core.webhook_models import DeliveryStatus, WebhookEndpoint
from tests.integration.functions.conftest import ControlApi
from tests.integration.functions.test_audit_routes import _guarded, _invite


def _subscribe(control: ControlApi, endpoint_id: str, events: tuple[str, ...]) -> None:
    # Straight into the store: these tests are about what verify-chain records, not about URL checks at creation.
    control.services.store.put_webhook_endpoint(WebhookEndpoint(
        endpoint_id=endpoint_id, org_id=control.org_id, url="https://hooks.example.com/hd", events=events,
        secret_sealed=secret_sealer(control.services.keys).seal(endpoint_id, "whsec_test"), created_at=utc_now(),
        created_by=control.owner_id,
    ))


def _verify(control: ControlApi) -> dict[str, object]:
    return control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin/verify-chain")


def test_a_break_is_recorded_once_for_the_subscribed_endpoint_with_where_and_how(
    control: ControlApi, tmp_path: Path
) -> None:
    evidence = _guarded(control, tmp_path)
    _subscribe(control, "whk_chain", ("audit.chain_broken",))
    _subscribe(control, "whk_other", ("key.revoked",))
    _invite(control, 3)
    assert _verify(control)["chain_valid"] is True
    assert control.services.store.list_webhook_deliveries("whk_chain") == []  # a valid chain announces nothing
    evidence.cut_events_after(2)
    for _ in range(3):  # verifying the same broken chain again sends nothing new
        assert _verify(control)["chain_valid"] is False
    [delivery] = control.services.store.list_webhook_deliveries("whk_chain")
    assert delivery.event_id == chain_broken_event_id(control.org_id, 3)
    assert (delivery.event_type, delivery.org_id, delivery.status) == (
        "audit.chain_broken", control.org_id, DeliveryStatus.PENDING)
    body = json.loads(delivery.body)
    assert (body["id"], body["type"], body["org_id"]) == (delivery.event_id, "audit.chain_broken", control.org_id)
    data = body["data"]
    assert (data["chain_id"], data["position"], data["kind"], data["entry_count"]) == (
        control.org_id, 3, "truncated", 2)
    assert control.services.store.list_webhook_deliveries("whk_other") == []


def test_a_break_further_back_is_a_new_event(control: ControlApi, tmp_path: Path) -> None:
    evidence = _guarded(control, tmp_path)
    _subscribe(control, "whk_chain", ("audit.chain_broken",))
    _invite(control, 4)
    evidence.cut_events_after(3)
    _verify(control)
    evidence.cut_events_after(1)
    _verify(control)
    _verify(control)
    ids = sorted(d.event_id for d in control.services.store.list_webhook_deliveries("whk_chain"))
    assert ids == sorted([chain_broken_event_id(control.org_id, 4), chain_broken_event_id(control.org_id, 2)])
