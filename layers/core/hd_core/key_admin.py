"""API key administration: create, list, rotate and revoke keys, and record expiries for the audit trail.

Anyone may manage their own keys; someone else's keys take the `keys:manage` scope, and the keys
of an Admin or Owner take an Owner (a key is a way to act as its user). A new key never carries a
scope the credential creating it lacks, so a narrow key (an agent's read-only key) cannot mint a
broader one. As everywhere in the control plane, the change is stored first and its IAM audit
event recorded second, and a key of another organisation is reported as `NotFound`.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hd_core import webhook_events
from hd_core.api_keys import (
    DEFAULT_ROTATION_GRACE,
    ApiKeyAuthenticator,
    ApiKeyHasher,
    issue_api_key,
    normalise_cidrs,
    revoke_api_key,
    rotate_api_key,
)
from hd_core.directory import get_member, require_may_manage, require_own_org
from hd_core.errors import Conflict, Forbidden, InvalidRequest, NotFound
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import SYSTEM_ACTOR, IamEventType
from hd_core.models import ApiKeyRecord, ApiScope, ChangeContext, KeyEnv, Role, utc_now
from hd_core.permissions import effective_scopes, expand_scopes
from hd_core.ports import ControlStore

# Issue 19: ServiceAccount keys rotate on a schedule unless their creator says otherwise; other keys do not.
DEFAULT_SERVICE_ACCOUNT_ROTATION_DAYS = 90
MAX_ROTATE_EVERY_DAYS = 3650
# A Secrets Manager secret name (its character set), or the ARN of one.
_SECRET_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")
_SECRET_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:([A-Za-z0-9/_+=.@-]{1,512})")


class DeliverySecretInvalid(InvalidRequest):
    """A delivery target outside the organisation's secret names (`hd/keys/<org_id>/...`), or no secret name."""

    code = "HD_ERR_DELIVERY_SECRET_INVALID"


class Unset(enum.Enum):
    """A rotation policy left to the default (`DEFAULT`), as opposed to None (no scheduled rotation)."""

    DEFAULT = "default"


def default_rotation_days(role: Role) -> int | None:
    """The rotation policy a key of a user in `role` gets when its creator names none."""
    return DEFAULT_SERVICE_ACCOUNT_ROTATION_DAYS if role == Role.SERVICE_ACCOUNT else None


def validate_rotate_every_days(days: int | None) -> int | None:
    """`days` if it is None or a whole number of days from 1 to 3650; else `InvalidRequest`."""
    if days is None:
        return None
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_ROTATE_EVERY_DAYS:
        raise InvalidRequest(f"rotate_every_days must be a whole number from 1 to {MAX_ROTATE_EVERY_DAYS}, or null")
    return days


def validate_delivery_secret(org_id: str, secret: str | None) -> str | None:
    """A delivery target: a Secrets Manager secret name, or ARN, whose name lies under `hd/keys/<org_id>/`.

    The prefix keeps one organisation from naming another's secret: a successor's plaintext is only
    ever written where its own organisation's names live. Else `InvalidRequest`.
    """
    if secret is None:
        return None
    found = _SECRET_ARN.fullmatch(secret)
    name = found.group(1) if found else secret
    prefix = f"hd/keys/{org_id}/"
    if _SECRET_NAME.fullmatch(name) is None or not name.startswith(prefix) or len(name) == len(prefix):
        raise DeliverySecretInvalid(
            f"delivery_secret must be a Secrets Manager secret name or ARN whose name starts with {prefix}"
        )
    return secret


def _may_manage_others(ctx: ChangeContext) -> bool:
    return ctx.actor.has_scope(ApiScope.KEYS_MANAGE.value)


def _require_key_owner_access(store: ControlStore, ctx: ChangeContext, org_id: str, user_id: str) -> None:
    """Raise unless the actor may manage keys of `user_id`: themselves, or with keys:manage over that user."""
    if user_id == ctx.actor.user_id:
        return
    if not _may_manage_others(ctx):
        raise Forbidden("managing another user's API keys needs the keys:manage scope")
    require_may_manage(ctx.actor, get_member(store, org_id, user_id))


def _key_in_org(store: ControlStore, ctx: ChangeContext, org_id: str, key_id: str) -> ApiKeyRecord:
    require_own_org(ctx, org_id)
    record = store.get_api_key(key_id)
    if record is None or record.org_id != org_id:
        raise NotFound("api key not found")  # no id echoed: another tenant's key reads like a made-up one
    return record


def _record(
    trail: IamAuditTrail, ctx: ChangeContext, org_id: str, event: IamEventType, key_id: str, before: object,
    after: object,
) -> None:
    trail.record(
        org_id, event, actor=ctx.actor.user_id, target=key_id, before=before, after=after,
        request_id=ctx.request_id,
    )


def _requested_scopes(ctx: ChangeContext, scopes: Iterable[str]) -> tuple[str, ...]:
    """The requested scopes, bundles expanded, if the actor's own credential holds every one; else `Forbidden`."""
    requested = expand_scopes(scopes)
    missing = [scope for scope in requested if not ctx.actor.has_scope(scope)]
    if missing:
        raise Forbidden(f"a key cannot grant scopes your own credential lacks: {', '.join(missing)}")
    return requested


