"""Webhooks Lambda: register, list and delete an organisation's signed webhook endpoints, and read their delivery log.

Every route needs `webhooks:manage` (Owners and Admins). A new endpoint's signing secret is in the
create answer only; receivers check deliveries with `hd_core.webhooks.verify_signature` (README,
Webhooks). Deliveries themselves are sent by functions/webhooks/delivery.py (SQS) or, in `hd dev`,
by the control server's delivery thread.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import BaseModel, Field

from functions.shared.http import authorize, build_app, documented
from functions.shared.idempotency import RETRY_HELP, idempotent_create
from functions.shared.lambda_entry import lambda_entry
from functions.shared.request_fields import MultilineText, PathId
from functions.shared.wiring import services
from hd_core import webhook_admin
from hd_core.models import ApiScope
from hd_core.webhook_models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from hd_core.webhooks import WebhookEventType

SERVICE = "hd-webhooks"

router = Router()
_MANAGE = ApiScope.WEBHOOKS_MANAGE.value


class EndpointIn(BaseModel):
    url: str = Field(min_length=8, max_length=2048, pattern=r"^[hH][tT][tT][pP][sS]?://[!-~]+$",
                     description="https URL (plain http only to loopback in hd dev); its host must resolve to "
                     "public addresses only")
    events: list[WebhookEventType] = Field(min_length=1, max_length=len(WebhookEventType))
    description: MultilineText = Field(default="", max_length=webhook_admin.MAX_DESCRIPTION_LENGTH)


class EndpointOut(BaseModel):
    endpoint_id: str
    org_id: str
    url: str
    events: list[str]
    description: str
    created_at: datetime
    created_by: str


class CreatedEndpointOut(EndpointOut):
    secret: str = Field(description="The signing secret, shown this once: store it with the receiver")


class DeletedEndpointOut(BaseModel):
    endpoint_id: str
    deleted: bool


class DeliveryOut(BaseModel):
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    status_code: int | None
    error: str
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None


def endpoint_out(endpoint: WebhookEndpoint) -> EndpointOut:
    return EndpointOut(
        endpoint_id=endpoint.endpoint_id, org_id=endpoint.org_id, url=endpoint.url, events=list(endpoint.events),
        description=endpoint.description, created_at=endpoint.created_at, created_by=endpoint.created_by,
    )


def delivery_out(delivery: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        event_id=delivery.event_id, event_type=delivery.event_type, status=delivery.status,
        attempts=delivery.attempt, status_code=delivery.status_code, error=delivery.error,
        created_at=delivery.created_at, last_attempt_at=delivery.last_attempt_at,
        next_attempt_at=delivery.next_attempt_at, delivered_at=delivery.delivered_at,
    )


@router.post("/v1/organizations/<org_id>/webhooks",
             responses=documented(201, CreatedEndpointOut, "The new endpoint and its secret (shown once)"),
             description=RETRY_HELP)
@idempotent_create(router)
def create_webhook(org_id: PathId, body: EndpointIn) -> tuple[CreatedEndpointOut, int]:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    svc = services()
    created = webhook_admin.create_endpoint(
        svc.store, svc.trail, svc.keys, ctx, org_id=org_id, url=body.url,
        events=[event.value for event in body.events], description=body.description,
    )
    return CreatedEndpointOut(**endpoint_out(created.endpoint).model_dump(), secret=created.secret), 201


@router.get("/v1/organizations/<org_id>/webhooks", responses=documented(200, list[EndpointOut], "Endpoints"))
def list_webhooks(org_id: PathId) -> list[EndpointOut]:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    return [endpoint_out(item) for item in webhook_admin.list_endpoints(services().store, ctx, org_id)]


@router.delete("/v1/organizations/<org_id>/webhooks/<endpoint_id>",
               responses=documented(200, DeletedEndpointOut, "Deleted"))
def delete_webhook(org_id: PathId, endpoint_id: PathId) -> DeletedEndpointOut:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    svc = services()
    webhook_admin.delete_endpoint(svc.store, svc.trail, ctx, org_id, endpoint_id)
    return DeletedEndpointOut(endpoint_id=endpoint_id, deleted=True)


@router.get("/v1/organizations/<org_id>/webhooks/<endpoint_id>/deliveries",
            responses=documented(200, list[DeliveryOut], "Deliveries, newest first"))
def list_deliveries(
    org_id: PathId,
    endpoint_id: PathId,
    limit: Annotated[int, Query(ge=1, le=webhook_admin.MAX_LOG_ENTRIES)] = 50,
) -> list[DeliveryOut]:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    log = webhook_admin.delivery_log(services().store, ctx, org_id, endpoint_id, limit=limit)
    return [delivery_out(item) for item in log]


app = build_app(router, service=SERVICE)
lambda_handler = lambda_entry(app, SERVICE)
