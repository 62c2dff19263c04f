"""JIT Lambda: request, approve, deny, revoke and list time-bounded role elevations; grants expire by themselves."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import BaseModel, Field

from functions.shared.http import authorize, build_app, documented
from functions.shared.idempotency import RETRY_HELP, idempotent_create
from functions.shared.lambda_entry import lambda_entry
from functions.shared.request_fields import MultilineText, NonBlankMultilineText, PathId
from functions.shared.wiring import services
from hd_core import jit
from hd_core.models import ApiScope, JitRequest, JitStatus, Role

SERVICE = "hd-jit"

router = Router()
_MANAGE = ApiScope.USERS_MANAGE.value


# Elevation goes up to Admin at most (`hd_core.jit`): Owner is never offered.
ElevatableRole = Literal["Admin", "Developer", "Analyst", "ServiceAccount", "Auditor"]


class ElevationIn(BaseModel):
    role: ElevatableRole
    reason: NonBlankMultilineText = Field(min_length=1, max_length=1000)
    duration_seconds: int = Field(ge=60, le=8 * 3600)


class DecisionIn(BaseModel):
    reason: MultilineText = Field(default="", max_length=1000)


class JitRequestOut(BaseModel):
    request_id: str
    org_id: str
    user_id: str
    role: Role
    reason: str
    duration_seconds: int
    status: JitStatus
    requested_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str
    grant_id: str | None


def request_out(request: JitRequest) -> JitRequestOut:
    return JitRequestOut(
        request_id=request.request_id,
        org_id=request.org_id,
        user_id=request.user_id,
        role=request.role,
        reason=request.reason,
        duration_seconds=request.duration_seconds,
        status=request.status,
        requested_at=request.requested_at,
        decided_by=request.decided_by,
        decided_at=request.decided_at,
        decision_reason=request.decision_reason,
        grant_id=request.grant_id,
    )


@router.post("/v1/organizations/<org_id>/jit-requests", responses=documented(201, JitRequestOut, "The request"),
             description=RETRY_HELP)
@idempotent_create(router)
def request_elevation(org_id: PathId, body: ElevationIn) -> tuple[JitRequestOut, int]:
    ctx = authorize(router, org_id=org_id)
    svc = services()
    request = jit.request_elevation(
        svc.store,
        svc.trail,
        ctx,
        org_id=org_id,
        role=Role(body.role),
        reason=body.reason,
        duration_seconds=body.duration_seconds,
    )
    return request_out(request), 201


@router.get("/v1/organizations/<org_id>/jit-requests", responses=documented(200, list[JitRequestOut], "Requests"))
def list_requests(org_id: PathId, status: Annotated[JitStatus | None, Query()] = None) -> list[JitRequestOut]:
    ctx = authorize(router, org_id=org_id)
    return [request_out(item) for item in jit.list_requests(services().store, ctx, org_id, status=status)]


@router.post(
    "/v1/organizations/<org_id>/jit-requests/<request_id>/approve",
    responses=documented(200, JitRequestOut, "The approved request"),
)
def approve(org_id: PathId, request_id: PathId, body: DecisionIn) -> JitRequestOut:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    svc = services()
    return request_out(jit.approve(svc.store, svc.trail, ctx, org_id=org_id, request_id=request_id, reason=body.reason))


@router.post(
    "/v1/organizations/<org_id>/jit-requests/<request_id>/deny",
    responses=documented(200, JitRequestOut, "The denied request"),
)
def deny(org_id: PathId, request_id: PathId, body: DecisionIn) -> JitRequestOut:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    svc = services()
    return request_out(jit.deny(svc.store, svc.trail, ctx, org_id=org_id, request_id=request_id, reason=body.reason))


@router.post(
    "/v1/organizations/<org_id>/jit-requests/<request_id>/revoke",
    responses=documented(200, JitRequestOut, "The revoked request"),
    description="End an approved elevation before its expiry; engine hosts stop honouring it within about a "
    "second. The grantee may revoke their own; others need users:manage (and an Owner for Admin grants).",
)
def revoke(org_id: PathId, request_id: PathId, body: DecisionIn) -> JitRequestOut:
    ctx = authorize(router, org_id=org_id)
    svc = services()
    return request_out(jit.revoke(svc.store, svc.trail, ctx, org_id=org_id, request_id=request_id, reason=body.reason))


app = build_app(router, service=SERVICE)
lambda_handler = lambda_entry(app, SERVICE)