def _actor_key(store: ControlStore, ctx: ChangeContext) -> ApiKeyRecord | None:
    """The API key the actor authenticated with, or None for a session (JWT, federation)."""
    if ctx.actor.auth_method != "api_key":
        return None
    record = store.get_api_key(ctx.actor.key_id)
    if record is None:
        # Authenticated with a key that is gone: refuse rather than treat the actor as unbounded.
        raise Forbidden("the API key this request authenticated with no longer exists")
    return record


def _bounded_by_actor_key(
    store: ControlStore, ctx: ChangeContext, expires_at: datetime | None, allowed_cidrs: Iterable[str]
) -> tuple[datetime | None, tuple[str, ...]]:
    """The expiry and allow list of a key made by the actor: never later, never wider than the actor's own key.

    Unset, they are the actor key's; set, they must lie within it (`Forbidden`). A session actor is unbounded.
    """
    cidrs = normalise_cidrs(allowed_cidrs)
    parent = _actor_key(store, ctx)
    if parent is None:
        return expires_at, cidrs
    if expires_at is None:
        expires_at = parent.expires_at
    elif parent.expires_at is not None and expires_at > parent.expires_at:
        raise Forbidden("a key cannot outlive the API key creating it; choose an earlier expires_at")
    if not cidrs:
        cidrs = parent.allowed_cidrs
    elif parent.allowed_cidrs and not all(_within(cidr, parent.allowed_cidrs) for cidr in cidrs):
        raise Forbidden("a key's allowed_cidrs must lie inside those of the API key creating it")
    return expires_at, cidrs


def _within(cidr: str, networks: Iterable[str]) -> bool:
    inner = ipaddress.ip_network(cidr)
    return any(
        inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]
        for outer in (ipaddress.ip_network(network) for network in networks)
    )


def create_key(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    hasher: ApiKeyHasher,
    *,
    org_id: str,
    user_id: str,
    env: KeyEnv | str,
    scopes: Iterable[str],
    name: str = "",
    allowed_cidrs: Iterable[str] = (),
    expires_at: datetime | None = None,
    now: Callable[[], datetime] = utc_now,
    rotate_every_days: int | Unset | None = Unset.DEFAULT,
    delivery_secret: str | None = None,
) -> tuple[str, ApiKeyRecord]:
    """Issue a key for an active user of the actor's organisation: API_KEY_CREATED; returns (plaintext, record).

    `rotate_every_days` is the key's rotation policy (None: none); left to its default, a
    ServiceAccount's key rotates every 90 days and other keys never. `delivery_secret` names the
    Secrets Manager secret a scheduled successor is written to (see `validate_delivery_secret`).

    The plaintext exists only in the return value. The scopes must belong to the user's role
    (`ScopeNotAllowed`) and to the actor's own credential (`Forbidden`); a key made with a key also
    inherits that key's expiry (no later) and allow list (a subset), so it cannot outlast or outreach it.
    """
    require_own_org(ctx, org_id)
    member = get_member(store, org_id, user_id)
    _require_key_owner_access(store, ctx, org_id, user_id)
    rotation = (
        default_rotation_days(member.role) if rotate_every_days is Unset.DEFAULT
        else validate_rotate_every_days(rotate_every_days)
    )
    target = validate_delivery_secret(org_id, delivery_secret)
    granted = _requested_scopes(ctx, scopes)
    try:
        key_env = KeyEnv(env)
    except ValueError:
        raise InvalidRequest(f"unknown key environment {env!r}; use live or test") from None
    expires_at, bounded_cidrs = _bounded_by_actor_key(store, ctx, expires_at, allowed_cidrs)
    plaintext, record = issue_api_key(
        store, hasher, org_id=org_id, user_id=user_id, env=key_env, scopes=granted, name=name,
        allowed_cidrs=bounded_cidrs, expires_at=expires_at, now=now, rotate_every_days=rotation,
        delivery_secret=target,
    )
    _record(trail, ctx, org_id, IamEventType.API_KEY_CREATED, record.key_id, None, record)
    return plaintext, record


def list_keys(
    store: ControlStore,
    ctx: ChangeContext,
    org_id: str,
    *,
    user_id: str | None = None,
    include_revoked: bool = True,
) -> list[ApiKeyRecord]:
    """Key records of the actor's organisation, oldest first; without keys:manage only the actor's own."""
    require_own_org(ctx, org_id)
    if user_id is not None and user_id != ctx.actor.user_id and not _may_manage_others(ctx):
        raise Forbidden("listing another user's API keys needs the keys:manage scope")
    if user_id is None and not _may_manage_others(ctx):
        user_id = ctx.actor.user_id
    return [
        record
        for record in store.list_api_keys(org_id)
        if (user_id is None or record.user_id == user_id) and (include_revoked or record.revoked_at is None)
    ]


