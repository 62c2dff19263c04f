"""An organisation's quota (monthly credits, rows per query, statement rate) and its usage reports.

The quota is the organisation's single `QuotaLimit` policy object, stored under the stable id
`quota_<org_id>` so every change replaces it (and bumps the policy version the engine hosts
watch). Setting it is a billing decision: it takes the `billing:manage` scope, which only Owners
hold. The change is stored first, then recorded in the IAM audit chain as QUOTA_CHANGED.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from hd_core.directory import get_org_in_scope, require_own_org
from hd_core.errors import Forbidden, InvalidRequest
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import IamEventType
from hd_core.metering import CREDIT_DECIMALS
from hd_core.models import ApiScope, ChangeContext, UsageDelta, utc_now
from hd_core.policies import PolicyKind, QuotaLimit
from hd_core.policy_codec import to_document
from hd_core.policy_validation import validate_policy
from hd_core.ports import ControlStore

MAX_REPORT_DAYS = 366
GROUP_BY_FIELDS = {"user": "user_id", "agent": "agent_id", "day": "day"}


def quota_id_for(org_id: str) -> str:
    """The stable id of an organisation's quota object."""
    return f"quota_{org_id}"


def _org_quotas(store: ControlStore, org_id: str) -> list[QuotaLimit]:
    return [obj for obj in store.list_policies(org_id=org_id, kind=PolicyKind.QUOTA) if isinstance(obj, QuotaLimit)]


def _current_quota(store: ControlStore, org_id: str) -> QuotaLimit | None:
    quotas = _org_quotas(store, org_id)
    # A policy file may have loaded one under another id; the stable id wins when both exist.
    for quota in quotas:
        if quota.quota_id == quota_id_for(org_id):
            return quota
    return quotas[0] if quotas else None


def get_quota(store: ControlStore, ctx: ChangeContext, org_id: str) -> QuotaLimit | None:
    """The actor's organisation's quota, or None when it is unlimited."""
    require_own_org(ctx, org_id)
    return _current_quota(store, org_id)


def set_quota(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    org_id: str,
    *,
    monthly_credits: float | None,
    max_rows_per_query: int | None,
    statements_per_second: float | None = None,
    now: Callable[[], datetime] = utc_now,
) -> QuotaLimit:
    """Replace the organisation's quota (None: unlimited) with the billing:manage scope: QUOTA_CHANGED."""
    get_org_in_scope(store, ctx, org_id)
    if not ctx.actor.has_scope(ApiScope.BILLING_MANAGE.value):
        raise Forbidden("changing the quota needs the billing:manage scope (Owners)")
    quota = QuotaLimit(
        quota_id=quota_id_for(org_id),
        org_id=org_id,
        monthly_credits=monthly_credits,
        max_rows_per_query=max_rows_per_query,
        statements_per_second=statements_per_second,
    )
    validate_policy(quota, store.policy_snapshot(), now=now())
    before = _current_quota(store, org_id)
    store.put_policy(quota)
    for stale in _org_quotas(store, org_id):
        if stale.quota_id != quota.quota_id:
            # One quota per organisation: the engine would otherwise have to guess which applies.
            store.delete_policy(PolicyKind.QUOTA, stale.quota_id)
    trail.record(
        org_id,
        IamEventType.QUOTA_CHANGED,
        actor=ctx.actor.user_id,
        target=quota.quota_id,
        before=None if before is None else to_document(before),
        after=to_document(quota),
        request_id=ctx.request_id,
    )
    return quota


@dataclass
class _Totals:
    statements: int = 0
    credits: float = 0.0
    rows: int = 0
    bytes: int = 0

    def add(self, delta: UsageDelta) -> None:
        self.statements += delta.statements
        self.credits += delta.credits
        self.rows += delta.rows
        self.bytes += delta.bytes


def _group_key(delta: UsageDelta, group_by: str) -> str | None:
    if group_by == "user":
        return delta.user_id
    if group_by == "agent":
        return delta.agent_id
    return delta.day.isoformat()


def _grouped(deltas: Iterable[UsageDelta], group_by: str) -> dict[str | None, _Totals]:
    groups: dict[str | None, _Totals] = {}
    for delta in deltas:
        groups.setdefault(_group_key(delta, group_by), _Totals()).add(delta)
    return groups


def usage_report(
    store: ControlStore, ctx: ChangeContext, org_id: str, *, start: date, end: date, group_by: str
) -> list[dict[str, Any]]:
    """Usage of the actor's organisation over days [start, end] (at most 366), summed per user, agent or day.

    Each row is `{<user_id|agent_id|day>: ..., "statements", "credits", "rows", "bytes"}`, ordered by
    that key (usage without an agent has `agent_id` None and comes last); days are ISO dates.
    """
    require_own_org(ctx, org_id)
    if group_by not in GROUP_BY_FIELDS:
        raise InvalidRequest(f"group_by must be one of {', '.join(GROUP_BY_FIELDS)}, got {group_by!r}")
    if end < start:
        raise InvalidRequest("end must not be before start")
    if (end - start).days + 1 > MAX_REPORT_DAYS:
        raise InvalidRequest(f"a usage report covers at most {MAX_REPORT_DAYS} days")
    groups = _grouped(store.usage(org_id, start, end), group_by)
    field = GROUP_BY_FIELDS[group_by]
    return [
        {
            field: key,
            "statements": totals.statements,
            "credits": round(totals.credits, CREDIT_DECIMALS),
            "rows": totals.rows,
            "bytes": totals.bytes,
        }
        for key, totals in sorted(groups.items(), key=lambda item: (item[0] is None, item[0] or ""))
    ]


def month_to_date_credits(store: ControlStore, org_id: str, *, now: datetime) -> float:
    """Credits the organisation used from the first of the UTC month of `now` through that day, as stored."""
    if now.tzinfo is None:
        raise InvalidRequest("now must be timezone-aware")
    today = now.astimezone(UTC).date()
    used = sum(delta.credits for delta in store.usage(org_id, today.replace(day=1), today))
    return round(used, CREDIT_DECIMALS)
