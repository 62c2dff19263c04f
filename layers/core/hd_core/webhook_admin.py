"""Managing an organisation's webhook endpoints: create (secret shown once), list, delete, and the delivery log.

The routes (functions/webhooks) need `webhooks:manage`; every create and delete is stored first and
then recorded in the organisation's IAM audit chain, without the secret. A URL passes the SSRF
guard at creation (`webhook_delivery.resolve_target`) and again at every attempt, since what a name
resolves to can change. Deleting an endpoint disables it: it takes no new events, pending deliveries
to it fail at their next attempt, and its stored deliveries age out with the log.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from hd_core.directory import require_own_org
from hd_core.errors import Conflict, InvalidRequest, NotFound
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import IamEventType
from hd_core.models import ChangeContext, new_id, utc_now
from hd_core.ports import ControlStore, KeyProvider
from hd_core.sealed_secrets import SecretSealer
from hd_core.webhook_delivery import DeliveryOptions, default_options, resolve_target
from hd_core.webhook_models import WebhookDelivery, WebhookEndpoint
from hd_core.webhooks import SECRET_PURPOSE, WebhookEventType, new_secret

MAX_ENDPOINTS_PER_ORG = 20
MAX_DESCRIPTION_LENGTH = 200
MAX_LOG_ENTRIES = 200


def secret_sealer(keys: KeyProvider) -> SecretSealer:
    """The sealer of endpoint secrets: the deployment's data keys, bound to `webhook-secret` and the endpoint id."""
    return SecretSealer(keys, purpose=SECRET_PURPOSE)


@dataclass(frozen=True)
class CreatedEndpoint:
    """A new endpoint and its signing secret in plaintext: the only time anyone sees it."""

    endpoint: WebhookEndpoint
    secret: str


def audit_view(endpoint: WebhookEndpoint) -> dict[str, object]:
    """What the IAM trail records of an endpoint: everything but its sealed secret."""
    return {
        "endpoint_id": endpoint.endpoint_id, "org_id": endpoint.org_id, "url": endpoint.url,
        "events": list(endpoint.events), "description": endpoint.description, "disabled": endpoint.disabled,
    }


def create_endpoint(
    store: ControlStore,
    trail: IamAuditTrail,
    keys: KeyProvider,
    ctx: ChangeContext,
    *,
    org_id: str,
    url: str,
    events: list[str],
    description: str = "",
    options: DeliveryOptions | None = None,
    now: datetime | None = None,
) -> CreatedEndpoint:
    """Register an endpoint for `events`; raises `InvalidRequest` (an unsafe URL too) or `Conflict` (too many)."""
    require_own_org(ctx, org_id)
    chosen = _events(events)
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidRequest(f"a description is at most {MAX_DESCRIPTION_LENGTH} characters")
    resolve_target(url, options or default_options())
    active = [endpoint for endpoint in store.list_webhook_endpoints(org_id) if not endpoint.disabled]
    if len(active) >= MAX_ENDPOINTS_PER_ORG:
        raise Conflict(f"an organisation has at most {MAX_ENDPOINTS_PER_ORG} webhook endpoints; delete one first")
    endpoint_id = new_id("whk")
    secret = new_secret()
    endpoint = WebhookEndpoint(
        endpoint_id=endpoint_id, org_id=org_id, url=url, events=chosen,
        secret_sealed=secret_sealer(keys).seal(endpoint_id, secret), created_at=now or utc_now(),
        created_by=ctx.actor.user_id, description=description,
    )
    store.put_webhook_endpoint(endpoint)
    trail.record(org_id, IamEventType.WEBHOOK_CREATED, actor=ctx.actor.user_id, target=endpoint_id, before=None,
                 after=audit_view(endpoint), request_id=ctx.request_id)
    return CreatedEndpoint(endpoint, secret)


def list_endpoints(store: ControlStore, ctx: ChangeContext, org_id: str) -> list[WebhookEndpoint]:
    """The organisation's endpoints that are not deleted, oldest first."""
    require_own_org(ctx, org_id)
    return [endpoint for endpoint in store.list_webhook_endpoints(org_id) if not endpoint.disabled]


def get_endpoint(store: ControlStore, ctx: ChangeContext, org_id: str, endpoint_id: str) -> WebhookEndpoint:
    """One live endpoint of the caller's organisation; another org's, a deleted or a made-up one is `NotFound`."""
    require_own_org(ctx, org_id)
    endpoint = store.get_webhook_endpoint(endpoint_id)
    if endpoint is None or endpoint.org_id != org_id or endpoint.disabled:
        raise NotFound("webhook endpoint not found")
    return endpoint


def delete_endpoint(
    store: ControlStore, trail: IamAuditTrail, ctx: ChangeContext, org_id: str, endpoint_id: str,
    *, now: datetime | None = None,
) -> WebhookEndpoint:
    """Disable an endpoint for good (it takes no more events, pending deliveries fail); returns it as stored."""
    endpoint = get_endpoint(store, ctx, org_id, endpoint_id)
    deleted = replace(endpoint, disabled=True, disabled_at=now or utc_now())
    store.update_webhook_endpoint(deleted)
    trail.record(org_id, IamEventType.WEBHOOK_DELETED, actor=ctx.actor.user_id, target=endpoint_id,
                 before=audit_view(endpoint), after=None, request_id=ctx.request_id)
    return deleted


def delivery_log(
    store: ControlStore, ctx: ChangeContext, org_id: str, endpoint_id: str, *, limit: int = 50
) -> list[WebhookDelivery]:
    """The endpoint's deliveries, newest first, at most `limit` (1..200)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LOG_ENTRIES:
        raise InvalidRequest(f"limit is between 1 and {MAX_LOG_ENTRIES}")
    get_endpoint(store, ctx, org_id, endpoint_id)
    return store.list_webhook_deliveries(endpoint_id, limit)


def _events(events: list[str]) -> tuple[str, ...]:
    if not isinstance(events, list | tuple) or not events:
        raise InvalidRequest("name at least one event to subscribe to")
    known = {kind.value for kind in WebhookEventType}
    unknown = [event for event in events if event not in known]
    if unknown:
        raise InvalidRequest(f"unknown webhook events {unknown}; known: {', '.join(sorted(known))}")
    return tuple(dict.fromkeys(events))