def get_key(store: ControlStore, ctx: ChangeContext, org_id: str, key_id: str) -> ApiKeyRecord:
    """One key record of the actor's organisation; another user's needs keys:manage."""
    record = _key_in_org(store, ctx, org_id, key_id)
    if record.user_id != ctx.actor.user_id and not _may_manage_others(ctx):
        raise Forbidden("reading another user's API key needs the keys:manage scope")
    return record


def rotate_key(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    hasher: ApiKeyHasher,
    org_id: str,
    key_id: str,
    *,
    grace: timedelta = DEFAULT_ROTATION_GRACE,
    now: Callable[[], datetime] = utc_now,
) -> tuple[str, ApiKeyRecord]:
    """Replace a key with a new one of the same scopes; the old one works for `grace` more: API_KEY_ROTATED.

    Returns (plaintext, new record). The event's `after` holds both the old key as it now is and the new one.
    """
    old = _key_in_org(store, ctx, org_id, key_id)
    _require_key_owner_access(store, ctx, org_id, old.user_id)
    # The new key carries what the old one can do today: the actor must hold all of that too,
    # and a key rotating a key must not hand out a longer life or a wider allow list than its own.
    _requested_scopes(ctx, effective_scopes(old.scopes, get_member(store, org_id, old.user_id).role))
    expires_at, cidrs = _bounded_by_actor_key(store, ctx, old.expires_at, old.allowed_cidrs)
    if (expires_at, cidrs) != (old.expires_at, normalise_cidrs(old.allowed_cidrs)):
        raise Forbidden("this key outlives or outreaches the API key rotating it; rotate it with a session")
    plaintext, new, old_after = rotate_api_key(store, hasher, key_id, grace=grace, now=now)
    _record(trail, ctx, org_id, IamEventType.API_KEY_ROTATED, key_id, old, {"old": old_after, "new": new})
    return plaintext, new


def set_key_lifecycle(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    org_id: str,
    key_id: str,
    *,
    rotate_every_days: int | Unset | None = Unset.DEFAULT,
    delivery_secret: str | Unset | None = Unset.DEFAULT,
) -> ApiKeyRecord:
    """Change a key's rotation policy and/or delivery target (`Unset.DEFAULT`: leave it): API_KEY_LIFECYCLE_CHANGED.

    Only a key still in use (not revoked, not rotated) takes a policy; None clears either. No event
    is recorded when nothing changes.
    """
    old = _key_in_org(store, ctx, org_id, key_id)
    _require_key_owner_access(store, ctx, org_id, old.user_id)
    if old.revoked_at is not None or old.rotated_to is not None:
        raise Conflict("a revoked or rotated api key takes no rotation policy; change its successor's")
    updated = old
    if rotate_every_days is not Unset.DEFAULT:
        updated = replace(updated, rotate_every_days=validate_rotate_every_days(rotate_every_days))
    if delivery_secret is not Unset.DEFAULT:
        updated = replace(updated, delivery_secret=validate_delivery_secret(org_id, delivery_secret))
    if updated != old:
        store.update_api_key(updated)
        _record(trail, ctx, org_id, IamEventType.API_KEY_LIFECYCLE_CHANGED, key_id, old, updated)
    return updated


def revoke_key(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    org_id: str,
    key_id: str,
    *,
    authenticator: ApiKeyAuthenticator | None = None,
    now: Callable[[], datetime] = utc_now,
) -> ApiKeyRecord:
    """Revoke a key at once and forget any cached verification of it: API_KEY_REVOKED (none if already revoked)."""
    old = _key_in_org(store, ctx, org_id, key_id)
    _require_key_owner_access(store, ctx, org_id, old.user_id)
    revoked = revoke_api_key(store, authenticator, key_id, now=now)
    if old.revoked_at is None:
        _record(trail, ctx, org_id, IamEventType.API_KEY_REVOKED, key_id, old, revoked)
        webhook_events.key_revoked(store, ctx, revoked)
    return revoked


def record_expired_keys(store: ControlStore, trail: IamAuditTrail, *, now: datetime) -> list[ApiKeyRecord]:
    """Write one API_KEY_EXPIRED event per key whose expiry passed unrecorded, in every org; returns them updated.

    Run by a schedule. Each key is marked (`expiry_recorded_at`) before its event is written, so
    a rerun never records the same expiry twice.
    """
    if now.tzinfo is None:
        raise InvalidRequest("now must be timezone-aware")
    at = now.astimezone(UTC)
    request_id = f"sweep-{at:%Y%m%dT%H%M%SZ}"
    recorded: list[ApiKeyRecord] = []
    for org in store.list_orgs():
        for record in store.list_api_keys(org.org_id):
            if record.expires_at is None or record.expires_at > at or record.expiry_recorded_at is not None:
                continue
            marked = replace(record, expiry_recorded_at=at)
            store.update_api_key(marked)
            trail.record(
                org.org_id, IamEventType.API_KEY_EXPIRED, actor=SYSTEM_ACTOR, target=record.key_id, before=record,
                after=marked, request_id=request_id,
            )
            recorded.append(marked)
    return recorded
