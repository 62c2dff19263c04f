"""The `WebhookStore` part of the `ControlStore` contract: endpoints and the delivery outbox, on every adapter."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from hd_core.errors import Conflict, NotFound
from hd_core.ports import ControlStore
from hd_core.webhook_models import DeliveryStatus, WebhookDelivery, WebhookEndpoint

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _endpoint(endpoint_id: str = "we_1", org_id: str = "org_1", created_at: datetime = T0) -> WebhookEndpoint:
    return WebhookEndpoint(
        endpoint_id=endpoint_id, org_id=org_id, url="https://hooks.example.test/hd", events=("policy.changed",
        "key.revoked"), secret_sealed="hdsealed:v1:abc:def", created_at=created_at, created_by="usr_admin",
        description="ops",
    )


def _delivery(event_id: str = "evt_1", endpoint_id: str = "we_1", created_at: datetime = T0) -> WebhookDelivery:
    return WebhookDelivery(
        endpoint_id=endpoint_id, event_id=event_id, org_id="org_1", event_type="policy.changed",
        body=json.dumps({"data": {}, "id": event_id}), status=DeliveryStatus.PENDING, created_at=created_at,
        next_attempt_at=created_at,
    )


def test_endpoints_round_trip_never_overwrite_and_update_only_what_exists(store: ControlStore) -> None:
    endpoint = _endpoint()
    store.put_webhook_endpoint(endpoint)
    assert store.get_webhook_endpoint("we_1") == endpoint
    assert store.get_webhook_endpoint("we_missing") is None
    with pytest.raises(Conflict):
        store.put_webhook_endpoint(replace(endpoint, url="https://elsewhere.test/"))
    disabled = replace(endpoint, disabled=True, disabled_at=T0 + timedelta(hours=1))
    store.update_webhook_endpoint(disabled)
    assert store.get_webhook_endpoint("we_1") == disabled
    with pytest.raises(NotFound):
        store.update_webhook_endpoint(_endpoint("we_missing"))


def test_endpoints_are_listed_per_org_oldest_first(store: ControlStore) -> None:
    later = _endpoint("we_b", created_at=T0 + timedelta(minutes=1))
    earlier = _endpoint("we_a")
    other = _endpoint("we_c", org_id="org_2")
    for endpoint in (later, other, earlier):
        store.put_webhook_endpoint(endpoint)
    assert store.list_webhook_endpoints("org_1") == [earlier, later]
    assert store.list_webhook_endpoints("org_2") == [other]
    assert store.list_webhook_endpoints("org_missing") == []


def test_a_delivery_is_recorded_once_per_endpoint_and_event(store: ControlStore) -> None:
    delivery = _delivery()
    store.put_webhook_delivery(delivery)
    assert store.get_webhook_delivery("we_1", "evt_1") == delivery
    assert store.get_webhook_delivery("we_1", "evt_missing") is None
    assert store.get_webhook_delivery("we_2", "evt_1") is None
    with pytest.raises(Conflict):
        store.put_webhook_delivery(replace(delivery, body="{}"))
    assert store.get_webhook_delivery("we_1", "evt_1") == delivery
    store.put_webhook_delivery(_delivery(endpoint_id="we_2"))  # the same event for another endpoint
    assert store.get_webhook_delivery("we_2", "evt_1") == _delivery(endpoint_id="we_2")


def test_a_delivery_attempt_is_claimed_by_exactly_one_worker(store: ControlStore) -> None:
    delivery = _delivery()
    store.put_webhook_delivery(delivery)
    claimed = replace(delivery, attempt=1, last_attempt_at=T0, next_attempt_at=T0 + timedelta(minutes=1))
    store.update_webhook_delivery(claimed, from_attempt=0)
    with pytest.raises(Conflict):
        store.update_webhook_delivery(replace(claimed, error="second worker"), from_attempt=0)
    assert store.get_webhook_delivery("we_1", "evt_1") == claimed
    with pytest.raises(NotFound):
        store.update_webhook_delivery(_delivery("evt_missing"), from_attempt=0)


def test_concurrent_claims_of_one_attempt_leave_one_winner(store: ControlStore) -> None:
    store.put_webhook_delivery(_delivery())
    wins: list[int] = []

    def claim(worker: int) -> None:
        try:
            store.update_webhook_delivery(replace(_delivery(), attempt=1, error=f"w{worker}"), from_attempt=0)
            wins.append(worker)
        except Conflict:
            pass

    threads = [threading.Thread(target=claim, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    stored = store.get_webhook_delivery("we_1", "evt_1")
    assert stored is not None and stored.error == f"w{wins[0]}"


def test_the_delivery_log_is_per_endpoint_newest_first_with_a_limit(store: ControlStore) -> None:
    deliveries = [_delivery(f"evt_{n}", created_at=T0 + timedelta(minutes=n)) for n in range(3)]
    for delivery in (deliveries[1], deliveries[0], deliveries[2], _delivery("evt_x", endpoint_id="we_2")):
        store.put_webhook_delivery(delivery)
    assert store.list_webhook_deliveries("we_1") == deliveries[::-1]
    assert store.list_webhook_deliveries("we_1", limit=2) == [deliveries[2], deliveries[1]]
    assert store.list_webhook_deliveries("we_missing") == []


def test_due_deliveries_are_pending_ones_whose_time_came_earliest_first(store: ControlStore) -> None:
    soon = replace(_delivery("evt_soon"), next_attempt_at=T0 + timedelta(seconds=30))
    now = replace(_delivery("evt_now"), next_attempt_at=T0)
    later = replace(_delivery("evt_later"), next_attempt_at=T0 + timedelta(hours=1))
    done = replace(_delivery("evt_done"), status=DeliveryStatus.DELIVERED, next_attempt_at=None, attempt=1,
                   status_code=200, delivered_at=T0)
    for delivery in (soon, later, now, done):
        store.put_webhook_delivery(delivery)
    assert store.due_webhook_deliveries(T0 + timedelta(minutes=1)) == [now, soon]
    assert store.due_webhook_deliveries(T0 + timedelta(minutes=1), limit=1) == [now]
    assert store.due_webhook_deliveries(T0 - timedelta(seconds=1)) == []
    failed = replace(later, status=DeliveryStatus.FAILED, next_attempt_at=None, attempt=9, error="gave up")
    store.update_webhook_delivery(failed, from_attempt=0)
    assert store.due_webhook_deliveries(T0 + timedelta(days=2)) == [now, soon]
    assert store.get_webhook_delivery("we_1", "evt_later") == failed
