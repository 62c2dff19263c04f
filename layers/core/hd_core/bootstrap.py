"""First-start facts for a local install: the owner's organisation, user and API key, and the cache pepper.

Both functions are idempotent and safe when two processes start on the same store at once: the
first writer of a setting wins (`put_setting_if_absent`) and the loser adopts the winner's state.
A first Owner is never made over earlier state (a lost or emptied control store next to old keys,
audit and tables): the caller names that state and bootstrap refuses. A lost Owner key file is
replaced by `reissue_local_owner_key`, which revokes the old key and records both changes in the
IAM audit trail; `set_local_owner_password` gives the Owner, made without one, a password.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from hd_core import auth
from hd_core.api_keys import ApiKeyHasher, issue_api_key, revoke_api_key
from hd_core.auth_throttle import AuthThrottle
from hd_core.errors import AuthenticationFailed, Conflict, HdError, InvalidRequest, NotFound
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import IamEventType
from hd_core.models import (
    ALL_SCOPES,
    ApiKeyRecord,
    Environment,
    KeyEnv,
    Organization,
    OrgStatus,
    Role,
    User,
    UserStatus,
    new_id,
    utc_now,
)
from hd_core.passwords import MAX_PASSWORD_LENGTH, set_password, verify_password
from hd_core.ports import ControlStore

LOCAL_OWNER_USER_SETTING = "local_owner.user_id"
DEFAULT_ORG_SETTING = "default_org_id"
PEPPER_SETTING = "api_key_cache_pepper"
PEPPER_BYTES = 32
LOCAL_OWNER_KEY_NAME = "local owner (created by bootstrap)"
LOCAL_OWNER_REISSUED_KEY_NAME = "local owner (reissued from the state folder)"


class BootstrapRefused(HdError):
    """No Owner is recorded, but earlier state exists: making a new Owner would hand it the old state."""

    code = "HD_ERR_BOOTSTRAP_REFUSED"
    exit_code = 3


@dataclass(frozen=True)
class ReissuedOwnerKey:
    """A new Owner key (plaintext shown once) and the earlier local Owner keys it revoked."""

    api_key_plaintext: str
    record: ApiKeyRecord
    revoked_key_ids: tuple[str, ...]


@dataclass(frozen=True)
class LocalOwner:
    """The local Owner; `api_key_plaintext` is set only by the call that created it (keep it then)."""

    org: Organization
    user: User
    api_key_plaintext: str | None
    created: bool


def bootstrap_local_owner(
    store: ControlStore,
    hasher: ApiKeyHasher,
    *,
    org_name: str = "Local Dev Org",
    org_id: str | None = None,
    email: str = "owner@localhost",
    key_env: KeyEnv = KeyEnv.TEST,
    now: Callable[[], datetime] = utc_now,
    earlier_state: Sequence[str] = (),
) -> LocalOwner:
    """Create, once, an active organisation with an Owner user and an all-scopes key for them.

    The key is `hd_test_` for local mode and `hd_live_` (`key_env=KeyEnv.LIVE`) for a deployment,
    whose keys are live keys: a test prefix there would be a key the environment checks misfile.

    `org_id` picks the organisation's id (the demo puts the Owner in `org_acme`); an existing
    organisation with that id is reused.

    Later calls return the recorded organisation and user with no key (the plaintext is never
    stored, so the caller must keep the first one) and `created=False`.

    `earlier_state` names what the caller found of an earlier install (key files, audit records,
    tables); with no Owner recorded and any of it present, `BootstrapRefused` is raised and nothing
    is written, because a new Owner would take over state that belonged to another.
    """
    existing = _recorded_local_owner(store)
    if existing is not None:
        return existing
    if earlier_state:
        raise BootstrapRefused(
            f"no Owner is recorded in the control store but earlier state is present ({', '.join(earlier_state)}); "
            "refusing to create a new Owner over it")
    created_at = now()
    existing_org = store.get_org(org_id) if org_id else None
    org = existing_org or Organization(
        org_id=org_id or new_id("org"), name=org_name, status=OrgStatus.ACTIVE, created_at=created_at)
    user = User(
        user_id=new_id("usr"),
        org_id=org.org_id,
        email=email,
        role=Role.OWNER,
        status=UserStatus.ACTIVE,
        department=None,
        region=None,
        created_at=created_at,
    )
    store.put_org(org)
    try:
        store.put_user(user)
    except Conflict:
        # Emails are unique: another process is bootstrapping the same owner right now and got
        # there first. Retire the organisation we made and adopt theirs once they record it.
        if existing_org is None:
            store.put_org(replace(org, status=OrgStatus.SUSPENDED))
        return _await_recorded_owner(store)
    plaintext, record = issue_api_key(
        store,
        hasher,
        org_id=org.org_id,
        user_id=user.user_id,
        env=key_env,
        scopes=ALL_SCOPES,
        name=LOCAL_OWNER_KEY_NAME,
        now=now,
    )
    # The claim comes after the writes, so a recorded owner always exists in the store.
    if store.put_setting_if_absent(LOCAL_OWNER_USER_SETTING, user.user_id) != user.user_id:
        # Another process bootstrapped at the same moment and won: retire what we made so no
        # second Owner credential is left behind, then adopt the winner's owner.
        revoke_api_key(store, None, record.key_id, now=now)
        store.put_user(replace(user, status=UserStatus.REMOVED))
        if existing_org is None:
            store.put_org(replace(org, status=OrgStatus.SUSPENDED))
        winner = _recorded_local_owner(store)
        assert winner is not None  # the claim we lost names it
        return winner
    store.put_setting(DEFAULT_ORG_SETTING, org.org_id)
    return LocalOwner(org=org, user=user, api_key_plaintext=plaintext, created=True)


def reissue_local_owner_key(
    store: ControlStore,
    trail: IamAuditTrail,
    hasher: ApiKeyHasher,
    *,
    actor: str,
    request_id: str,
    key_env: KeyEnv = KeyEnv.TEST,
    now: Callable[[], datetime] = utc_now,
) -> ReissuedOwnerKey:
    """A new all-scopes key for the recorded local Owner, whose earlier local Owner keys are revoked.

    For an Owner key file that was lost (or may have leaked): whoever holds the state folder can run
    it, so it is recorded in the Owner organisation's IAM chain (`api_key.revoked` for each old key,
    then `api_key.created`) with `actor` saying who ran it. Raises `NotFound` if no Owner is recorded.
    """
    owner = _recorded_local_owner(store)
    if owner is None:
        raise NotFound("no local Owner is recorded in the control store; start `hd dev` once to create it")
    org_id, user_id = owner.org.org_id, owner.user.user_id
    revoked: list[str] = []
    for old in store.list_api_keys(org_id):
        if (old.user_id == user_id and old.revoked_at is None
                and old.name in (LOCAL_OWNER_KEY_NAME, LOCAL_OWNER_REISSUED_KEY_NAME)):
            after = revoke_api_key(store, None, old.key_id, now=now)
            trail.record(org_id, IamEventType.API_KEY_REVOKED, actor=actor, target=old.key_id, before=old,
                         after=after, request_id=request_id)
            revoked.append(old.key_id)
    plaintext, record = issue_api_key(store, hasher, org_id=org_id, user_id=user_id, env=key_env, scopes=ALL_SCOPES,
                                      name=LOCAL_OWNER_REISSUED_KEY_NAME, now=now)
    trail.record(org_id, IamEventType.API_KEY_CREATED, actor=actor, target=record.key_id, before=None, after=record,
                 request_id=request_id)
    return ReissuedOwnerKey(api_key_plaintext=plaintext, record=record, revoked_key_ids=tuple(revoked))


def set_local_owner_password(
    store: ControlStore,
    trail: IamAuditTrail,
    hasher: ApiKeyHasher,
    *,
    new_password: str,
    current_password: str | None,
    actor: str,
    request_id: str,
    now: Callable[[], datetime] = utc_now,
) -> User:
    """Set the recorded local Owner's password from the state folder: `user.password_set`; sessions end.

    The local Owner starts without one, and no API route gives users a first password of their own
    (an Owner's or Admin's reset needs a second person). Whoever holds the state folder holds the
    Owner key already, so a first password needs nothing more; one already set is replaced only with
    the current one, checked under the login throttle as `PUT /v1/auth/password` checks it. Recorded
    in the Owner organisation's IAM chain with `actor` saying who ran it. Raises `NotFound` (no
    Owner recorded), `Conflict` (a password is set and no current one was given),
    `AuthenticationFailed` (a wrong current one) and `InvalidRequest` (the length rule, or no change).
    """
    owner = _recorded_local_owner(store)
    if owner is None:
        raise NotFound("no local Owner is recorded in the control store; start `hd dev` once to create it")
    user, at = owner.user, now()
    if user.password_hash is not None:
        if current_password is None:
            raise Conflict("the local Owner already has a password; give the current one to replace it")

        def proven() -> None:
            if not verify_password(hasher, user.password_hash, current_password[: MAX_PASSWORD_LENGTH + 1]):
                raise AuthenticationFailed("current password wrong, while setting the local Owner's password")

        auth.throttled(AuthThrottle(store, now=now), user.email, proven)
        if current_password == new_password:
            raise InvalidRequest("the new password must differ from the current one")
    changed = auth.ended_sessions(store, set_password(store, hasher, user.user_id, new_password), at)
    trail.record(user.org_id, IamEventType.USER_PASSWORD_SET, actor=actor, target=user.user_id, before=user,
                 after=changed, request_id=request_id)
    return changed


def _await_recorded_owner(store: ControlStore, timeout_seconds: float = 10.0) -> LocalOwner:
    """The owner another process is recording; it writes its key and claim right after its user."""
    deadline = time.monotonic() + timeout_seconds
    while (winner := _recorded_local_owner(store)) is None:
        if time.monotonic() > deadline:
            raise Conflict("another process holds the local owner's email but never recorded the owner")
        time.sleep(0.05)
    return winner


def ensure_pepper(store: ControlStore) -> bytes:
    """The local API-key cache pepper: 32 random bytes, generated on first call and reused afterwards."""
    candidate = base64.b64encode(secrets.token_bytes(PEPPER_BYTES)).decode("ascii")
    stored = store.put_setting_if_absent(PEPPER_SETTING, candidate)
    pepper = base64.b64decode(stored, validate=True)
    if len(pepper) != PEPPER_BYTES:
        raise ValueError(f"setting {PEPPER_SETTING!r} does not hold a {PEPPER_BYTES}-byte pepper")
    return pepper


def _recorded_local_owner(store: ControlStore) -> LocalOwner | None:
    user_id = store.get_setting(LOCAL_OWNER_USER_SETTING)
    if user_id is None:
        return None
    user = store.get_user(user_id)
    org = None if user is None else store.get_org(user.org_id)
    if user is None or org is None:
        raise NotFound(f"the local owner {user_id} recorded in settings is missing from the control store")
    # Heals a start that stopped between the claim and this write.
    if store.get_setting(DEFAULT_ORG_SETTING) is None:
        store.put_setting_if_absent(DEFAULT_ORG_SETTING, org.org_id)
    return LocalOwner(org=org, user=user, api_key_plaintext=None, created=False)


DEFAULT_ENVIRONMENTS: tuple[tuple[str, KeyEnv], ...] = (("production", KeyEnv.LIVE), ("staging", KeyEnv.TEST))


def ensure_environments(
    store: ControlStore, org_id: str, *, now: Callable[[], datetime] = utc_now
) -> list[Environment]:
    """Give an organisation its `production` (hd_live_) and `staging` (hd_test_) environments once."""
    existing = store.list_environments(org_id)
    if existing:
        return existing
    for name, key_env in DEFAULT_ENVIRONMENTS:
        store.put_environment(
            Environment(env_id=new_id("env"), org_id=org_id, name=name, key_env=key_env, created_at=now())
        )
    return store.list_environments(org_id)
