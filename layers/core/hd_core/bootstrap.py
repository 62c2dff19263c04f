"""First-start facts for a local install: the owner's organisation, user and API key, and the cache pepper.

Both functions are idempotent and safe when two processes start on the same store at once: the
first writer of a setting wins (`put_setting_if_absent`) and the loser adopts the winner's state.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from hd_core.api_keys import ApiKeyHasher, issue_api_key, revoke_api_key
from hd_core.errors import NotFound
from hd_core.models import ALL_SCOPES, KeyEnv, Organization, OrgStatus, Role, User, UserStatus, new_id, utc_now
from hd_core.ports import ControlStore

LOCAL_OWNER_USER_SETTING = "local_owner.user_id"
DEFAULT_ORG_SETTING = "default_org_id"
PEPPER_SETTING = "api_key_cache_pepper"
PEPPER_BYTES = 32
LOCAL_OWNER_KEY_NAME = "local owner (created by bootstrap)"


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
    now: Callable[[], datetime] = utc_now,
) -> LocalOwner:
    """Create, once, an active organisation with an Owner user and an all-scopes `hd_test_` key for them.

    `org_id` picks the organisation's id (the demo puts the Owner in `org_acme`); an existing
    organisation with that id is reused.

    Later calls return the recorded organisation and user with no key (the plaintext is never
    stored, so the caller must keep the first one) and `created=False`.
    """
    existing = _recorded_local_owner(store)
    if existing is not None:
        return existing
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
    store.put_user(user)
    plaintext, record = issue_api_key(
        store,
        hasher,
        org_id=org.org_id,
        user_id=user.user_id,
        env=KeyEnv.TEST,
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
