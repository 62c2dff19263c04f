"""Webhook endpoints and their deliveries: the entities `hd_core.webhooks` keeps in the control store.

An endpoint's signing secret is stored sealed (`sealed_secrets`, purpose `webhook-secret`, bound to the
endpoint id); its plaintext is shown once, in the answer that created it. A delivery is one event for
one endpoint: the outbox row written before any request is made, then updated by every attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from hd_core.records import RecordCodec


class DeliveryStatus(StrEnum):
    """Where a delivery stands: waiting for its next attempt, done, or given up after 24 hours (dead letter)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class WebhookEndpoint:
    """A URL an organisation's events are POSTed to, signed with the endpoint's own secret."""

    endpoint_id: str
    org_id: str
    url: str
    events: tuple[str, ...]
    secret_sealed: str
    created_at: datetime
    created_by: str
    description: str = ""
    disabled: bool = False
    disabled_at: datetime | None = None


@dataclass(frozen=True)
class WebhookDelivery:
    """One event for one endpoint: its exact body (signed as stored) and the outcome of its attempts so far.

    `attempt` counts attempts started; `next_attempt_at` is when the next may start (None once
    delivered or failed); `status_code`/`error` describe the last attempt.
    """

    endpoint_id: str
    event_id: str
    org_id: str
    event_type: str
    body: str
    status: DeliveryStatus
    created_at: datetime
    attempt: int = 0
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    status_code: int | None = None
    error: str = ""
    delivered_at: datetime | None = None


WEBHOOK_ENDPOINTS = RecordCodec(WebhookEndpoint)
WEBHOOK_DELIVERIES = RecordCodec(WebhookDelivery)
