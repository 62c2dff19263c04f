"""Changing the credentials that prove who a user is: passwords and the TOTP factor.

A credential must never be able to widen itself. Whoever sets a password can log in with it and
get every scope of the user's role, so a session or API key alone never sets one: the user's own
change re-proves the current password, and an administrator's reset takes an Owner or Admin whose
credential holds every scope of the target's role, marks the password for change at next login
and is audited. Likewise the second factor is removed only by an Owner (for an Owner or Admin),
an Owner or Admin (for anyone else) or its holder re-proving it with a current code.

Every change ends the user's sessions (`ControlStore.end_user_sessions`): a token minted before a
credential changed must not outlive it. As everywhere in the control plane, the change is stored
first and its IAM audit event recorded second.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from hd_core import auth
from hd_core.api_keys import ApiKeyHasher
from hd_core.auth_throttle import AuthThrottle
from hd_core.directory import PRIVILEGED_ROLES, get_member, require_may_manage, require_own_org
from hd_core.errors import AuthenticationFailed, Conflict, Forbidden, InvalidRequest
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import IamEventType
from hd_core.models import ApiScope, ChangeContext, Role, User, UserStatus, utc_now
from hd_core.passwords import MAX_PASSWORD_LENGTH, set_password, verify_password
from hd_core.permissions import ROLE_SCOPES
from hd_core.ports import ControlStore
from hd_core.sealed_secrets import SecretSealer


def _record(trail: IamAuditTrail, actor: str, request_id: str, event: IamEventType, before: User, after: User) -> None:
    trail.record(
        after.org_id, event, actor=actor, target=after.user_id, before=before, after=after, request_id=request_id
    )


def _require_different(current_password: str, new_password: str) -> None:
    if current_password == new_password:
        raise InvalidRequest("the new password must differ from the current one")


# --- passwords -----------------------------------------------------------------------------------


def change_own_password(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    hasher: ApiKeyHasher,
    *,
    current_password: str,
    new_password: str,
    now: Callable[[], datetime] = utc_now,
    throttle: AuthThrottle | None = None,
) -> User:
    """Replace the caller's password, proven by the current one: USER_PASSWORD_SET; every session ends.

    Raises `AuthenticationFailed` for a wrong current password (after one Argon2 verify) and for a
    user without a password: their first one comes from an administrator's reset, never from a
    session or key alone. Wrong guesses count against the user's login throttle, so a stolen key
    or session is no way around the brute-force limits on the password.
    """
    user = get_member(store, ctx.actor.org_id, ctx.actor.user_id)

    def proven() -> None:
        if not verify_password(hasher, user.password_hash, current_password[: MAX_PASSWORD_LENGTH + 1]):
            raise AuthenticationFailed("current password wrong or never set, while changing the password")

    auth.throttled(throttle or AuthThrottle(store, now=now), user.email, proven)
    _require_different(current_password, new_password)
    changed = auth.ended_sessions(store, set_password(store, hasher, user.user_id, new_password), now())
    _record(trail, ctx.actor.user_id, ctx.request_id, IamEventType.USER_PASSWORD_SET, user, changed)
    return changed


def change_password_with_password(
    store: ControlStore,
    trail: IamAuditTrail,
    hasher: ApiKeyHasher,
    *,
    email: str,
    current_password: str,
    new_password: str,
    totp_code: str | None,
    request_id: str,
    sealer: SecretSealer | None = None,
    now: Callable[[], datetime] = utc_now,
) -> User:
    """Replace a password proven by email, password and (if enrolled) a TOTP code: no session needed.

    The way out of an administrator's reset, whose password cannot log in. USER_PASSWORD_SET, with
    the user as actor; every session ends. Raises what `auth.prove_password` raises.
    """
    at = now()
    user = auth.prove_password(
        store, hasher, email=email, password=current_password, totp_code=totp_code, at=at, sealer=sealer
    )
    _require_different(current_password, new_password)
    changed = auth.ended_sessions(store, set_password(store, hasher, user.user_id, new_password), at)
    _record(trail, user.user_id, request_id, IamEventType.USER_PASSWORD_SET, user, changed)
    return changed


def reset_password(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    hasher: ApiKeyHasher,
    org_id: str,
    user_id: str,
    new_password: str,
    *,
    now: Callable[[], datetime] = utc_now,
) -> User:
    """An Owner's or Admin's reset of another user's password: USER_PASSWORD_RESET; their sessions end.

    The password must be changed before it logs anyone in (`PasswordChangeRequired`). The actor's
    credential must hold every scope of the target's role: whoever knows the password can act as
    the user, so a narrow key with users:manage cannot reach past its own scopes this way.
    """
    require_own_org(ctx, org_id)
    if Role(ctx.actor.role) not in PRIVILEGED_ROLES or not ctx.actor.has_scope(ApiScope.USERS_MANAGE.value):
        raise Forbidden("only an Owner or Admin with the users:manage scope may reset a password")
    if user_id == ctx.actor.user_id:
        raise Forbidden("change your own password with your current one (PUT /v1/auth/password)")
    user = get_member(store, org_id, user_id)
    require_may_manage(ctx.actor, user)
    if user.status == UserStatus.REMOVED:
        raise Conflict("a removed user cannot be given a password")
    missing = sorted(ROLE_SCOPES[Role(user.role)] - set(ctx.actor.scopes))
    if missing:
        raise Forbidden(
            "resetting this user's password would reach scopes your credential lacks: " + ", ".join(missing)
        )
    changed = set_password(store, hasher, user_id, new_password, must_change=True)
    changed = auth.ended_sessions(store, changed, now())
    _record(trail, ctx.actor.user_id, ctx.request_id, IamEventType.USER_PASSWORD_RESET, user, changed)
    return changed


# --- the TOTP factor -----------------------------------------------------------------------------


def reset_user_mfa(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    org_id: str,
    user_id: str,
    *,
    now: Callable[[], datetime] = utc_now,
) -> User:
    """Remove another user's TOTP factor (a lost phone): USER_MFA_RESET; their sessions end.

    Only an Owner resets an Owner's or Admin's; nobody resets their own here (`reset_own_mfa`
    re-proves the factor), so a stolen session cannot strip the factor that guards its account.
    """
    require_own_org(ctx, org_id)
    if user_id == ctx.actor.user_id:
        raise Forbidden("reset your own MFA with a current code (POST /v1/auth/mfa/reset)")
    user = get_member(store, org_id, user_id)
    require_may_manage(ctx.actor, user)
    changed = auth.reset_mfa(store, user_id, now=now)
    _record(trail, ctx.actor.user_id, ctx.request_id, IamEventType.USER_MFA_RESET, user, changed)
    return changed


def reset_own_mfa(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    code: str,
    *,
    sealer: SecretSealer | None = None,
    now: Callable[[], datetime] = utc_now,
    throttle: AuthThrottle | None = None,
) -> User:
    """Remove the caller's own TOTP factor, re-proven by a current code: USER_MFA_RESET; every session ends.

    Raises `Conflict` when no factor is enrolled and `MfaRequired` for a wrong or spent code; wrong
    codes count against the user's login throttle (a session must not be a way to guess codes).
    """
    user = get_member(store, ctx.actor.org_id, ctx.actor.user_id)
    if not user.mfa_enabled:
        raise Conflict("no MFA factor is enrolled for this user")
    at = now()
    auth.throttled(throttle or AuthThrottle(store, now=now), user.email,
                   lambda: auth.prove_totp(store, user, code, at, sealer))
    changed = auth.reset_mfa(store, user.user_id, now=lambda: at)
    _record(trail, ctx.actor.user_id, ctx.request_id, IamEventType.USER_MFA_RESET, user, changed)
    return changed
