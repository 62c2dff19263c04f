"""Local bootstrap: one Owner, once; a pepper, once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.api_keys import ApiKeyAuthenticator, ApiKeyHasher, key_id_of
from hd_core.bootstrap import (
    DEFAULT_ORG_SETTING,
    LOCAL_OWNER_USER_SETTING,
    PEPPER_SETTING,
    BootstrapRefused,
    bootstrap_local_owner,
    ensure_pepper,
    reissue_local_owner_key,
)
from hd_core.errors import NotFound
from hd_core.models import ALL_SCOPES, KeyEnv, OrgStatus, Role, UserStatus


def _fast_hasher() -> ApiKeyHasher:
    return ApiKeyHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteControlStore]:
    store = SqliteControlStore(tmp_path / "control.sqlite3")
    yield store
    store.close()


def test_first_call_creates_an_active_org_owner_and_all_scopes_test_key(store: SqliteControlStore) -> None:
    owner = bootstrap_local_owner(store, _fast_hasher(), org_name="Acme Dev", email="me@acme.test")
    assert owner.created
    assert owner.org.name == "Acme Dev" and owner.org.status == OrgStatus.ACTIVE
    assert owner.org.org_id.startswith("org_")
    assert owner.user.user_id.startswith("usr_")
    assert (owner.user.email, owner.user.role, owner.user.status) == ("me@acme.test", Role.OWNER, UserStatus.ACTIVE)
    assert owner.api_key_plaintext is not None and owner.api_key_plaintext.startswith("hd_test_")
    record = store.get_api_key(key_id_of(owner.api_key_plaintext))
    assert record is not None
    assert (record.org_id, record.user_id, record.env) == (owner.org.org_id, owner.user.user_id, KeyEnv.TEST)
    assert record.scopes == ALL_SCOPES
    assert store.get_setting(DEFAULT_ORG_SETTING) == owner.org.org_id
    assert store.get_setting(LOCAL_OWNER_USER_SETTING) == owner.user.user_id


def test_the_bootstrap_key_logs_in_as_the_owner(store: SqliteControlStore) -> None:
    hasher = _fast_hasher()
    owner = bootstrap_local_owner(store, hasher)
    assert owner.api_key_plaintext is not None
    principal = ApiKeyAuthenticator(store, ensure_pepper(store), hasher=hasher).authenticate(
        owner.user.user_id, owner.api_key_plaintext
    )
    assert (principal.user_id, principal.role, principal.org_id) == (owner.user.user_id, Role.OWNER, owner.org.org_id)


def test_second_call_returns_the_same_owner_and_creates_nothing(store: SqliteControlStore) -> None:
    first = bootstrap_local_owner(store, _fast_hasher())
    second = bootstrap_local_owner(store, _fast_hasher(), org_name="Ignored", email="ignored@localhost")
    assert not second.created
    assert second.api_key_plaintext is None
    assert (second.org, second.user) == (first.org, first.user)
    assert store.list_orgs() == [first.org]
    assert store.list_users(first.org.org_id) == [first.user]
    assert len(store.list_api_keys(first.org.org_id)) == 1


def test_bootstrap_is_idempotent_across_reopening_the_store(tmp_path: Path) -> None:
    with SqliteControlStore(tmp_path / "control.sqlite3") as store:
        first = bootstrap_local_owner(store, _fast_hasher())
    with SqliteControlStore(tmp_path / "control.sqlite3") as store:
        again = bootstrap_local_owner(store, _fast_hasher())
    assert not again.created and again.user == first.user


class FirstOwnerLookupIsStale:
    """A store as seen by a second process that looked for the owner just before the first one claimed it."""

    def __init__(self, store: SqliteControlStore) -> None:
        self._store = store
        self._stale_reads_left = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def get_setting(self, name: str) -> str | None:
        if name == LOCAL_OWNER_USER_SETTING and self._stale_reads_left:
            self._stale_reads_left -= 1
            return None
        return self._store.get_setting(name)


def test_a_concurrent_loser_retires_what_it_made_and_adopts_the_winner(store: SqliteControlStore) -> None:
    winner = bootstrap_local_owner(store, _fast_hasher())
    loser = bootstrap_local_owner(FirstOwnerLookupIsStale(store), _fast_hasher())
    assert not loser.created and loser.api_key_plaintext is None
    assert (loser.org, loser.user) == (winner.org, winner.user)
    assert store.get_setting(DEFAULT_ORG_SETTING) == winner.org.org_id
    # The owner's email is unique, so the loser never got a user or key in: only its org is left, suspended.
    stray_orgs = [org for org in store.list_orgs() if org.org_id != winner.org.org_id]
    assert [org.status for org in stray_orgs] == [OrgStatus.SUSPENDED]
    assert store.list_users(stray_orgs[0].org_id) == []
    assert store.list_api_keys(stray_orgs[0].org_id) == []


def test_a_recorded_owner_missing_from_the_store_is_reported(store: SqliteControlStore) -> None:
    store.put_setting(LOCAL_OWNER_USER_SETTING, "usr_gone")
    with pytest.raises(NotFound, match="usr_gone"):
        bootstrap_local_owner(store, _fast_hasher())


def test_pepper_is_32_random_bytes_generated_once(store: SqliteControlStore, tmp_path: Path) -> None:
    pepper = ensure_pepper(store)
    assert len(pepper) == 32
    assert ensure_pepper(store) == pepper
    with SqliteControlStore(tmp_path / "control.sqlite3") as reopened:
        assert ensure_pepper(reopened) == pepper
    other_store = SqliteControlStore(tmp_path / "other.sqlite3")
    assert ensure_pepper(other_store) != pepper
    other_store.close()


def test_a_corrupted_pepper_setting_is_refused(store: SqliteControlStore) -> None:
    store.put_setting(PEPPER_SETTING, "c2hvcnQ=")
    with pytest.raises(ValueError, match="pepper"):
        ensure_pepper(store)


def test_no_owner_is_made_over_earlier_state(store: SqliteControlStore) -> None:
    with pytest.raises(BootstrapRefused, match=r"earlier state is present \(owner.key, audit/\)"):
        bootstrap_local_owner(store, _fast_hasher(), earlier_state=["owner.key", "audit/"])
    assert store.list_orgs() == [] and store.get_setting(LOCAL_OWNER_USER_SETTING) is None


def test_a_recorded_owner_is_returned_whatever_state_lies_next_to_it(store: SqliteControlStore) -> None:
    first = bootstrap_local_owner(store, _fast_hasher())
    again = bootstrap_local_owner(store, _fast_hasher(), earlier_state=["owner.key"])
    assert (again.user, again.created, again.api_key_plaintext) == (first.user, False, None)


def test_reissuing_revokes_the_earlier_owner_keys_and_records_both_changes(
    store: SqliteControlStore, tmp_path: Path
) -> None:
    from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
    from hd_core.adapters.local_keys import LocalKeyFile
    from hd_core.iam_audit import IamAuditTrail

    owner = bootstrap_local_owner(store, _fast_hasher())
    assert owner.api_key_plaintext is not None
    trail = IamAuditTrail(store, LocalFolderCheckpointStore(tmp_path), LocalKeyFile(tmp_path / "keys.json"))
    first = reissue_local_owner_key(store, trail, _fast_hasher(), actor="local:ops", request_id="req_1")
    second = reissue_local_owner_key(store, trail, _fast_hasher(), actor="local:ops", request_id="req_2")

    assert first.revoked_key_ids == (key_id_of(owner.api_key_plaintext),)
    assert second.revoked_key_ids == (first.record.key_id,)
    active = [k.key_id for k in store.list_api_keys(owner.org.org_id) if k.revoked_at is None]
    assert active == [second.record.key_id] and set(second.record.scopes) == set(ALL_SCOPES)
    events = store.list_iam_events(owner.org.org_id)
    assert [(e.event_type, e.target, e.actor) for e in events] == [
        ("api_key.revoked", key_id_of(owner.api_key_plaintext), "local:ops"),
        ("api_key.created", first.record.key_id, "local:ops"),
        ("api_key.revoked", first.record.key_id, "local:ops"),
        ("api_key.created", second.record.key_id, "local:ops"),
    ]
    verification = trail.verify_chain(owner.org.org_id)
    assert verification.chain_valid and verification.checkpoint_size == 4


def test_reissuing_without_a_recorded_owner_is_not_found(store: SqliteControlStore, tmp_path: Path) -> None:
    from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
    from hd_core.adapters.local_keys import LocalKeyFile
    from hd_core.iam_audit import IamAuditTrail

    trail = IamAuditTrail(store, LocalFolderCheckpointStore(tmp_path), LocalKeyFile(tmp_path / "keys.json"))
    with pytest.raises(NotFound, match="start `hd dev` once"):
        reissue_local_owner_key(store, trail, _fast_hasher(), actor="local:ops", request_id="req_1")


def _trail(store: SqliteControlStore, tmp_path: Path) -> Any:
    from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
    from hd_core.adapters.local_keys import LocalKeyFile
    from hd_core.iam_audit import IamAuditTrail

    return IamAuditTrail(store, LocalFolderCheckpointStore(tmp_path), LocalKeyFile(tmp_path / "keys.json"))


def test_the_local_owner_is_made_without_a_password_and_gets_a_first_one_from_the_state_folder(
    store: SqliteControlStore, tmp_path: Path
) -> None:
    from hd_core.auth import prove_password
    from hd_core.bootstrap import set_local_owner_password

    hasher = _fast_hasher()
    owner = bootstrap_local_owner(store, hasher)
    assert owner.user.email == "owner@localhost" and owner.user.password_hash is None
    trail = _trail(store, tmp_path)

    changed = set_local_owner_password(store, trail, hasher, new_password="correct horse battery",
                                       current_password=None, actor="local:ops", request_id="req_1")

    assert changed.password_hash is not None and not changed.password_must_change
    proven = prove_password(store, hasher, email="owner@localhost", password="correct horse battery", totp_code=None,
                            at=changed.tokens_valid_after or changed.created_at)
    assert proven.user_id == owner.user.user_id
    events = store.list_iam_events(owner.org.org_id)
    assert [(e.event_type, e.target, e.actor, e.request_id) for e in events] == [
        ("user.password_set", owner.user.user_id, "local:ops", "req_1")]
    assert "correct horse" not in repr(events[0].after) and trail.verify_chain(owner.org.org_id).chain_valid


def test_setting_the_local_owner_password_again_needs_the_current_one(
    store: SqliteControlStore, tmp_path: Path
) -> None:
    from functools import partial

    from hd_core.bootstrap import set_local_owner_password
    from hd_core.errors import AuthenticationFailed, Conflict, InvalidRequest

    hasher = _fast_hasher()
    owner = bootstrap_local_owner(store, hasher)
    trail = _trail(store, tmp_path)
    set_password = partial(set_local_owner_password, store, trail, hasher, actor="local:ops", request_id="req_1")
    set_password(new_password="first password 1", current_password=None)

    with pytest.raises(Conflict, match="already has a password"):
        set_password(new_password="second password 2", current_password=None)
    with pytest.raises(AuthenticationFailed):
        set_password(new_password="second password 2", current_password="a wrong guess")
    with pytest.raises(InvalidRequest, match="differ"):
        set_password(new_password="first password 1", current_password="first password 1")
    with pytest.raises(InvalidRequest, match="12 characters"):
        set_password(new_password="short", current_password="first password 1")
    set_password(new_password="second password 2", current_password="first password 1")

    assert [e.event_type for e in store.list_iam_events(owner.org.org_id)] == ["user.password_set"] * 2


def test_setting_a_password_without_a_recorded_owner_is_not_found(store: SqliteControlStore, tmp_path: Path) -> None:
    from hd_core.bootstrap import set_local_owner_password

    with pytest.raises(NotFound, match="start `hd dev` once"):
        set_local_owner_password(store, _trail(store, tmp_path), _fast_hasher(), new_password="a long password",
                                 current_password=None, actor="local:ops", request_id="req_1")
