"""Just-in-time elevation: a user asks to act with a higher role for a while, another administrator decides.

Approval writes a `JitGrant` policy object (starting now, ending after the requested duration),
which bumps the policy version the engine hosts watch; the grant stops applying at its expiry by
itself, so nothing sweeps. Revocation ends it early: the grant is rewritten with `revoked_at`, which
bumps the version again, and the engine hosts stop honouring it on their next poll (about a
second). Each step is stored first and then recorded in the organisation's IAM audit chain.

Granting a privileged role (Admin) this way takes an Owner, exactly as a role change does
(`directory.require_may_grant`): otherwise an Admin could make a peer Admin for a while.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from hd_core import webhook_events
from hd_core.directory import PRIVILEGED_ROLES, get_member, parse_role, require_may_grant, require_own_org
from hd_core.errors import Conflict, Forbidden, InvalidRequest, NotFound
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import IamEventType
from hd_core.models import (
    ApiScope,
    ChangeContext,
    JitRequest,
    JitStatus,
    Role,
    UserStatus,
    new_id,
    utc_now,
)
from hd_core.permissions import role_rank
from hd_core.policies import JitGrant, PolicyKind
from hd_core.policy_validation import validate_policy
from hd_core.ports import ControlStore

MIN_DURATION_SECONDS = 60
MAX_DURATION_SECONDS = 8 * 3600
MAX_REASON_LENGTH = 1000


def _status(value: JitStatus | str) -> JitStatus:
    try:
        return JitStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in JitStatus)
        raise InvalidRequest(f"unknown JIT request status {value!r}; use one of {known}") from None


def _check_request(role: Role, reason: str, duration_seconds: int) -> None:
    if role is Role.OWNER:
        raise InvalidRequest("just-in-time elevation goes up to Admin at most, never Owner")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_LENGTH:
        raise InvalidRequest(f"a reason is required (at most {MAX_REASON_LENGTH} characters)")
    if (
        isinstance(duration_seconds, bool)
        or not isinstance(duration_seconds, int)
        or not MIN_DURATION_SECONDS <= duration_seconds <= MAX_DURATION_SECONDS
    ):
        raise InvalidRequest(
            f"duration_seconds must be a whole number from {MIN_DURATION_SECONDS} to {MAX_DURATION_SECONDS} (8 hours)"
        )


def _record(
    trail: IamAuditTrail, ctx: ChangeContext, event: IamEventType, before: JitRequest | None, after: JitRequest
) -> None:
    trail.record(
        after.org_id, event, actor=ctx.actor.user_id, target=after.request_id, before=before, after=after,
        request_id=ctx.request_id,
    )


def request_elevation(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    *,
    org_id: str,
    role: Role | str,
    reason: str,
    duration_seconds: int,
    now: Callable[[], datetime] = utc_now,
) -> JitRequest:
    """Ask, for the actor themselves, to hold `role` for `duration_seconds` (60 s to 8 h): JIT_REQUESTED.

    The role must rank above the actor's current role, and the reason is required.
    """
    require_own_org(ctx, org_id)
    wanted = parse_role(role)
    _check_request(wanted, reason, duration_seconds)
    user = get_member(store, org_id, ctx.actor.user_id)
    if user.status != UserStatus.ACTIVE:
        raise Conflict("only an active user can request elevation")
    if role_rank(wanted) <= role_rank(user.role):
        raise Conflict(f"{wanted.value} does not rank above your current role {Role(user.role).value}")
    request = JitRequest(
        request_id=new_id("jitreq"),
        org_id=org_id,
        user_id=user.user_id,
        role=wanted,
        reason=reason.strip(),
        duration_seconds=duration_seconds,
        status=JitStatus.PENDING,
        requested_at=now(),
    )
    store.put_jit_request(request)
    _record(trail, ctx, IamEventType.JIT_REQUESTED, None, request)
    webhook_events.jit_event(store, ctx, webhook_events.WebhookEventType.JIT_REQUESTED, request)
    return request


def _request_in_org(store: ControlStore, ctx: ChangeContext, org_id: str, request_id: str) -> JitRequest:
    """A request of the actor's organisation; another tenant's reads exactly like a made-up id (no id echoed)."""
    require_own_org(ctx, org_id)
    request = store.get_jit_request(request_id)
    if request is None or request.org_id != org_id:
        raise NotFound("JIT request not found")
    return request


def _pending_request(store: ControlStore, ctx: ChangeContext, org_id: str, request_id: str) -> JitRequest:
    """A pending request of the actor's organisation that the actor may decide (users:manage)."""
    request = _request_in_org(store, ctx, org_id, request_id)
    if not ctx.actor.has_scope(ApiScope.USERS_MANAGE.value):
        raise Forbidden("deciding a JIT request needs the users:manage scope")
    if request.status != JitStatus.PENDING:
        raise Conflict(f"JIT request {request_id} was already {JitStatus(request.status).value}")
    return request


