"""The organisation directory: organisations, environments, users, roles and federated identities.

Every mutating function takes `(store, trail, ctx, ...)`, applies the change to the store first and
then records one IAM audit event in the organisation's chain (the chain id is the org id), so an
event never describes a change that was not made. Tenant isolation: an actor only ever sees its own
organisation; a user, environment or organisation of another tenant is reported as `NotFound`,
exactly like one that does not exist. Asking for a state that already holds (suspending a
suspended user, setting the role a user has) changes nothing and records nothing, so retries are
safe; a removed user is terminal and every change to it is a `Conflict`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from hd_core import webhook_events
from hd_core.api_keys import ApiKeyHasher, revoke_api_key
from hd_core.client_values import EXTERNAL_ID_PATTERN, check_plain_text, email_problem
from hd_core.errors import Conflict, Forbidden, InvalidRequest, NotFound
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import IamEventType
from hd_core.models import (
    ChangeContext,
    Environment,
    IamEvent,
    KeyEnv,
    Organization,
    OrgStatus,
    Principal,
    Role,
    User,
    UserStatus,
    new_id,
    utc_now,
)
from hd_core.passwords import hash_password
from hd_core.ports import ControlStore

MAX_NAME_LENGTH = 200
MAX_EXTERNAL_ID_LENGTH = 1024
# Roles whose holders can manage users and policies: granting them, or touching their holders,
# is reserved to Owners so an Admin cannot raise themselves or take over a peer.
PRIVILEGED_ROLES = frozenset({Role.OWNER, Role.ADMIN})
# The user changes the auth module makes itself (MFA, password) and reports through `record_user_change`.
AUTH_MODULE_EVENTS = frozenset(
    {IamEventType.USER_MFA_ENROLLED, IamEventType.USER_MFA_RESET, IamEventType.USER_PASSWORD_SET}
)

_EXTERNAL_ID = re.compile(EXTERNAL_ID_PATTERN)


# --- shared checks (also used by the key, policy, JIT and quota services) ----------------------------


def require_own_org(ctx: ChangeContext, org_id: str) -> None:
    """Raise `NotFound` unless `org_id` is the actor's organisation (another tenant's org does not exist)."""
    if org_id != ctx.actor.org_id:
        raise NotFound("organization not found")


def get_org_in_scope(store: ControlStore, ctx: ChangeContext, org_id: str) -> Organization:
    """The actor's own organisation `org_id`; raises `NotFound` for any other or absent one."""
    require_own_org(ctx, org_id)
    org = store.get_org(org_id)
    if org is None:
        raise NotFound("organization not found")
    return org


def get_member(store: ControlStore, org_id: str, user_id: str) -> User:
    """The user `user_id` of organisation `org_id`; a user of another organisation is `NotFound`.

    The message never echoes the id: a probe with another tenant's id reads byte for byte like one with a made-up id.
    """
    user = store.get_user(user_id)
    if user is None or user.org_id != org_id:
        raise NotFound("user not found")
    return user


def require_may_manage(actor: Principal, target: User) -> None:
    """Raise `Forbidden` if `target` holds a privileged role (Admin, Owner) and the actor is not an Owner."""
    if Role(target.role) in PRIVILEGED_ROLES and Role(actor.role) is not Role.OWNER:
        raise Forbidden(f"only an Owner may change a user with the {Role(target.role).value} role")


def _require_owner(actor: Principal, action: str) -> None:
    if Role(actor.role) is not Role.OWNER:
        raise Forbidden(f"only an Owner may {action}")


def require_may_grant(actor: Principal, role: Role) -> None:
    """Raise `Forbidden` if `role` is privileged (Admin, Owner) and the actor is not an Owner.

    The one rule for every way of handing out a role: invitation, role change and JIT approval.
    """
    if role in PRIVILEGED_ROLES:
        _require_owner(actor, f"grant the {role.value} role")


def _require_not_self(ctx: ChangeContext, user_id: str, action: str) -> None:
    if user_id == ctx.actor.user_id:
        raise Forbidden(f"nobody may {action} themselves; ask another administrator")


