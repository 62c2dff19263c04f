"""Webhook delivery Lambda: consumes the SQS retry queue, one attempt per message; sweeps on a schedule.

An SQS message names a delivery (`hd_core.webhook_sqs`); the attempt is `webhook_delivery.deliver`,
the same function `hd dev`'s delivery thread runs. A delivery still pending afterwards is re-enqueued
with the delay to its next attempt (at most 900 s per message: a longer wait takes several hops);
a message that arrives early is re-enqueued for the rest of its wait. A message whose handling
raises is reported as a batch item failure, so SQS redelivers it and, after the queue's receive
limit, moves it to the dead-letter queue (alarmed on). A delivery that exhausts its 24 hours is
`failed` in the store (the delivery log shows it).

An EventBridge-scheduled invocation (no `Records`) re-enqueues every due pending delivery: the
safety net for deliveries whose first message was never sent.

The region pin holds here as in every other function: while the control table, audit bucket or a key
is outside the pinned region, an invocation fails before reading a delivery (SQS keeps the messages,
then dead-letters them: alarmed), so no event leaves from data kept outside it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from functions.shared.lambda_entry import function_logger
from functions.shared.wiring import require_region_pin, services
from hd_core.models import utc_now
from hd_core.region_pinning import RegionMismatch
from hd_core.webhook_admin import secret_sealer
from hd_core.webhook_delivery import DeliveryOptions, deliver
from hd_core.webhook_models import DeliveryStatus
from hd_core.webhook_sqs import SqsWebhookQueue, delay_until, parse_message, queue_from_environment

SERVICE = "hd-webhook-delivery"

logger = function_logger(SERVICE)


def handle_event(
    event: dict[str, Any],
    *,
    queue: SqsWebhookQueue,
    clock: Callable[[], datetime] = utc_now,
    options: DeliveryOptions | None = None,
    **deliver_kwargs: Any,
) -> dict[str, Any]:
    """Handle one SQS batch (or a scheduled sweep); returns the partial-batch response."""
    svc = services()
    records = event.get("Records")
    if records is None:
        return {"requeued": _sweep(queue, clock)}
    sealer = secret_sealer(svc.keys)
    failures: list[dict[str, str]] = []
    for record in records:
        message_id = str(record.get("messageId", ""))
        try:
            endpoint_id, event_id = parse_message(str(record.get("body", "")))
        except ValueError:
            logger.error("dropping a malformed webhook queue message", extra={"message_id": message_id})
            continue  # retrying cannot fix it
        try:
            after = deliver(svc.store, sealer, endpoint_id, event_id, options=options, clock=clock,
                            **deliver_kwargs)
            if after is not None and after.status is DeliveryStatus.PENDING:
                queue.enqueue(endpoint_id, event_id, delay_until(after.next_attempt_at, clock()))
        except Exception:  # SQS redelivers this message; the others are done
            logger.exception("webhook delivery failed", extra={"message_id": message_id})
            failures.append({"itemIdentifier": message_id})
    return {"batchItemFailures": failures}


def _sweep(queue: SqsWebhookQueue, clock: Callable[[], datetime]) -> int:
    due = services().store.due_webhook_deliveries(clock(), limit=500)
    for delivery in due:
        queue.enqueue(delivery.endpoint_id, delivery.event_id, 0)
    return len(due)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        require_region_pin()
    except RegionMismatch as refused:
        logger.error("webhook delivery refused: region pin", extra={
            "code": refused.code, "region": refused.region, "differences": list(refused.differences)})
        raise
    queue = queue_from_environment()
    if queue is None:
        raise RuntimeError("HD_WEBHOOK_QUEUE_URL is not set: the delivery function needs its queue")
    return handle_event(event, queue=queue)