def approve(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    org_id: str,
    request_id: str,
    reason: str = "",
    *,
    now: Callable[[], datetime] = utc_now,
) -> JitRequest:
    """Approve a pending request and grant the role from now for its duration: JIT_APPROVED.

    The approver needs users:manage, may not approve their own request, may not grant a role above
    their own, and must be an Owner to grant a privileged role (Admin), as for a role change.
    """
    request = _pending_request(store, ctx, org_id, request_id)
    if request.user_id == ctx.actor.user_id:
        raise Forbidden("nobody may approve their own JIT request")
    if role_rank(request.role) > role_rank(ctx.actor.role):
        raise Forbidden(f"approving {Role(request.role).value} needs an approver holding at least that role")
    require_may_grant(ctx.actor, Role(request.role))
    requester = get_member(store, org_id, request.user_id)
    if requester.status != UserStatus.ACTIVE:
        raise Conflict("the requesting user is no longer active")
    starts_at = now()
    grant = JitGrant(
        grant_id=new_id("jit"),
        org_id=org_id,
        user_id=request.user_id,
        role=Role(request.role),
        reason=request.reason,
        starts_at=starts_at,
        expires_at=starts_at + timedelta(seconds=request.duration_seconds),
        approved_by=ctx.actor.user_id,
    )
    validate_policy(grant, store.policy_snapshot(), now=starts_at)
    decided = replace(
        request, status=JitStatus.APPROVED, decided_by=ctx.actor.user_id, decided_at=starts_at,
        decision_reason=reason.strip(), grant_id=grant.grant_id,
    )
    # Decide first: the store refuses a request someone else decided meanwhile, and if writing the
    # grant then fails the request is approved without effect (nothing granted), never the reverse.
    store.decide_jit_request(decided)
    store.put_policy(grant)
    _record(trail, ctx, IamEventType.JIT_APPROVED, request, decided)
    webhook_events.jit_event(store, ctx, webhook_events.WebhookEventType.JIT_APPROVED, decided)
    return decided


def deny(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    org_id: str,
    request_id: str,
    reason: str = "",
    *,
    now: Callable[[], datetime] = utc_now,
) -> JitRequest:
    """Deny a pending request (users:manage): JIT_DENIED."""
    request = _pending_request(store, ctx, org_id, request_id)
    decided = replace(
        request, status=JitStatus.DENIED, decided_by=ctx.actor.user_id, decided_at=now(),
        decision_reason=reason.strip(),
    )
    store.decide_jit_request(decided)
    _record(trail, ctx, IamEventType.JIT_DENIED, request, decided)
    return decided


def revoke(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    org_id: str,
    request_id: str,
    reason: str = "",
    *,
    now: Callable[[], datetime] = utc_now,
) -> JitRequest:
    """End an approved elevation before its expiry: JIT_REVOKED; the grant stops applying on the engines at once.

    The grantee may give up their own elevation; anyone else needs users:manage, and an Owner
    (as for granting it) when the role is privileged. Revoking a revoked request changes nothing;
    a pending or denied one, or a grant already expired, is a `Conflict`.
    """
    request = _request_in_org(store, ctx, org_id, request_id)
    if request.user_id != ctx.actor.user_id:
        if not ctx.actor.has_scope(ApiScope.USERS_MANAGE.value):
            raise Forbidden("revoking another user's JIT elevation needs the users:manage scope")
        if Role(request.role) in PRIVILEGED_ROLES:
            require_may_grant(ctx.actor, Role(request.role))
    if request.status == JitStatus.REVOKED:
        return request
    if request.status != JitStatus.APPROVED:
        raise Conflict(f"only an approved JIT request can be revoked; this one is {JitStatus(request.status).value}")
    at = now()
    grant = None if request.grant_id is None else store.get_policy(PolicyKind.JIT_GRANT, request.grant_id)
    if isinstance(grant, JitGrant) and at >= grant.expires_at:
        raise Conflict("this JIT grant already expired; there is nothing left to revoke")
    if isinstance(grant, JitGrant) and grant.revoked_at is None:
        # The grant first: if marking the request fails after this, the elevation has still ended
        # (fail closed), and a retry finds the request approved and completes it.
        store.put_policy(replace(grant, revoked_at=at))
    revoked = replace(request, status=JitStatus.REVOKED)
    store.decide_jit_request(revoked, from_status=JitStatus.APPROVED)
    trail.record(
        org_id, IamEventType.JIT_REVOKED, actor=ctx.actor.user_id, target=request.request_id, before=request,
        after={"request": revoked, "revoked_at": at, "reason": reason.strip()}, request_id=ctx.request_id,
    )
    return revoked


def list_requests(
    store: ControlStore, ctx: ChangeContext, org_id: str, status: JitStatus | str | None = None
) -> list[JitRequest]:
    """The JIT requests of the actor's organisation, oldest first; without users:manage only the actor's own."""
    require_own_org(ctx, org_id)
    requests = store.list_jit_requests(org_id, None if status is None else _status(status))
    if ctx.actor.has_scope(ApiScope.USERS_MANAGE.value):
        return requests
    return [request for request in requests if request.user_id == ctx.actor.user_id]