def _require_name(name: str, what: str) -> str:
    cleaned = name.strip() if isinstance(name, str) else ""
    if not cleaned or len(cleaned) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"{what} must be 1 to {MAX_NAME_LENGTH} characters")
    return check_plain_text(cleaned, what)


def parse_role(value: Role | str) -> Role:
    """The role named `value`; raises `InvalidRequest` for an unknown one."""
    try:
        return Role(value)
    except ValueError:
        raise InvalidRequest(f"unknown role {value!r}; use one of {', '.join(r.value for r in Role)}") from None


def _user_status(value: UserStatus | str) -> UserStatus:
    try:
        return UserStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in UserStatus)
        raise InvalidRequest(f"unknown user status {value!r}; use one of {known}") from None


def _record(
    trail: IamAuditTrail,
    ctx: ChangeContext,
    chain_id: str,
    event_type: IamEventType,
    target: str,
    before: object,
    after: object,
) -> IamEvent:
    return trail.record(
        chain_id,
        event_type,
        actor=ctx.actor.user_id,
        target=target,
        before=before,
        after=after,
        request_id=ctx.request_id,
    )


# --- organisations ------------------------------------------------------------------------------------


def create_org(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    name: str,
    *,
    now: Callable[[], datetime] = utc_now,
) -> Organization:
    """Create an active organisation (Owners only); ORG_CREATED opens the new organisation's own chain."""
    _require_owner(ctx.actor, "create an organization")
    org = Organization(
        org_id=new_id("org"), name=_require_name(name, "an organization name"), status=OrgStatus.ACTIVE,
        created_at=now(),
    )
    store.put_org(org)
    _record(trail, ctx, org.org_id, IamEventType.ORG_CREATED, org.org_id, None, org)
    return org


def set_org_status(
    store: ControlStore, trail: IamAuditTrail, ctx: ChangeContext, org_id: str, status: OrgStatus | str
) -> Organization:
    """Suspend or reactivate the actor's organisation (Owners only): ORG_SUSPENDED or ORG_REACTIVATED."""
    _require_owner(ctx.actor, "suspend or reactivate an organization")
    org = get_org_in_scope(store, ctx, org_id)
    try:
        wanted = OrgStatus(status)
    except ValueError:
        raise InvalidRequest(f"unknown organization status {status!r}; use active or suspended") from None
    if org.status == wanted:
        return org
    changed = replace(org, status=wanted)
    store.put_org(changed)
    event = IamEventType.ORG_SUSPENDED if wanted is OrgStatus.SUSPENDED else IamEventType.ORG_REACTIVATED
    _record(trail, ctx, org_id, event, org_id, org, changed)
    return changed


def set_mfa_required(
    store: ControlStore, trail: IamAuditTrail, ctx: ChangeContext, org_id: str, required: bool
) -> Organization:
    """Require (or stop requiring) a TOTP code at every login of the organisation: ORG_MFA_POLICY_CHANGED."""
    if Role(ctx.actor.role) not in PRIVILEGED_ROLES:
        raise Forbidden("only an Owner or Admin may change the organization's MFA policy")
    org = get_org_in_scope(store, ctx, org_id)
    if org.mfa_required == bool(required):
        return org
    changed = replace(org, mfa_required=bool(required))
    store.put_org(changed)
    _record(trail, ctx, org_id, IamEventType.ORG_MFA_POLICY_CHANGED, org_id, org, changed)
    return changed


# --- environments ---------------------------------------------------------------------------------------


def create_environment(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    org_id: str,
    name: str,
    key_env: KeyEnv | str,
    *,
    now: Callable[[], datetime] = utc_now,
) -> Environment:
    """Create an environment with a unique name in the organisation: ENVIRONMENT_CREATED."""
    get_org_in_scope(store, ctx, org_id)
    cleaned = _require_name(name, "an environment name")
    try:
        env_kind = KeyEnv(key_env)
    except ValueError:
        raise InvalidRequest(f"unknown key environment {key_env!r}; use live or test") from None
    if any(env.name.casefold() == cleaned.casefold() for env in store.list_environments(org_id)):
        raise Conflict(f"an environment named {cleaned!r} already exists")
    env = Environment(env_id=new_id("env"), org_id=org_id, name=cleaned, key_env=env_kind, created_at=now())
    store.put_environment(env)
    _record(trail, ctx, org_id, IamEventType.ENVIRONMENT_CREATED, env.env_id, None, env)
    return env


