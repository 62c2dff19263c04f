"""The webhook retry queue in AWS: SQS messages naming one delivery each, consumed by the delivery Lambda.

A message is `{"endpoint_id", "event_id"}`: the delivery itself (body, attempts, next time) lives in the
control store, so a duplicated or early message does no harm (`webhook_delivery.deliver` sends only a
due, pending delivery and claims its attempt first). SQS delays a message at most 15 minutes: a longer
wait is re-enqueued with the remaining delay when the early message arrives.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from hd_core.webhook_models import WebhookDelivery

MAX_DELAY_SECONDS = 900  # SQS DelaySeconds upper bound
QUEUE_URL_VARIABLE = "HD_WEBHOOK_QUEUE_URL"
_BATCH = 10  # SendMessageBatch takes at most ten entries


def delay_until(when: datetime | None, now: datetime) -> int:
    """Whole seconds from `now` to `when` (rounded up), clamped to [0, 900]: the next message's DelaySeconds."""
    if when is None:
        return 0
    return max(0, min(MAX_DELAY_SECONDS, math.ceil((when - now).total_seconds())))


def message_body(endpoint_id: str, event_id: str) -> str:
    return json.dumps({"endpoint_id": endpoint_id, "event_id": event_id}, sort_keys=True)


def parse_message(body: str) -> tuple[str, str]:
    """(endpoint_id, event_id) of a queue message; raises `ValueError` for anything else."""
    document = json.loads(body)
    endpoint_id, event_id = document.get("endpoint_id"), document.get("event_id")
    if not isinstance(endpoint_id, str) or not isinstance(event_id, str) or not endpoint_id or not event_id:
        raise ValueError("a webhook queue message names an endpoint_id and an event_id")
    return endpoint_id, event_id


class SqsWebhookQueue:
    """Enqueue deliveries on the webhook queue; usable as the `webhooks.emit` dispatcher."""

    def __init__(self, client: Any, queue_url: str) -> None:
        self._client = client
        self.queue_url = queue_url

    def __call__(self, deliveries: Sequence[WebhookDelivery]) -> None:
        """Announce freshly recorded deliveries (due now)."""
        for start in range(0, len(deliveries), _BATCH):
            chunk = deliveries[start:start + _BATCH]
            response = self._client.send_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(index), "MessageBody": message_body(item.endpoint_id, item.event_id)}
                    for index, item in enumerate(chunk)
                ],
            )
            if response.get("Failed"):
                raise RuntimeError(f"SQS refused {len(response['Failed'])} webhook messages")

    def enqueue(self, endpoint_id: str, event_id: str, delay_seconds: int) -> None:
        """One message for one delivery, visible after `delay_seconds` (clamped to SQS's 0..900)."""
        self._client.send_message(
            QueueUrl=self.queue_url,
            MessageBody=message_body(endpoint_id, event_id),
            DelaySeconds=max(0, min(MAX_DELAY_SECONDS, int(delay_seconds))),
        )


def queue_from_environment() -> SqsWebhookQueue | None:
    """The queue `HD_WEBHOOK_QUEUE_URL` names (boto3 client), or None where none is configured."""
    queue_url = os.environ.get(QUEUE_URL_VARIABLE, "").strip()
    if not queue_url:
        return None
    import boto3

    return SqsWebhookQueue(boto3.client("sqs"), queue_url)
