"""The wipe hook Lambda hands its `instance.wiped` deliveries to the webhook queue at once (issue 19).

Without HD_WEBHOOK_QUEUE_URL its deliveries wait in the store for the delivery Lambda's next sweep (up to
five minutes); with it (cdk/hd_cdk/wipe_hook.py `announce_on`) each is a message on the queue as soon as
it is recorded. Same world as tests/integration/test_wipe_hook_webhooks.py, with a moto SQS queue.
"""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from hd_core import webhooks
from hd_core.services import ControlServices
from hd_core.webhook_sqs import QUEUE_URL_VARIABLE, parse_message
from tests.integration import test_wipe_hook as wipe_world
from tests.integration import test_wipe_hook_webhooks as announce_world

aws = wipe_world.aws
control = wipe_world.control
orgs = announce_world.orgs
fresh_settings = announce_world.fresh_settings


@pytest.fixture
def fresh_dispatcher(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A cold Lambda container: the dispatcher is built from the environment on the first emit."""
    previous = webhooks.set_dispatcher(None)
    monkeypatch.setattr(webhooks, "_from_environment_checked", False)
    yield
    webhooks.set_dispatcher(previous)


def test_with_the_queue_each_wipe_delivery_is_enqueued_as_it_is_recorded(
    control: ControlServices, orgs: list[str], monkeypatch: pytest.MonkeyPatch, fresh_settings: None,
    fresh_dispatcher: None,
) -> None:
    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName="hd-webhooks")["QueueUrl"]
    monkeypatch.setenv(QUEUE_URL_VARIABLE, queue_url)
    monkeypatch.delenv("HD_FLEET_ORG_ID", raising=False)
    assert announce_world._wipe_once(control, monkeypatch)["status"] == "wiped"
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    enqueued = sorted(parse_message(message["Body"]) for message in messages)
    recorded = sorted((d.endpoint_id, d.event_id) for org_id in orgs
                      for d in control.store.list_webhook_deliveries(f"whk_{org_id}"))
    assert len(recorded) == 2 and enqueued == recorded


def test_without_the_queue_the_deliveries_wait_in_the_store(
    control: ControlServices, orgs: list[str], monkeypatch: pytest.MonkeyPatch, fresh_settings: None,
    fresh_dispatcher: None,
) -> None:
    monkeypatch.delenv(QUEUE_URL_VARIABLE, raising=False)
    monkeypatch.delenv("HD_FLEET_ORG_ID", raising=False)
    assert announce_world._wipe_once(control, monkeypatch)["status"] == "wiped"
    assert all(len(control.store.list_webhook_deliveries(f"whk_{org_id}")) == 1 for org_id in orgs)
