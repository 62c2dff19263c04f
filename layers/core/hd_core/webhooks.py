"""Signed webhooks: the events an organisation can subscribe to, `emit`, and the signature scheme.

`emit` is the one way any part of Hardened Duck announces an event: it writes one delivery per
subscribed, enabled endpoint of the organisation into the control store (an outbox: durable before
any request is made) and only then nudges the dispatcher (the SQS queue in AWS, the delivery thread
in `hd dev`). Delivery is at-least-once: a receiver de-duplicates on the event id, which is also the
`Hd-Webhook-Id` header. Emitting the same `event_id` twice records nothing new.

A delivery is a POST with the JSON body `{"id", "type", "created", "org_id", "data"}` and the headers

    Hd-Webhook-Id:         the event id
    Hd-Webhook-Timestamp:  Unix seconds of this attempt
    Hd-Webhook-Signature:  v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>

(the Stripe/Svix scheme); `verify_signature` is the receiver's check. Sending, retries and the SSRF
guard live in `hd_core.webhook_delivery`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from hd_core.errors import Conflict, InvalidRequest
from hd_core.models import utc_now
from hd_core.records import encode_time
from hd_core.webhook_models import DeliveryStatus, WebhookDelivery

if TYPE_CHECKING:
    from hd_core.ports import ControlStore

_log = logging.getLogger(__name__)

ID_HEADER = "Hd-Webhook-Id"
TIMESTAMP_HEADER = "Hd-Webhook-Timestamp"
SIGNATURE_HEADER = "Hd-Webhook-Signature"
SIGNATURE_VERSION = "v1"
SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix of generated secrets, not a secret)
SECRET_PURPOSE = "webhook-secret"  # noqa: S105 (the sealing purpose, not a secret)


class WebhookEventType(StrEnum):
    """The events an endpoint can subscribe to."""

    KEY_EXPIRING = "key.expiring"
    KEY_ROTATED = "key.rotated"
    KEY_REVOKED = "key.revoked"
    KEY_EXPIRED = "key.expired"
    POLICY_CHANGED = "policy.changed"
    USER_ROLE_CHANGED = "user.role_changed"
    JIT_REQUESTED = "jit.requested"
    JIT_APPROVED = "jit.approved"
    INSTANCE_WIPED = "instance.wiped"
    INSTANCE_WIPE_FAILED = "instance.wipe_failed"
    AUDIT_CHAIN_BROKEN = "audit.chain_broken"


# Called with the deliveries `emit` just recorded, after they are durable (see `set_dispatcher`).
Dispatcher = Callable[[Sequence[WebhookDelivery]], None]
_dispatcher: Dispatcher | None = None
_dispatcher_lock = threading.Lock()


def set_dispatcher(dispatcher: Dispatcher | None) -> Dispatcher | None:
    """Install what hears about new deliveries in this process (SQS in AWS, the local thread); returns the previous.

    Without one, deliveries still wait in the store for whoever delivers due ones. A dispatcher that
    fails loses nothing either: the delivery stays due.
    """
    global _dispatcher
    with _dispatcher_lock:
        previous, _dispatcher = _dispatcher, dispatcher
    return previous


_from_environment_checked = False


def _current_dispatcher() -> Dispatcher | None:
    """The installed dispatcher; in a Lambda without one, the SQS queue `HD_WEBHOOK_QUEUE_URL` names (built once)."""
    global _dispatcher, _from_environment_checked
    with _dispatcher_lock:
        if _dispatcher is None and not _from_environment_checked:
            _from_environment_checked = True
            from hd_core.webhook_sqs import queue_from_environment

            _dispatcher = queue_from_environment()
        return _dispatcher


def new_event_id() -> str:
    """A fresh event id (`evt_` and 128 random bits)."""
    return "evt_" + secrets.token_hex(16)


def new_secret() -> str:
    """A fresh endpoint signing secret (`whsec_` and 256 random bits, URL-safe base64)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def event_body(event_id: str, event_type: str, org_id: str, data: Mapping[str, Any], created: datetime) -> str:
    """The exact JSON text POSTed (and signed) for an event: compact, keys sorted."""
    document = {"id": event_id, "type": event_type, "created": encode_time(created), "org_id": org_id,
                "data": dict(data)}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def emit(
    services_or_store: Any,
    org_id: str,
    event_type: WebhookEventType | str,
    data: Mapping[str, Any],
    *,
    event_id: str | None = None,
    now: datetime | None = None,
) -> str:
    """Record `event_type` for every enabled endpoint of `org_id` subscribed to it; returns the event id.

    `services_or_store` is a `ControlServices` (its `.store` is used) or a `ControlStore`. The
    deliveries are written before the dispatcher hears of them; a repeated `event_id` (a retried
    caller) adds nothing for endpoints that already have it. Raises `InvalidRequest` for an unknown
    event type or data that is not JSON.
    """
    store: ControlStore = getattr(services_or_store, "store", services_or_store)
    kind = _event_type(event_type)
    at = now or utc_now()
    ident = event_id or new_event_id()
    try:
        body = event_body(ident, kind.value, org_id, data, at)
    except (TypeError, ValueError) as error:
        raise InvalidRequest(f"webhook event data must be JSON: {error}") from None
    recorded: list[WebhookDelivery] = []
    for endpoint in store.list_webhook_endpoints(org_id):
        if endpoint.disabled or kind.value not in endpoint.events:
            continue
        delivery = WebhookDelivery(
            endpoint_id=endpoint.endpoint_id, event_id=ident, org_id=org_id, event_type=kind.value, body=body,
            status=DeliveryStatus.PENDING, created_at=at, next_attempt_at=at,
        )
        try:
            store.put_webhook_delivery(delivery)
        except Conflict:
            continue  # this event was already recorded for this endpoint: at-least-once, not twice
        recorded.append(delivery)
    dispatcher = _current_dispatcher()
    if recorded and dispatcher is not None:
        try:
            dispatcher(recorded)
        except Exception:  # noqa: BLE001 - the deliveries are durable and due: whoever delivers due ones sends them
            _log.exception("webhook dispatcher failed; %d deliveries wait in the store", len(recorded))
    return ident


def sign(secret: str, timestamp: int, body: str | bytes) -> str:
    """The `Hd-Webhook-Signature` value of `body` sent at `timestamp`: `v1=<hex HMAC-SHA256>`."""
    payload = body.encode("utf-8") if isinstance(body, str) else body
    digest = hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + payload, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={digest.hexdigest()}"


def signed_headers(secret: str, event_id: str, timestamp: int, body: str) -> dict[str, str]:
    """Every header of one delivery attempt (content type, id, timestamp, signature)."""
    return {
        "Content-Type": "application/json",
        ID_HEADER: event_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: str | bytes,
    tolerance: int = 300,
    *,
    now: float | None = None,
) -> bool:
    """Whether a received webhook is authentic and fresh: the receiver's check.

    True only if the timestamp is within `tolerance` seconds of now and one of the `v1=` signatures
    (several may be sent, space-separated) matches, compared in constant time. Header names are
    matched case-insensitively. Use the raw body bytes as received, not re-serialised JSON.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    timestamp_text = lowered.get(TIMESTAMP_HEADER.lower(), "")
    signatures = lowered.get(SIGNATURE_HEADER.lower(), "")
    try:
        timestamp = int(timestamp_text)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures.split())


def _event_type(event_type: WebhookEventType | str) -> WebhookEventType:
    try:
        return WebhookEventType(event_type)
    except ValueError:
        raise InvalidRequest(f"unknown webhook event type {event_type!r}") from None