def list_environments(store: ControlStore, ctx: ChangeContext, org_id: str) -> list[Environment]:
    """The environments of the actor's organisation, oldest first."""
    get_org_in_scope(store, ctx, org_id)
    return store.list_environments(org_id)


def get_environment(store: ControlStore, ctx: ChangeContext, org_id: str, env_id: str) -> Environment:
    """One environment of the actor's organisation; raises `NotFound`."""
    require_own_org(ctx, org_id)
    env = store.get_environment(env_id)
    if env is None or env.org_id != org_id:
        raise NotFound("environment not found")
    return env


# --- users ------------------------------------------------------------------------------------------


def _check_email(email: str) -> str:
    problem = email_problem(email) if isinstance(email, str) else f"{email!r} is not an email address"
    if problem is not None:
        raise InvalidRequest(problem)
    return email.strip()


def invite_user(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    org_id: str,
    email: str,
    role: Role | str,
    *,
    name: str = "",
    department: str | None = None,
    region: str | None = None,
    password: str | None = None,
    hasher: ApiKeyHasher | None = None,
    now: Callable[[], datetime] = utc_now,
) -> User:
    """Add an active user to the organisation: USER_INVITED.

    Inviting an Admin or Owner takes an Owner. A password, when given, needs 12 characters and is
    stored as its Argon2id hash only. An email already in use anywhere is a `Conflict`.
    """
    get_org_in_scope(store, ctx, org_id)
    cleaned_email = _check_email(email)
    wanted_role = parse_role(role)
    require_may_grant(ctx.actor, wanted_role)
    for value, what in ((name, "a name"), (department, "a department"), (region, "a region")):
        if value is not None:
            check_plain_text(value, what)
    password_hash = None if password is None else hash_password(hasher or ApiKeyHasher(), password)
    if store.get_user_by_email(cleaned_email) is not None:
        raise Conflict("a user with this email already exists")
    user = User(
        user_id=new_id("usr"),
        org_id=org_id,
        email=cleaned_email,
        role=wanted_role,
        status=UserStatus.ACTIVE,
        department=department,
        region=region,
        created_at=now(),
        name=name.strip(),
        password_hash=password_hash,
    )
    store.put_user(user)  # raises Conflict itself if another invitation took the email meanwhile
    _record(trail, ctx, org_id, IamEventType.USER_INVITED, user.user_id, None, user)
    return user


def list_users(
    store: ControlStore,
    ctx: ChangeContext,
    org_id: str,
    *,
    role: Role | str | None = None,
    status: UserStatus | str | None = None,
    email_contains: str | None = None,
    department: str | None = None,
) -> list[User]:
    """The users of the actor's organisation, oldest first, narrowed by every filter given."""
    require_own_org(ctx, org_id)
    wanted_role = None if role is None else parse_role(role)
    wanted_status = None if status is None else _user_status(status)
    needle = None if email_contains is None else email_contains.casefold()
    return [
        user
        for user in store.list_users(org_id)
        if (wanted_role is None or user.role == wanted_role)
        and (wanted_status is None or user.status == wanted_status)
        and (needle is None or needle in user.email.casefold())
        and (department is None or user.department == department)
    ]


def get_user(store: ControlStore, ctx: ChangeContext, org_id: str, user_id: str) -> User:
    """One user of the actor's organisation; raises `NotFound`."""
    require_own_org(ctx, org_id)
    return get_member(store, org_id, user_id)


def _target_for_change(store: ControlStore, ctx: ChangeContext, org_id: str, user_id: str, action: str) -> User:
    """The user an administrator changes: in the actor's org, not the actor, not removed, manageable by them."""
    require_own_org(ctx, org_id)
    _require_not_self(ctx, user_id, action)
    user = get_member(store, org_id, user_id)
    require_may_manage(ctx.actor, user)
    return user


