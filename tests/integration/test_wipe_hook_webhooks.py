"""The wipe hook Lambda announces `instance.wiped` / `instance.wipe_failed` to the organisations its fleet served.

Same world as tests/integration/test_wipe_hook.py (moto SSM, stubbed Auto Scaling, a local control store).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from botocore.stub import Stubber

from hd_core.adapters.aws_lifecycle import AutoScalingLifecycle, SsmRunCommand
from hd_core.control_settings import settings
from hd_core.models import Organization, OrgStatus, utc_now
from hd_core.services import ControlServices
from hd_core.webhook_admin import secret_sealer
from hd_core.webhook_events import instance_wipe
from hd_core.webhook_models import DeliveryStatus, WebhookEndpoint
from hd_core.wipe import DEPLOYMENT_CHAIN_ID, WipeFailed
from tests.integration import test_wipe_hook as wipe_world
from tests.integration.test_wipe_hook import HOOK, INSTANCE, FakeContext, create_erase_document, lifecycle_event

# The same fixtures (moto, and services over a local store installed for the Lambda), by name.
aws = wipe_world.aws
control = wipe_world.control

WIPE_EVENTS = ("instance.wiped", "instance.wipe_failed")


@pytest.fixture
def orgs(control: ControlServices) -> list[str]:
    """Two organisations, each with an endpoint subscribed to the wipe events, and one endpoint that is not."""
    ids = ["org_a", "org_b"]
    for org_id in ids:
        control.store.put_org(Organization(org_id=org_id, name=org_id, status=OrgStatus.ACTIVE, created_at=utc_now()))
        _subscribe(control, org_id, f"whk_{org_id}", WIPE_EVENTS)
    _subscribe(control, "org_a", "whk_keys_only", ("key.revoked",))
    return ids


def _subscribe(control: ControlServices, org_id: str, endpoint_id: str, events: tuple[str, ...]) -> None:
    control.store.put_webhook_endpoint(WebhookEndpoint(
        endpoint_id=endpoint_id, org_id=org_id, url="https://hooks.example.com/hd", events=events,
        secret_sealed=secret_sealer(control.keys).seal(endpoint_id, "whsec_test"), created_at=utc_now(),
        created_by="usr_1",
    ))


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    settings.cache_clear()
    yield
    settings.cache_clear()


def _wipe_once(control: ControlServices, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    from functions.wipe_hook import handler

    autoscaling = boto3.client("autoscaling")
    ssm = boto3.client("ssm")
    commands = SsmRunCommand(ssm, erase_document=create_erase_document(ssm))
    monkeypatch.setattr(handler, "instance_control", lambda: (commands, AutoScalingLifecycle(autoscaling)))
    with Stubber(autoscaling) as stub:
        stub.add_response("record_lifecycle_action_heartbeat", {}, HOOK)
        stub.add_response("complete_lifecycle_action", {}, {**HOOK, "LifecycleActionResult": "CONTINUE"})
        result: dict[str, object] = handler.lambda_handler(lifecycle_event(), FakeContext())
    return result


def test_a_wipe_is_announced_once_to_every_organisation_of_the_deployment(
    control: ControlServices, orgs: list[str], monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    from functions.wipe_hook import handler

    monkeypatch.delenv("HD_FLEET_ORG_ID", raising=False)
    result = _wipe_once(control, monkeypatch)
    assert result["status"] == "wiped"
    # A duplicate EventBridge delivery finds the wipe done and records nothing, nor does announcing it again.
    assert handler.lambda_handler(lifecycle_event(), FakeContext())["status"] == "already_wiped"
    [recorded] = control.store.list_iam_events(DEPLOYMENT_CHAIN_ID)
    instance_wipe(control.store, orgs, recorded)
    event_ids = set()
    for org_id in orgs:
        [delivery] = control.store.list_webhook_deliveries(f"whk_{org_id}")
        assert (delivery.event_type, delivery.org_id, delivery.status) == ("instance.wiped", org_id,
                                                                           DeliveryStatus.PENDING)
        body = json.loads(delivery.body)
        assert body["data"] == {"instance_id": INSTANCE, "command_id": result["command_id"],
                                "device": "/dev/nvme1n1", "request_id": "req-wipe-1"}
        event_ids.add(delivery.event_id)
    assert len(event_ids) == 2
    assert control.store.list_webhook_deliveries("whk_keys_only") == []


def test_with_hd_fleet_org_id_only_that_organisation_is_told(
    control: ControlServices, orgs: list[str], monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    monkeypatch.setenv("HD_FLEET_ORG_ID", "org_b")
    assert _wipe_once(control, monkeypatch)["status"] == "wiped"
    assert control.store.list_webhook_deliveries("whk_org_a") == []
    [delivery] = control.store.list_webhook_deliveries("whk_org_b")
    assert delivery.event_type == "instance.wiped"


def test_a_failed_wipe_is_announced_with_its_state_but_not_its_output(
    control: ControlServices, orgs: list[str], monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    from functions.wipe_hook import handler

    monkeypatch.delenv("HD_FLEET_ORG_ID", raising=False)
    autoscaling = boto3.client("autoscaling")
    ssm = boto3.client("ssm")
    monkeypatch.setattr(handler, "instance_control", lambda: (SsmRunCommand(ssm), AutoScalingLifecycle(autoscaling)))
    with Stubber(autoscaling), Stubber(ssm) as ssm_stub, pytest.raises(WipeFailed):
        ssm_stub.add_client_error("send_command", service_error_code="InvalidInstanceId")
        handler.lambda_handler(lifecycle_event(), FakeContext())
    for org_id in orgs:
        [delivery] = control.store.list_webhook_deliveries(f"whk_{org_id}")
        assert delivery.event_type == "instance.wipe_failed"
        assert json.loads(delivery.body)["data"] == {"instance_id": INSTANCE, "command_id": None,
                                                     "device": "/dev/nvme1n1", "request_id": "req-wipe-1",
                                                     "state": "Failed"}


def test_a_store_that_cannot_take_the_announcement_does_not_fail_the_wipe(
    control: ControlServices, orgs: list[str], monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    def refuse(*_: object) -> None:
        raise RuntimeError("store unavailable")

    monkeypatch.setattr(control.store, "put_webhook_delivery", refuse)
    assert _wipe_once(control, monkeypatch)["status"] == "wiped"  # continued: the lifecycle stub saw CONTINUE
    assert [e.event_type for e in control.store.list_iam_events(DEPLOYMENT_CHAIN_ID)] == ["instance.wiped"]
