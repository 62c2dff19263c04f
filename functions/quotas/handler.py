"""Quotas Lambda: the monthly credit limit, max rows per query, and usage by user, agent or day."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import BaseModel, Field

from functions.shared.http import authorize, build_app, documented
from functions.shared.lambda_entry import lambda_entry
from functions.shared.request_fields import PathId
from functions.shared.wiring import services
from hd_core import quotas
from hd_core.models import ApiScope, utc_now
from hd_core.policies import QuotaLimit

SERVICE = "hd-quotas"

router = Router()
_BILLING = ApiScope.BILLING_MANAGE.value
_AUDIT = ApiScope.AUDIT_READ.value


class QuotaIn(BaseModel):
    monthly_credits: float | None = Field(default=None, ge=0)
    max_rows_per_query: int | None = Field(default=None, ge=1)
    statements_per_second: float | None = Field(default=None, gt=0)


class QuotaOut(BaseModel):
    org_id: str
    monthly_credits: float | None
    max_rows_per_query: int | None
    statements_per_second: float | None
    credits_used_this_month: float


class UsageRow(BaseModel):
    key: str | None = Field(description="The user id, agent id or ISO day the row sums")
    statements: int
    credits: float
    rows: int
    bytes: int


def quota_out(org_id: str, quota: QuotaLimit | None) -> QuotaOut:
    used = quotas.month_to_date_credits(services().store, org_id, now=utc_now())
    return QuotaOut(
        org_id=org_id,
        monthly_credits=quota.monthly_credits if quota else None,
        max_rows_per_query=quota.max_rows_per_query if quota else None,
        statements_per_second=quota.statements_per_second if quota else None,
        credits_used_this_month=used,
    )


@router.get("/v1/organizations/<org_id>/quota", responses=documented(200, QuotaOut, "The quota and its use"))
def get_quota(org_id: PathId) -> QuotaOut:
    ctx = authorize(router, org_id=org_id)
    return quota_out(org_id, quotas.get_quota(services().store, ctx, org_id))


@router.put("/v1/organizations/<org_id>/quota", responses=documented(200, QuotaOut, "The new quota"))
def set_quota(org_id: PathId, body: QuotaIn) -> QuotaOut:
    ctx = authorize(router, org_id=org_id, scope=_BILLING)
    svc = services()
    quota = quotas.set_quota(
        svc.store,
        svc.trail,
        ctx,
        org_id,
        monthly_credits=body.monthly_credits,
        max_rows_per_query=body.max_rows_per_query,
        statements_per_second=body.statements_per_second,
    )
    return quota_out(org_id, quota)


@router.get("/v1/organizations/<org_id>/usage", responses=documented(200, list[UsageRow], "Usage"))
def usage(
    org_id: PathId,
    start: Annotated[date, Query()],
    end: Annotated[date, Query()],
    group_by: Annotated[Literal["user", "agent", "day"], Query()] = "day",
) -> list[UsageRow]:
    ctx = authorize(router, org_id=org_id, scope=_AUDIT)
    rows = quotas.usage_report(services().store, ctx, org_id, start=start, end=end, group_by=group_by)
    field = quotas.GROUP_BY_FIELDS[group_by]
    return [UsageRow.model_validate({**row, "key": row[field]}) for row in rows]


app = build_app(router, service=SERVICE)
lambda_handler = lambda_entry(app, SERVICE)