def _ensure_not_last_owner(store: ControlStore, user: User, action: str) -> None:
    """Raise `Conflict` if `user` is the organisation's only active Owner: it would be left without one."""
    if user.role != Role.OWNER or user.status != UserStatus.ACTIVE:
        return
    others = [
        other
        for other in store.list_users(user.org_id)
        if other.user_id != user.user_id and other.role == Role.OWNER and other.status == UserStatus.ACTIVE
    ]
    if not others:
        raise Conflict(f"cannot {action} the last active Owner; make another user an Owner first")


def _require_not_removed(user: User) -> None:
    if user.status == UserStatus.REMOVED:
        raise Conflict(f"user {user.user_id} was removed; removal is final")


def _set_user_status(
    store: ControlStore, trail: IamAuditTrail, ctx: ChangeContext, user: User, status: UserStatus,
    event: IamEventType,
) -> User:
    changed = replace(user, status=status)
    if status != UserStatus.ACTIVE:
        # Sessions end with the suspension: reactivating the user must not revive tokens issued before it.
        changed = replace(changed, tokens_valid_after=utc_now())
    store.put_user(changed)
    _record(trail, ctx, user.org_id, event, user.user_id, user, changed)
    return changed


def suspend_user(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    org_id: str,
    user_id: str,
    *,
    on_deprovisioned: Callable[[str], None] | None = None,
) -> User:
    """Stop a user from authenticating until reactivated: USER_SUSPENDED; `on_deprovisioned(user_id)` follows."""
    user = _target_for_change(store, ctx, org_id, user_id, "suspend")
    _require_not_removed(user)
    if user.status == UserStatus.SUSPENDED:
        return user
    _ensure_not_last_owner(store, user, "suspend")
    changed = _set_user_status(store, trail, ctx, user, UserStatus.SUSPENDED, IamEventType.USER_SUSPENDED)
    if on_deprovisioned is not None:
        on_deprovisioned(user_id)
    return changed


def reactivate_user(
    store: ControlStore, trail: IamAuditTrail, ctx: ChangeContext, org_id: str, user_id: str
) -> User:
    """Let a suspended user authenticate again: USER_REACTIVATED. A removed user stays removed (`Conflict`)."""
    user = _target_for_change(store, ctx, org_id, user_id, "reactivate")
    _require_not_removed(user)
    if user.status == UserStatus.ACTIVE:
        return user
    return _set_user_status(store, trail, ctx, user, UserStatus.ACTIVE, IamEventType.USER_REACTIVATED)


def remove_user(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    org_id: str,
    user_id: str,
    *,
    on_deprovisioned: Callable[[str], None] | None = None,
    now: Callable[[], datetime] = utc_now,
) -> User:
    """Remove a user for good: USER_REMOVED, then every live API key revoked (one API_KEY_REVOKED each).

    The user is kept with status `removed` so the audit trail keeps resolving its id. The status
    changes first: it alone already stops every login, so a failure while revoking keys leaves
    nothing usable behind. `on_deprovisioned(user_id)` runs last, for callers' caches.
    """
    user = _target_for_change(store, ctx, org_id, user_id, "remove")
    if user.status == UserStatus.REMOVED:
        return user
    _ensure_not_last_owner(store, user, "remove")
    removed = _set_user_status(store, trail, ctx, user, UserStatus.REMOVED, IamEventType.USER_REMOVED)
    for key in store.list_api_keys(org_id):
        if key.user_id == user_id and key.revoked_at is None:
            revoked = revoke_api_key(store, None, key.key_id, now=now)
            _record(trail, ctx, org_id, IamEventType.API_KEY_REVOKED, key.key_id, key, revoked)
            webhook_events.key_revoked(store, ctx, revoked)
    if on_deprovisioned is not None:
        on_deprovisioned(user_id)
    return removed


def change_role(
    store: ControlStore, trail: IamAuditTrail, ctx: ChangeContext, org_id: str, user_id: str, role: Role | str
) -> User:
    """Give a user another role: USER_ROLE_CHANGED.

    Nobody changes their own role; granting Admin or Owner, or changing an Admin or Owner, takes an
    Owner; the last active Owner cannot be demoted.
    """
    wanted = parse_role(role)
    user = _target_for_change(store, ctx, org_id, user_id, "change the role of")
    _require_not_removed(user)
    require_may_grant(ctx.actor, wanted)
    if user.role == wanted:
        return user
    _ensure_not_last_owner(store, user, "demote")
    changed = replace(user, role=wanted)
    store.put_user(changed)
    _record(trail, ctx, org_id, IamEventType.USER_ROLE_CHANGED, user_id, user, changed)
    webhook_events.user_role_changed(store, ctx, user, changed)
    return changed


# --- federated identities ----------------------------------------------------------------------------


def _check_external_id(external_id: str) -> str:
    if (
        not isinstance(external_id, str)
        or len(external_id) > MAX_EXTERNAL_ID_LENGTH
        or not _EXTERNAL_ID.fullmatch(external_id)
    ):
        raise InvalidRequest(f"{external_id!r} is not a federated identity '<issuer>#<subject>'")
    return external_id


def _identity_target(store: ControlStore, ctx: ChangeContext, org_id: str, user_id: str) -> User:
    """The user whose identities change: yourself, or a user you may manage (sign-in as an Owner is guarded)."""
    require_own_org(ctx, org_id)
    user = get_member(store, org_id, user_id)
    if user_id != ctx.actor.user_id:
        # Linking an identity you control to someone else's account is signing in as them.
        require_may_manage(ctx.actor, user)
    _require_not_removed(user)
    return user


def link_external_identity(
    store: ControlStore, trail: IamAuditTrail, ctx: ChangeContext, org_id: str, user_id: str, external_id: str
) -> User:
    """Let an OIDC identity `<issuer>#<subject>` sign in as the user: FEDERATED_IDENTITY_LINKED.

    An identity linked to another user is a `Conflict`.
    """
    identity = _check_external_id(external_id)
    user = _identity_target(store, ctx, org_id, user_id)
    if identity in user.external_ids:
        return user
    holder = store.get_user_by_external_id(identity)
    if holder is not None:
        raise Conflict("this federated identity is already linked to another user")
    changed = replace(user, external_ids=(*user.external_ids, identity))
    store.put_user(changed)  # the store's uniqueness check closes the race with a concurrent link
    _record(trail, ctx, org_id, IamEventType.FEDERATED_IDENTITY_LINKED, user_id, user, changed)
    return changed


def unlink_external_identity(
    store: ControlStore, trail: IamAuditTrail, ctx: ChangeContext, org_id: str, user_id: str, external_id: str
) -> User:
    """Stop an OIDC identity from signing in as the user: FEDERATED_IDENTITY_UNLINKED; `NotFound` if not linked."""
    user = _identity_target(store, ctx, org_id, user_id)
    if external_id not in user.external_ids:
        raise NotFound("this federated identity is not linked to the user")
    changed = replace(user, external_ids=tuple(i for i in user.external_ids if i != external_id))
    store.put_user(changed)
    _record(trail, ctx, org_id, IamEventType.FEDERATED_IDENTITY_UNLINKED, user_id, user, changed)
    return changed


def record_user_change(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    event_type: IamEventType | str,
    before: User,
    after: User,
) -> IamEvent:
    """Record a change the auth module already stored (MFA enrolled or reset, password set); returns the event."""
    try:
        event = IamEventType(event_type)
    except ValueError:
        raise InvalidRequest(f"unknown IAM event type {event_type!r}") from None
    if event not in AUTH_MODULE_EVENTS:
        raise InvalidRequest(f"{event.value} is recorded by the service that makes that change, not here")
    if before.user_id != after.user_id or before.org_id != after.org_id:
        raise InvalidRequest("before and after must be the same user")
    require_own_org(ctx, after.org_id)
    get_member(store, after.org_id, after.user_id)
    return _record(trail, ctx, after.org_id, event, after.user_id, before, after)
