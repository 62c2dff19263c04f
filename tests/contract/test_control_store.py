"""The `ControlStore` contract: what every adapter (SQLite, DynamoDB) promises, one test per documented behaviour."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from hd_core.errors import Conflict, NotFound
from hd_core.models import (
    ApiKeyRecord,
    Environment,
    IamEvent,
    JitRequest,
    JitStatus,
    KeyEnv,
    Organization,
    OrgStatus,
    RefreshToken,
    Role,
    UsageDelta,
    User,
    UserStatus,
    new_id,
)
from hd_core.policies import (
    AbacConditions,
    AbacPolicy,
    ColumnTag,
    JitGrant,
    MaskFunction,
    MaskRule,
    PhiGrant,
    PiiType,
    PolicyKind,
    PolicyObject,
    PolicySnapshot,
    QuotaLimit,
    RowFilter,
    TableBinding,
    TimeWindow,
)
from hd_core.policy_codec import kind_of, object_id
from hd_core.ports import ControlStore
from tests.contract.conftest import StoreFactory

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EASTERN = timezone(timedelta(hours=-5))


def _org(name: str = "Acme", created_at: datetime = T0, **changes: Any) -> Organization:
    return replace(Organization(new_id("org"), name, OrgStatus.ACTIVE, created_at), **changes)


def _user(org: Organization, created_at: datetime = T0, **changes: Any) -> User:
    user_id = new_id("usr")
    user = User(user_id, org.org_id, f"{user_id}@acme.test", Role.ANALYST, UserStatus.ACTIVE, None, None, created_at)
    return replace(user, **changes)


def _key(org: Organization, user: User, key_id: str = "hd_live_AbCdEfGh", created_at: datetime = T0) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=key_id,
        org_id=org.org_id,
        user_id=user.user_id,
        env=KeyEnv.LIVE,
        key_hash="$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        scopes=("query:read", "policies:read"),
        created_at=created_at,
        expires_at=created_at + timedelta(days=90),
        revoked_at=None,
        name="ci",
    )


def _token(token_id: str = "rt_1", family_id: str = "fam_1", issued_at: datetime = T0) -> RefreshToken:
    return RefreshToken(
        token_id=token_id,
        family_id=family_id,
        user_id="usr_1",
        org_id="org_1",
        token_hash="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        issued_at=issued_at,
        expires_at=issued_at + timedelta(days=30),
    )


def _jit(request_id: str = "jitr_1", org_id: str = "org_1", requested_at: datetime = T0, **changes: Any) -> JitRequest:
    request = JitRequest(
        request_id=request_id,
        org_id=org_id,
        user_id="usr_1",
        role=Role.ADMIN,
        reason="incident 42",
        duration_seconds=3600,
        status=JitStatus.PENDING,
        requested_at=requested_at,
    )
    return replace(request, **changes)


def _approved(request: JitRequest) -> JitRequest:
    return replace(
        request,
        status=JitStatus.APPROVED,
        decided_by="usr_owner",
        decided_at=request.requested_at + timedelta(minutes=5),
        decision_reason="on call",
        grant_id="jit_1",
    )


def _event(seq: int, chain_id: str = "org_1", **changes: Any) -> IamEvent:
    event = IamEvent(
        chain_id=chain_id,
        seq=seq,
        event_id=f"evt_{chain_id}_{seq}",
        event_type="user.role_changed",
        actor="usr_owner",
        target="usr_1",
        before={"role": "Analyst"},
        after={"role": "Admin", "scopes": ["query:read"], "limits": {"rows": 10, "credits": 2.5}},
        at=T0 + timedelta(seconds=seq),
        request_id=f"req_{seq}",
        prev_hash=f"{seq - 1:064x}",
        hash=f"{seq:064x}",
    )
    return replace(event, **changes)


def _run_threads(count: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run `work(i)` on `count` threads at once; the errors they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(worker: int) -> None:
        try:
            start.wait()
            work(worker)
        except BaseException as error:  # collected and asserted on the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(worker,)) for worker in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


# --- organisations -------------------------------------------------------------------------------


def test_orgs_round_trip_and_list_oldest_first(store: ControlStore) -> None:
    later = _org("Beta", T0 + timedelta(hours=1))
    earlier = _org("Alpha", mfa_required=True)
    store.put_org(later)
    store.put_org(earlier)
    assert store.get_org(earlier.org_id) == earlier
    assert store.get_org("org_missing") is None
    assert store.list_orgs() == [earlier, later]


def test_put_org_replaces(store: ControlStore) -> None:
    org = _org()
    store.put_org(org)
    store.put_org(replace(org, status=OrgStatus.SUSPENDED, mfa_required=True))
    assert store.get_org(org.org_id) == replace(org, status=OrgStatus.SUSPENDED, mfa_required=True)
    assert len(store.list_orgs()) == 1


# --- environments --------------------------------------------------------------------------------


def test_environments_round_trip_and_list_per_org_oldest_first(store: ControlStore) -> None:
    staging = Environment("env_staging", "org_a", "staging", KeyEnv.TEST, T0 + timedelta(minutes=1))
    production = Environment("env_prod", "org_a", "production", KeyEnv.LIVE, T0)
    elsewhere = Environment("env_other", "org_b", "production", KeyEnv.LIVE, T0)
    for env in (staging, elsewhere, production):
        store.put_environment(env)
    assert store.get_environment("env_staging") == staging
    assert store.get_environment("env_missing") is None
    assert store.list_environments("org_a") == [production, staging]
    assert store.list_environments("org_missing") == []


def test_put_environment_replaces(store: ControlStore) -> None:
    env = Environment("env_1", "org_a", "staging", KeyEnv.TEST, T0)
    store.put_environment(env)
    store.put_environment(replace(env, name="preview"))
    assert store.list_environments("org_a") == [replace(env, name="preview")]


# --- users ---------------------------------------------------------------------------------------


def test_users_round_trip_with_every_field_and_list_by_org(store: ControlStore) -> None:
    acme, other = _org(), _org("Other")
    alice = _user(
        acme,
        department="finance",
        region="eu",
        role=Role.OWNER,
        name="Alice Liddell",
        password_hash="$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        mfa_secret="JBSWY3DPEHPK3PXP",
        mfa_enabled=True,
        mfa_last_step=59_078_880,
        external_ids=("https://idp.example#alice", "https://other.example#a-1"),
        tokens_valid_after=T0 + timedelta(seconds=1, microseconds=250),
        password_must_change=True,
    )
    bob = _user(acme, T0 + timedelta(minutes=1), status=UserStatus.SUSPENDED)
    outsider = _user(other)
    for user in (bob, outsider, alice):
        store.put_user(user)
    assert store.get_user(alice.user_id) == alice
    assert store.get_user("usr_missing") is None
    assert store.list_users(acme.org_id) == [alice, bob]
    assert store.list_users("org_missing") == []


def test_put_user_replaces_including_removing_credentials(store: ControlStore) -> None:
    user = _user(
        _org(), password_hash="$argon2id$old", mfa_secret="JBSWY3DPEHPK3PXP", mfa_enabled=True, mfa_last_step=7
    )
    store.put_user(user)
    reset = replace(
        user, status=UserStatus.REMOVED, password_hash=None, mfa_secret=None, mfa_enabled=False, mfa_last_step=0
    )
    store.put_user(reset)
    assert store.get_user(user.user_id) == reset


def test_get_user_by_email_ignores_case(store: ControlStore) -> None:
    user = _user(_org(), email="Alice.Smith@Example.COM")
    store.put_user(user)
    assert store.get_user_by_email("alice.smith@example.com") == user
    assert store.get_user_by_email("ALICE.SMITH@EXAMPLE.COM") == user
    assert store.get_user_by_email("bob@example.com") is None


def test_email_case_folding_covers_non_ascii_letters(store: ControlStore) -> None:
    user = _user(_org(), email="ÄNNE@Bücher.example")
    store.put_user(user)
    assert store.get_user_by_email("änne@bücher.example") == user
    with pytest.raises(Conflict):
        store.put_user(_user(_org(), email="änne@BÜCHER.example"))


def test_an_email_held_by_another_user_in_any_case_is_a_conflict_and_stores_nothing(store: ControlStore) -> None:
    org = _org()
    holder = _user(org, email="dup@acme.test")
    store.put_user(holder)
    newcomer = _user(org, email="DUP@acme.test", external_ids=("https://idp.example#newcomer",))
    with pytest.raises(Conflict):
        store.put_user(newcomer)
    assert store.get_user(newcomer.user_id) is None
    assert store.get_user_by_external_id("https://idp.example#newcomer") is None
    assert store.get_user_by_email("dup@acme.test") == holder
    assert store.list_users(org.org_id) == [holder]


def test_changing_an_email_to_one_another_user_holds_is_a_conflict_and_keeps_the_old_one(store: ControlStore) -> None:
    org = _org()
    alice, bob = _user(org, email="alice@acme.test"), _user(org, email="bob@acme.test")
    store.put_user(alice)
    store.put_user(bob)
    with pytest.raises(Conflict):
        store.put_user(replace(bob, email="Alice@acme.test", role=Role.ADMIN))
    assert store.get_user(bob.user_id) == bob
    assert store.get_user_by_email("bob@acme.test") == bob
    assert store.get_user_by_email("alice@acme.test") == alice


def test_a_user_may_rewrite_its_own_email_and_the_old_one_becomes_free(store: ControlStore) -> None:
    org = _org()
    alice = _user(org, email="alice@acme.test")
    store.put_user(alice)
    store.put_user(replace(alice, email="ALICE@acme.test"))  # same email, other case: still hers
    renamed = replace(alice, email="alice.liddell@acme.test")
    store.put_user(renamed)
    assert store.get_user_by_email("alice.liddell@acme.test") == renamed
    assert store.get_user_by_email("alice@acme.test") is None
    successor = _user(org, email="alice@acme.test")
    store.put_user(successor)
    assert store.get_user_by_email("alice@acme.test") == successor


def test_get_user_by_external_id_finds_the_linked_user(store: ControlStore) -> None:
    org = _org()
    linked = _user(org, external_ids=("https://idp.example#sub-1", "https://idp.example#sub-2"))
    store.put_user(linked)
    store.put_user(_user(org))
    assert store.get_user_by_external_id("https://idp.example#sub-2") == linked
    assert store.get_user_by_external_id("https://idp.example#sub-3") is None
    assert store.get_user_by_external_id("https://other.example#sub-1") is None


def test_an_external_id_held_by_another_user_is_a_conflict_and_stores_nothing(store: ControlStore) -> None:
    org = _org()
    holder = _user(org, external_ids=("https://idp.example#sub-1",))
    store.put_user(holder)
    newcomer = _user(org, external_ids=("https://idp.example#sub-2", "https://idp.example#sub-1"))
    with pytest.raises(Conflict):
        store.put_user(newcomer)
    assert store.get_user(newcomer.user_id) is None
    assert store.get_user_by_email(newcomer.email) is None
    assert store.get_user_by_external_id("https://idp.example#sub-2") is None
    assert store.get_user_by_external_id("https://idp.example#sub-1") == holder


def test_unlinking_an_external_id_frees_it(store: ControlStore) -> None:
    org = _org()
    first = _user(org, external_ids=("https://idp.example#sub-1", "https://idp.example#sub-2"))
    store.put_user(first)
    store.put_user(replace(first, external_ids=("https://idp.example#sub-2",)))
    assert store.get_user_by_external_id("https://idp.example#sub-1") is None
    second = _user(org, external_ids=("https://idp.example#sub-1",))
    store.put_user(second)
    assert store.get_user_by_external_id("https://idp.example#sub-1") == second
    assert store.get_user_by_external_id("https://idp.example#sub-2") == replace(
        first, external_ids=("https://idp.example#sub-2",)
    )


def test_a_user_listing_the_same_external_id_twice_is_not_in_conflict_with_itself(store: ControlStore) -> None:
    user = _user(_org(), external_ids=("https://idp.example#sub-1", "https://idp.example#sub-1"))
    store.put_user(user)
    assert store.get_user_by_external_id("https://idp.example#sub-1") == user


def test_concurrent_users_claiming_one_email_exactly_one_wins(store: ControlStore) -> None:
    org = _org()
    spellings = ("shared", "SHARED", "Shared", "sHared", "shAred", "sharED")  # one email, six spellings
    contenders = [_user(org, email=f"{spelling}@acme.test") for spelling in spellings]
    conflicts: list[str] = []

    def claim(worker: int) -> None:
        try:
            store.put_user(contenders[worker])
        except Conflict:
            conflicts.append(contenders[worker].user_id)

    assert _run_threads(len(contenders), claim) == []
    assert len(conflicts) == len(contenders) - 1
    assert len(store.list_users(org.org_id)) == 1
    winner = store.get_user_by_email("shared@acme.test")
    assert winner is not None and winner.user_id not in conflicts


def test_advance_mfa_step_only_moves_forward(store: ControlStore) -> None:
    user = _user(_org())
    store.put_user(user)
    assert store.advance_mfa_step(user.user_id, 100) is True
    assert store.advance_mfa_step(user.user_id, 100) is False  # the same code again
    assert store.advance_mfa_step(user.user_id, 99) is False
    assert store.advance_mfa_step(user.user_id, 101) is True
    stored = store.get_user(user.user_id)
    assert stored is not None and stored.mfa_last_step == 101
    assert store.advance_mfa_step("usr_absent", 5) is False


def test_end_user_sessions_moves_tokens_valid_after_forward_only(store: ControlStore) -> None:
    user = _user(_org())
    store.put_user(user)
    store.end_user_sessions(user.user_id, T0 + timedelta(minutes=5))
    store.end_user_sessions(user.user_id, T0 + timedelta(minutes=1))  # an earlier time keeps the later one
    stored = store.get_user(user.user_id)
    assert stored is not None and stored.tokens_valid_after == T0 + timedelta(minutes=5)
    store.end_user_sessions(user.user_id, (T0 + timedelta(minutes=9)).astimezone(EASTERN))
    stored = store.get_user(user.user_id)
    assert stored is not None and stored.tokens_valid_after == T0 + timedelta(minutes=9)
    assert stored.tokens_valid_after.tzinfo is not None
    with pytest.raises(NotFound):
        store.end_user_sessions("usr_absent", T0)


def test_put_user_from_a_copy_read_before_sessions_ended_keeps_them_ended(store: ControlStore) -> None:
    user = _user(_org())
    store.put_user(user)
    stale = store.get_user(user.user_id)
    assert stale is not None and stale.tokens_valid_after is None
    store.end_user_sessions(user.user_id, T0 + timedelta(minutes=5))
    store.put_user(replace(stale, name="renamed from an old copy"))
    stored = store.get_user(user.user_id)
    assert stored is not None and stored.name == "renamed from an old copy"
    assert stored.tokens_valid_after == T0 + timedelta(minutes=5)
    # An explicit later time still moves it forward, and an earlier one does not move it back.
    store.put_user(replace(stored, tokens_valid_after=T0 + timedelta(minutes=7)))
    store.put_user(replace(stored, tokens_valid_after=T0 + timedelta(minutes=6)))
    again = store.get_user(user.user_id)
    assert again is not None and again.tokens_valid_after == T0 + timedelta(minutes=7)


def test_concurrent_session_ends_and_user_writes_keep_the_latest_time(store: ControlStore) -> None:
    user = _user(_org())
    store.put_user(user)
    stale = store.get_user(user.user_id)
    assert stale is not None

    def work(worker: int) -> None:
        if worker % 2:
            store.end_user_sessions(user.user_id, T0 + timedelta(minutes=worker))
        else:
            store.put_user(replace(stale, name=f"writer {worker}"))

    assert _run_threads(9, work) == []
    stored = store.get_user(user.user_id)
    # Odd workers end sessions at minutes 1, 3, 5 and 7; no stale write takes the latest back.
    assert stored is not None and stored.tokens_valid_after == T0 + timedelta(minutes=7)


def test_two_logins_racing_with_one_totp_step_exactly_one_spends_it(store: ControlStore) -> None:
    user = _user(_org())
    store.put_user(user)
    results: list[bool] = []
    assert _run_threads(6, lambda worker: results.append(store.advance_mfa_step(user.user_id, 500))) == []
    assert sorted(results) == [False] * 5 + [True]


# --- API keys ------------------------------------------------------------------------------------


def test_api_keys_round_trip_with_every_field(store: ControlStore) -> None:
    org = _org()
    user = _user(org)
    record = replace(
        _key(org, user),
        allowed_cidrs=("10.0.0.0/8", "2001:db8::/32"),
        rotated_to="hd_live_NextOne1",
        expiry_recorded_at=T0 + timedelta(days=91),
    )
    store.put_api_key(record)
    assert store.get_api_key(record.key_id) == record
    assert store.get_api_key("hd_live_missing0") is None


def test_a_key_without_expiry_round_trips(store: ControlStore) -> None:
    org = _org()
    record = replace(_key(org, _user(org)), expires_at=None, env=KeyEnv.TEST, scopes=())
    store.put_api_key(record)
    assert store.get_api_key(record.key_id) == record


def test_put_api_key_never_overwrites_an_existing_key_id(store: ControlStore) -> None:
    org = _org()
    user = _user(org)
    original = _key(org, user)
    store.put_api_key(original)
    with pytest.raises(Conflict):
        store.put_api_key(replace(original, key_hash="$argon2id$attacker", user_id="usr_attacker"))
    assert store.get_api_key(original.key_id) == original


def test_list_api_keys_is_per_org_and_includes_revoked(store: ControlStore) -> None:
    org, other = _org(), _org("Other")
    user = _user(org)
    first = _key(org, user, "hd_live_first000")
    second = _key(org, user, "hd_live_second00", T0 + timedelta(seconds=1))
    store.put_api_key(second)
    store.put_api_key(first)
    store.put_api_key(_key(other, _user(other), "hd_live_others00"))
    store.revoke_api_key(first.key_id, T0 + timedelta(hours=1))
    assert [key.key_id for key in store.list_api_keys(org.org_id)] == [first.key_id, second.key_id]


def test_revoke_sets_the_time_once_and_returns_the_record(store: ControlStore) -> None:
    org = _org()
    record = _key(org, _user(org))
    store.put_api_key(record)
    revoked = store.revoke_api_key(record.key_id, T0 + timedelta(hours=1))
    assert revoked == replace(record, revoked_at=T0 + timedelta(hours=1))
    again = store.revoke_api_key(record.key_id, T0 + timedelta(hours=2))
    assert again.revoked_at == T0 + timedelta(hours=1)
    assert store.get_api_key(record.key_id) == revoked


def test_revoke_unknown_key_is_not_found(store: ControlStore) -> None:
    with pytest.raises(NotFound):
        store.revoke_api_key("hd_live_missing0", T0)


def test_update_api_key_replaces_every_field_but_the_id(store: ControlStore) -> None:
    org = _org()
    record = _key(org, _user(org))
    store.put_api_key(record)
    rotated = replace(
        record,
        expires_at=T0 + timedelta(days=1),
        rotated_to="hd_live_Successr",
        allowed_cidrs=("192.0.2.0/24",),
        expiry_recorded_at=T0 + timedelta(days=2),
        name="ci (rotated)",
    )
    store.update_api_key(rotated)
    assert store.get_api_key(record.key_id) == rotated
    assert store.list_api_keys(org.org_id) == [rotated]


def test_a_keys_rotation_policy_delivery_target_and_notices_round_trip_and_update(store: ControlStore) -> None:
    org = _org()
    record = replace(
        _key(org, _user(org)), rotate_every_days=90, delivery_secret=f"hd/keys/{org.org_id}/ci",
        lifecycle_notices=("expiry:7d:2026-05-30T12:00:00.000000+00:00", "rotation_due:2026-05-30"),
    )
    store.put_api_key(record)
    assert store.get_api_key(record.key_id) == record
    cleared = replace(record, rotate_every_days=None, delivery_secret=None, lifecycle_notices=())
    store.update_api_key(cleared)
    assert store.get_api_key(record.key_id) == cleared
    assert store.list_api_keys(org.org_id) == [cleared]


def test_a_key_stored_without_lifecycle_fields_reads_without_policy_target_or_notices(store: ControlStore) -> None:
    org = _org()
    record = _key(org, _user(org))
    store.put_api_key(record)
    read = store.get_api_key(record.key_id)
    assert read is not None
    assert (read.rotate_every_days, read.delivery_secret, read.lifecycle_notices) == (None, None, ())


def test_update_api_key_of_an_unknown_key_is_not_found_and_creates_nothing(store: ControlStore) -> None:
    org = _org()
    record = _key(org, _user(org))
    with pytest.raises(NotFound):
        store.update_api_key(record)
    assert store.get_api_key(record.key_id) is None
    assert store.list_api_keys(org.org_id) == []


# --- refresh tokens ------------------------------------------------------------------------------


def test_refresh_tokens_round_trip_and_never_overwrite(store: ControlStore) -> None:
    token = _token()
    store.put_refresh_token(token)
    assert store.get_refresh_token("rt_1") == token
    assert store.get_refresh_token("rt_missing") is None
    with pytest.raises(Conflict):
        store.put_refresh_token(replace(token, token_hash="0" * 64))
    assert store.get_refresh_token("rt_1") == token


def test_a_refresh_token_can_be_used_once(store: ControlStore) -> None:
    token = _token()
    store.put_refresh_token(token)
    used = store.use_refresh_token("rt_1", T0 + timedelta(minutes=10))
    assert used == replace(token, used_at=T0 + timedelta(minutes=10))
    with pytest.raises(Conflict):
        store.use_refresh_token("rt_1", T0 + timedelta(minutes=11))
    assert store.get_refresh_token("rt_1") == used  # the first use time is kept


def test_using_an_unknown_refresh_token_is_not_found(store: ControlStore) -> None:
    with pytest.raises(NotFound):
        store.use_refresh_token("rt_missing", T0)


def test_racing_uses_of_one_refresh_token_exactly_one_wins(store: ControlStore) -> None:
    store.put_refresh_token(_token())
    winners: list[int] = []
    conflicts: list[int] = []

    def use(worker: int) -> None:
        try:
            store.use_refresh_token("rt_1", T0 + timedelta(seconds=worker))
            winners.append(worker)
        except Conflict:
            conflicts.append(worker)

    assert _run_threads(8, use) == []
    assert len(winners) == 1 and len(conflicts) == 7
    stored = store.get_refresh_token("rt_1")
    assert stored is not None and stored.used_at == T0 + timedelta(seconds=winners[0])


def test_revoking_a_family_is_remembered_and_per_family(store: ControlStore) -> None:
    store.put_refresh_token(_token("rt_1", "fam_1"))
    assert not store.refresh_family_revoked("fam_1")
    store.revoke_refresh_family("fam_1", T0)
    store.revoke_refresh_family("fam_1", T0 + timedelta(hours=1))  # revoking again is harmless
    assert store.refresh_family_revoked("fam_1")
    assert not store.refresh_family_revoked("fam_2")


def test_a_family_revoked_before_any_token_exists_covers_future_tokens(store: ControlStore) -> None:
    store.revoke_refresh_family("fam_future", T0)
    store.put_refresh_token(_token("rt_later", "fam_future"))
    assert store.refresh_family_revoked("fam_future")


# --- just-in-time elevation ----------------------------------------------------------------------


def test_jit_requests_round_trip_and_never_overwrite(store: ControlStore) -> None:
    request = _jit()
    store.put_jit_request(request)
    assert store.get_jit_request("jitr_1") == request
    assert store.get_jit_request("jitr_missing") is None
    with pytest.raises(Conflict):
        store.put_jit_request(replace(request, role=Role.OWNER))
    assert store.get_jit_request("jitr_1") == request


def test_list_jit_requests_is_per_org_oldest_first_and_filters_by_status(store: ControlStore) -> None:
    later = _jit("jitr_b", requested_at=T0 + timedelta(minutes=1))
    earlier = _jit("jitr_a", requested_at=T0)
    other_org = _jit("jitr_c", org_id="org_2")
    for request in (later, other_org, earlier):
        store.put_jit_request(request)
    store.decide_jit_request(_approved(earlier))
    assert store.list_jit_requests("org_1") == [_approved(earlier), later]
    assert store.list_jit_requests("org_1", JitStatus.PENDING) == [later]
    assert store.list_jit_requests("org_1", JitStatus.APPROVED) == [_approved(earlier)]
    assert store.list_jit_requests("org_1", JitStatus.DENIED) == []
    assert store.list_jit_requests("org_missing") == []


def test_a_jit_request_is_decided_only_once(store: ControlStore) -> None:
    request = _jit()
    store.put_jit_request(request)
    store.decide_jit_request(_approved(request))
    denied = replace(request, status=JitStatus.DENIED, decided_by="usr_other", decided_at=T0, decision_reason="no")
    with pytest.raises(Conflict):
        store.decide_jit_request(denied)
    assert store.get_jit_request(request.request_id) == _approved(request)


def test_only_an_approved_jit_request_moves_on_to_revoked(store: ControlStore) -> None:
    request = _jit()
    store.put_jit_request(request)
    revoked = replace(_approved(request), status=JitStatus.REVOKED)
    with pytest.raises(Conflict):
        store.decide_jit_request(revoked, from_status=JitStatus.APPROVED)  # still pending
    assert store.get_jit_request(request.request_id) == request
    store.decide_jit_request(_approved(request))
    store.decide_jit_request(revoked, from_status=JitStatus.APPROVED)
    assert store.get_jit_request(request.request_id) == revoked
    assert store.list_jit_requests("org_1", JitStatus.REVOKED) == [revoked]
    with pytest.raises(Conflict):
        store.decide_jit_request(revoked, from_status=JitStatus.APPROVED)  # a second revocation lost the race
    with pytest.raises(NotFound):
        store.decide_jit_request(replace(revoked, request_id="jitr_missing"), from_status=JitStatus.APPROVED)


def test_deciding_an_unknown_jit_request_is_not_found_and_creates_nothing(store: ControlStore) -> None:
    with pytest.raises(NotFound):
        store.decide_jit_request(_approved(_jit("jitr_missing")))
    assert store.get_jit_request("jitr_missing") is None


def test_racing_decisions_on_one_jit_request_exactly_one_wins(store: ControlStore) -> None:
    request = _jit()
    store.put_jit_request(request)
    conflicts: list[int] = []

    def decide(worker: int) -> None:
        try:
            store.decide_jit_request(replace(_approved(request), decided_by=f"usr_{worker}"))
        except Conflict:
            conflicts.append(worker)

    assert _run_threads(6, decide) == []
    assert len(conflicts) == 5
    decided = store.get_jit_request(request.request_id)
    assert decided is not None and decided.decided_by not in {f"usr_{worker}" for worker in conflicts}


# --- IAM audit chain -----------------------------------------------------------------------------


def test_an_empty_chain_has_no_head_and_no_events(store: ControlStore) -> None:
    assert store.iam_chain_head("org_1") is None
    assert store.list_iam_events("org_1") == []


def test_appended_events_round_trip_and_the_head_is_the_highest_position(store: ControlStore) -> None:
    events = [_event(seq) for seq in range(1, 13)]  # past 9 and 10, where text order would differ
    for event in events:
        store.append_iam_event(event)
    assert store.iam_chain_head("org_1") == events[-1]
    assert store.list_iam_events("org_1") == events


def test_appending_at_a_taken_position_is_a_conflict_and_keeps_the_first_event(store: ControlStore) -> None:
    first = _event(1)
    store.append_iam_event(first)
    with pytest.raises(Conflict):
        store.append_iam_event(_event(1, event_id="evt_forger", hash="f" * 64))
    assert store.list_iam_events("org_1") == [first]


def test_list_iam_events_starts_after_a_position_and_honours_the_limit(store: ControlStore) -> None:
    events = [_event(seq) for seq in range(1, 8)]
    for event in reversed(events):
        store.append_iam_event(event)
    assert store.list_iam_events("org_1", after_seq=3) == events[3:]
    assert store.list_iam_events("org_1", after_seq=3, limit=2) == events[3:5]
    assert store.list_iam_events("org_1", limit=1) == events[:1]
    assert store.list_iam_events("org_1", after_seq=7) == []
    assert store.list_iam_events("org_1", limit=0) == []


def test_chains_are_independent(store: ControlStore) -> None:
    store.append_iam_event(_event(1, "org_1"))
    store.append_iam_event(_event(1, "org_10"))  # a chain id that extends another must not leak into it
    store.append_iam_event(_event(2, "org_10"))
    assert [event.seq for event in store.list_iam_events("org_1")] == [1]
    head = store.iam_chain_head("org_1")
    assert head is not None and head.chain_id == "org_1" and head.seq == 1


def test_event_values_come_back_exactly_including_none_and_nested_json(store: ControlStore) -> None:
    created = _event(1, before=None, after={"b": [1, 2.5, None, True], "a": {"z": "ü", "y": {}}})
    deleted = _event(2, before={"name": "x"}, after=None, at=datetime(2026, 3, 1, 8, 0, tzinfo=EASTERN))
    store.append_iam_event(created)
    store.append_iam_event(deleted)
    stored = store.list_iam_events("org_1")
    assert stored == [created, deleted]
    assert stored[1].at.utcoffset() == timedelta(0)


def test_two_writers_at_the_same_position_exactly_one_wins(store: ControlStore) -> None:
    store.append_iam_event(_event(1))
    conflicts: list[int] = []

    def append(worker: int) -> None:
        try:
            store.append_iam_event(_event(2, event_id=f"evt_writer_{worker}"))
        except Conflict:
            conflicts.append(worker)

    assert _run_threads(2, append) == []
    assert len(conflicts) == 1
    head = store.iam_chain_head("org_1")
    assert head is not None and head.seq == 2 and head.event_id == f"evt_writer_{1 - conflicts[0]}"


def test_many_writers_appending_with_re_read_and_retry_build_one_unforked_chain(store: ControlStore) -> None:
    def append_five(worker: int) -> None:
        for n in range(5):
            while True:
                head = store.iam_chain_head("org_1")
                seq = 1 if head is None else head.seq + 1
                try:
                    store.append_iam_event(_event(seq, event_id=f"evt_{worker}_{n}"))
                    break
                except Conflict:
                    continue  # another writer took the position: re-read the head

    assert _run_threads(6, append_five) == []
    events = store.list_iam_events("org_1")
    assert [event.seq for event in events] == list(range(1, 31))
    assert len({event.event_id for event in events}) == 30


# --- timestamps ----------------------------------------------------------------------------------


def test_timestamps_come_back_as_utc_whatever_zone_went_in(store: ControlStore) -> None:
    org = _org(created_at=datetime(2026, 3, 1, 7, 0, tzinfo=EASTERN))
    store.put_org(org)
    stored = store.get_org(org.org_id)
    assert stored is not None
    assert stored.created_at == T0
    assert stored.created_at.utcoffset() == timedelta(0)


def test_every_entity_returns_timezone_aware_utc_datetimes(store: ControlStore) -> None:
    local = datetime(2026, 3, 1, 7, 0, 0, 123456, tzinfo=EASTERN)
    org = _org(created_at=local)
    user = _user(org, created_at=local)
    store.put_user(user)
    store.put_environment(Environment("env_1", org.org_id, "prod", KeyEnv.LIVE, local))
    store.put_api_key(replace(_key(org, user), created_at=local, revoked_at=local, expiry_recorded_at=local))
    store.put_refresh_token(replace(_token(), issued_at=local, expires_at=local, used_at=local))
    store.put_jit_request(_jit(requested_at=local, decided_at=local))
    store.append_iam_event(_event(1, at=local))
    store.put_org(org)
    store.end_user_sessions(user.user_id, local)
    store.record_auth_failure("login:a", local, forget_before=local, expires_at=local + timedelta(hours=1))
    failures = store.record_auth_failure("login:a", local, forget_before=local, expires_at=local)
    key = store.list_api_keys(org.org_id)[0]
    token, request = store.get_refresh_token("rt_1"), store.get_jit_request("jitr_1")
    stored_org, stored_user = store.get_org(org.org_id), store.get_user(user.user_id)
    stored_failures = store.get_auth_failures("login:a")
    assert token is not None and request is not None and stored_org is not None and stored_user is not None
    assert stored_failures is not None and stored_failures.previous_failure_at is not None
    stamps = [
        stored_org.created_at,
        stored_user.tokens_valid_after,
        failures.last_failure_at,
        stored_failures.last_failure_at,
        stored_failures.previous_failure_at,
        stored_failures.expires_at,
        store.list_users(org.org_id)[0].created_at,
        store.list_environments(org.org_id)[0].created_at,
        key.created_at,
        key.revoked_at,
        key.expiry_recorded_at,
        token.issued_at,
        token.expires_at,
        token.used_at,
        request.requested_at,
        request.decided_at,
        store.list_iam_events("org_1")[0].at,
    ]
    assert all(stamp == local and stamp.tzinfo is UTC for stamp in stamps), stamps


def test_naive_timestamps_are_refused(store: ControlStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.put_org(_org(created_at=datetime(2026, 1, 1)))  # deliberately naive


# --- settings ------------------------------------------------------------------------------------


def test_settings_get_put_and_put_if_absent(store: ControlStore) -> None:
    assert store.get_setting("default_org_id") is None
    store.put_setting("default_org_id", "org_1")
    store.put_setting("default_org_id", "org_2")
    assert store.get_setting("default_org_id") == "org_2"
    assert store.put_setting_if_absent("pepper", "first") == "first"
    assert store.put_setting_if_absent("pepper", "second") == "first"
    assert store.get_setting("pepper") == "first"


def test_racing_put_setting_if_absent_has_one_first_writer(store: ControlStore) -> None:
    results: list[str] = []
    assert _run_threads(6, lambda worker: results.append(store.put_setting_if_absent("pepper", f"v{worker}"))) == []
    assert len(set(results)) == 1
    assert store.get_setting("pepper") == results[0]


def test_everything_survives_reopening_the_store(store_factory: StoreFactory) -> None:
    first = store_factory()
    org = _org()
    user = _user(org, external_ids=("https://idp.example#sub-1",))
    key = _key(org, user)
    first.put_org(org)
    first.put_user(user)
    first.put_api_key(key)
    first.put_setting("default_org_id", org.org_id)
    first.append_iam_event(_event(1))
    reopened = store_factory()
    assert reopened.get_org(org.org_id) == org
    assert reopened.get_user(user.user_id) == user
    assert reopened.get_user_by_external_id("https://idp.example#sub-1") == user
    assert reopened.get_api_key(key.key_id) == key
    assert reopened.get_setting("default_org_id") == org.org_id
    assert reopened.iam_chain_head("org_1") == _event(1)


def test_concurrent_writers_and_readers_on_several_threads(store: ControlStore) -> None:
    org = _org()
    store.put_org(org)
    user = _user(org)
    store.put_user(user)
    conflicts: list[str] = []
    contested = _key(org, user, "hd_live_contest0")

    def work(worker: int) -> None:
        for n in range(10):
            store.put_api_key(_key(org, user, f"hd_live_w{worker:02d}n{n:03d}"))
            assert store.get_org(org.org_id) == org
            store.put_setting(f"worker.{worker}", str(n))
        try:
            store.put_api_key(contested)
        except Conflict:
            conflicts.append(f"worker {worker}")

    assert _run_threads(8, work) == []
    assert len(store.list_api_keys(org.org_id)) == 8 * 10 + 1
    assert len(conflicts) == 7  # exactly one thread created the contested key
    assert all(store.get_setting(f"worker.{worker}") == "9" for worker in range(8))


# --- governance policies -------------------------------------------------------------------------


def _one_policy_of_each_kind(org_id: str) -> list[PolicyObject]:
    window = TimeWindow("09:00", "17:00", "Europe/Berlin", ("mon", "tue"), outside=True)
    return [
        MaskRule(new_id("mask"), org_id, "crm.customers", "ssn", MaskFunction.PARTIAL, 2, (Role.ADMIN,), ("a-1",)),
        RowFilter(new_id("rowf"), org_id, "crm.customers", "region = {region}", (Role.OWNER,)),
        AbacPolicy(
            new_id("abac"),
            org_id,
            "office hours",
            "deny",
            ("select",),
            ("crm.*",),
            AbacConditions(time_window=window, roles=(Role.ANALYST,), not_source_cidrs=("10.0.0.0/8",)),
            "reason",
        ),
        JitGrant(new_id("jit"), org_id, "usr_1", Role.ADMIN, "incident", T0, T0 + timedelta(hours=1), "usr_2"),
        ColumnTag(new_id("tag"), org_id, "crm.customers", "email", PiiType.EMAIL),
        PhiGrant(new_id("phi"), org_id, "usr_1", "agent-1", T0 + timedelta(days=1), "care"),
        TableBinding(new_id("tbl"), f"t_{org_id.lower()}.events", org_id=org_id),
        QuotaLimit(new_id("quota"), org_id, 100.0, 5000, 2.5),
    ]


def _kind_then_id(obj: PolicyObject) -> tuple[str, str]:
    return (kind_of(obj).value, object_id(obj))


def test_policy_version_starts_at_zero_with_an_empty_snapshot(store: ControlStore) -> None:
    assert store.policy_version() == 0
    assert store.policy_snapshot() == PolicySnapshot(version=0)
    assert store.list_policies() == []


def test_every_kind_round_trips_through_put_get_and_the_snapshot(store: ControlStore) -> None:
    objects = _one_policy_of_each_kind("org_a")
    for obj in objects:
        store.put_policy(obj)
    for obj in objects:
        assert store.get_policy(kind_of(obj), object_id(obj)) == obj
    assert store.policy_snapshot() == PolicySnapshot.of(len(objects), sorted(objects, key=_kind_then_id))


def test_a_shared_table_binding_without_org_round_trips(store: ControlStore) -> None:
    binding = TableBinding("tbl_shared", "shared.events", org_id=None, tenant_column="org_id")
    store.put_policy(binding)
    assert store.get_policy(PolicyKind.TABLE_BINDING, "tbl_shared") == binding
    assert store.list_policies(kind=PolicyKind.TABLE_BINDING) == [binding]


def test_version_bumps_on_every_write_and_is_returned_by_it(store: ControlStore) -> None:
    rule = _one_policy_of_each_kind("org_a")[0]
    assert isinstance(rule, MaskRule)
    assert store.put_policy(rule) == 1
    assert store.put_policy(replace(rule, function=MaskFunction.FULL)) == 2  # a replacement is a change too
    assert store.put_policy(replace(rule, function=MaskFunction.FULL)) == 3  # even an identical rewrite
    assert store.delete_policy(PolicyKind.MASK, rule.rule_id) == 4
    assert store.policy_version() == 4
    assert store.policy_snapshot().version == 4


def test_a_put_if_version_commits_only_on_the_version_it_was_decided_on(store: ControlStore) -> None:
    first = TableBinding("tbl_a", "crm.notes", org_id="org_a")
    second = TableBinding("tbl_b", "crm.notes", org_id="org_b")
    assert store.put_policy(first, if_version=0) == 1
    with pytest.raises(Conflict):
        store.put_policy(second, if_version=0)  # decided on a snapshot that no longer holds
    assert store.list_policies(kind=PolicyKind.TABLE_BINDING) == [first]
    assert store.policy_version() == 1
    assert store.put_policy(replace(first, org_id="org_c"), if_version=1) == 2


def test_create_policy_stores_a_new_object_and_bumps_the_version(store: ControlStore) -> None:
    rule = MaskRule("mask_1", "org_a", "crm.customers", "ssn", MaskFunction.PARTIAL)
    assert store.create_policy(rule) == 1
    assert store.get_policy(PolicyKind.MASK, "mask_1") == rule
    assert store.policy_snapshot() == PolicySnapshot.of(1, [rule])


def test_creating_an_existing_kind_and_id_is_a_conflict_and_changes_nothing(store: ControlStore) -> None:
    rule = MaskRule("mask_1", "org_a", "crm.customers", "ssn", MaskFunction.PARTIAL)
    store.put_policy(rule)
    with pytest.raises(Conflict):
        store.create_policy(replace(rule, org_id="org_b", function=MaskFunction.FULL))
    assert store.get_policy(PolicyKind.MASK, "mask_1") == rule
    assert store.policy_version() == 1


def test_create_policy_keys_on_kind_and_id_together(store: ControlStore) -> None:
    store.create_policy(ColumnTag("x_1", "org_a", "crm.customers", "email", PiiType.EMAIL))
    assert store.create_policy(MaskRule("x_1", "org_a", "crm.customers", "ssn", MaskFunction.PARTIAL)) == 2


def test_a_shared_table_binding_can_be_created(store: ControlStore) -> None:
    binding = TableBinding("tbl_shared", "shared.events", org_id=None, tenant_column="org_id")
    assert store.create_policy(binding) == 1
    assert store.list_policies(kind=PolicyKind.TABLE_BINDING) == [binding]


def test_concurrent_creators_of_one_id_exactly_one_wins(store: ControlStore) -> None:
    store.put_policy(QuotaLimit("quota_other", "org_a"))  # the version item exists: the race is on the object alone
    won: list[str] = []

    def create(worker: int) -> None:
        try:
            store.create_policy(MaskRule("mask_race", f"org_{worker}", "crm.customers", "ssn", MaskFunction.FULL))
            won.append(f"org_{worker}")
        except Conflict:
            pass

    assert _run_threads(8, create) == []
    assert len(won) == 1
    stored = store.get_policy(PolicyKind.MASK, "mask_race")
    assert isinstance(stored, MaskRule) and stored.org_id == won[0]
    assert store.policy_version() == 2  # one creation, one bump


def test_concurrent_creators_of_distinct_ids_all_win_with_their_own_versions(store: ControlStore) -> None:
    versions: list[int] = []

    def create(worker: int) -> None:
        for n in range(5):
            versions.append(store.create_policy(MaskRule(f"mask_{worker}_{n}", "org_a", "t", "c", MaskFunction.FULL)))

    assert _run_threads(4, create) == []
    assert sorted(versions) == list(range(1, 21))
    assert len(store.policy_snapshot().masks) == 20


def test_put_replaces_an_object_of_the_same_kind_and_id(store: ControlStore) -> None:
    rule = MaskRule("mask_1", "org_a", "crm.customers", "ssn", MaskFunction.PARTIAL)
    store.put_policy(rule)
    store.put_policy(replace(rule, function=MaskFunction.NULL))
    assert store.list_policies() == [replace(rule, function=MaskFunction.NULL)]


def test_the_same_id_in_two_kinds_is_two_objects(store: ControlStore) -> None:
    tag = ColumnTag("x_1", "org_a", "crm.customers", "email", PiiType.EMAIL)
    rule = MaskRule("x_1", "org_a", "crm.customers", "ssn", MaskFunction.PARTIAL)
    store.put_policy(tag)
    store.put_policy(rule)
    assert store.get_policy(PolicyKind.COLUMN_TAG, "x_1") == tag
    assert store.get_policy(PolicyKind.MASK, "x_1") == rule


def test_deleting_a_missing_policy_is_not_found_and_changes_no_version(store: ControlStore) -> None:
    store.put_policy(QuotaLimit("quota_1", "org_a"))
    with pytest.raises(NotFound):
        store.delete_policy(PolicyKind.QUOTA, "quota_missing")
    with pytest.raises(NotFound):
        store.delete_policy(PolicyKind.MASK, "quota_1")  # right id, wrong kind
    assert store.policy_version() == 1
    assert store.get_policy(PolicyKind.QUOTA, "quota_1") is not None
    assert store.get_policy(PolicyKind.QUOTA, "quota_missing") is None


def test_list_policies_filters_by_org_and_kind_ordered_by_kind_then_id(store: ControlStore) -> None:
    ours, theirs = _one_policy_of_each_kind("org_a"), _one_policy_of_each_kind("org_b")
    for obj in reversed(ours + theirs):
        store.put_policy(obj)
    assert store.list_policies() == sorted(ours + theirs, key=_kind_then_id)
    assert store.list_policies("org_a") == sorted(ours, key=_kind_then_id)
    masks = [obj for obj in ours if isinstance(obj, MaskRule)]
    assert store.list_policies("org_a", PolicyKind.MASK) == masks
    assert len(store.list_policies(kind=PolicyKind.MASK)) == 2
    assert store.list_policies("org_missing") == []


def test_policy_ids_sharing_a_prefix_sort_like_their_ids(store: ControlStore) -> None:
    quotas = [QuotaLimit(quota_id, "org_a") for quota_id in ("q_10", "q_1", "q_1a", "q_2")]
    for quota in quotas:
        store.put_policy(quota)
    assert [object_id(obj) for obj in store.list_policies(kind=PolicyKind.QUOTA)] == ["q_1", "q_10", "q_1a", "q_2"]


def test_policies_and_their_version_survive_reopening(store_factory: StoreFactory) -> None:
    first = store_factory()
    objects = _one_policy_of_each_kind("org_a")
    for obj in objects:
        first.put_policy(obj)
    reopened = store_factory()
    assert reopened.policy_version() == len(objects)
    assert reopened.policy_snapshot() == first.policy_snapshot()


def test_concurrent_policy_writes_each_get_their_own_version(store: ControlStore) -> None:
    versions: list[int] = []

    def write(worker: int) -> None:
        for n in range(10):
            rule = MaskRule(f"mask_{worker}_{n}", "org_a", "crm.customers", "ssn", MaskFunction.FULL)
            versions.append(store.put_policy(rule))

    assert _run_threads(5, write) == []
    assert sorted(versions) == list(range(1, 51))
    snapshot = store.policy_snapshot()
    assert (snapshot.version, len(snapshot.masks)) == (50, 50)


def test_the_snapshot_version_always_matches_its_content_under_concurrent_writes(store: ControlStore) -> None:
    stop = threading.Event()
    seen: list[tuple[int, int]] = []

    def read() -> None:
        while not stop.is_set():
            snapshot = store.policy_snapshot()
            seen.append((snapshot.version, len(snapshot.quotas)))

    reader = threading.Thread(target=read)
    reader.start()
    for n in range(30):
        store.put_policy(QuotaLimit(f"quota_{n:03d}", f"org_{n}"))
    stop.set()
    reader.join()
    assert seen and all(version == count for version, count in seen)  # each put added exactly one quota


# --- metering ------------------------------------------------------------------------------------


def _usage(day: date, user_id: str = "usr_1", agent_id: str | None = None, **amounts: Any) -> UsageDelta:
    figures = {"statements": 1, "credits": 0.5, "rows": 10, "bytes": 100} | amounts
    return UsageDelta("org_a", day, user_id, agent_id, **figures)


def test_usage_sums_into_org_day_user_agent_buckets(store: ControlStore) -> None:
    day = date(2026, 3, 4)
    store.add_usage([_usage(day), _usage(day), _usage(day, agent_id="agent-1"), _usage(day, user_id="usr_2")])
    store.add_usage([_usage(day, statements=3, credits=1.25, rows=5, bytes=7)])
    assert store.usage("org_a", day, day) == [
        UsageDelta("org_a", day, "usr_1", None, 5, 2.25, 25, 207),
        UsageDelta("org_a", day, "usr_1", "agent-1", 1, 0.5, 10, 100),
        UsageDelta("org_a", day, "usr_2", None, 1, 0.5, 10, 100),
    ]


def test_usage_buckets_of_ids_with_separator_characters_stay_apart(store: ControlStore) -> None:
    day = date(2026, 3, 4)
    store.add_usage([_usage(day, user_id="usr#1", agent_id=None), _usage(day, user_id="usr", agent_id="1#")])
    assert [(bucket.user_id, bucket.agent_id) for bucket in store.usage("org_a", day, day)] == [
        ("usr", "1#"),
        ("usr#1", None),
    ]


def test_usage_is_per_org_and_limited_to_the_inclusive_day_range(store: ControlStore) -> None:
    days = [date(2026, 2, 28), date(2026, 3, 1), date(2026, 3, 31), date(2026, 4, 1)]
    store.add_usage([_usage(day) for day in days])
    store.add_usage([replace(_usage(days[1]), org_id="org_b")])
    assert [bucket.day for bucket in store.usage("org_a", date(2026, 3, 1), date(2026, 3, 31))] == days[1:3]
    assert store.usage("org_missing", days[0], days[-1]) == []


def test_usage_writes_do_not_change_the_policy_version(store: ControlStore) -> None:
    store.add_usage([_usage(date(2026, 3, 4))])
    assert store.policy_version() == 0


def test_adding_no_usage_is_a_no_op(store: ControlStore) -> None:
    store.add_usage([])
    assert store.usage("org_a", date(2000, 1, 1), date(2100, 1, 1)) == []


def test_concurrent_add_usage_from_threads_sums_correctly(store: ControlStore) -> None:
    day = date(2026, 3, 4)

    def meter(worker: int) -> None:
        for _ in range(10):
            store.add_usage([_usage(day, credits=0.25), _usage(day, agent_id=f"agent-{worker % 2}")])

    assert _run_threads(8, meter) == []
    buckets = {bucket.agent_id: bucket for bucket in store.usage("org_a", day, day)}
    assert buckets[None].statements == 80
    assert buckets[None].credits == pytest.approx(20.0)
    assert buckets[None].rows == 800
    assert buckets["agent-0"].statements == buckets["agent-1"].statements == 40
    assert buckets["agent-0"].bytes == 4_000


# --- authentication throttling -------------------------------------------------------------------

FORGET = timedelta(hours=1)


def _fail(store: ControlStore, subject: str, at: datetime) -> Any:
    return store.record_auth_failure(subject, at, forget_before=at - FORGET, expires_at=at + FORGET)


def test_a_subject_without_failures_has_no_record(store: ControlStore) -> None:
    assert store.get_auth_failures("login:nobody") is None


def test_failures_count_up_and_remember_the_one_before_the_last(store: ControlStore) -> None:
    first = _fail(store, "api_key:hd_live_AbCdEfGh", T0)
    second = _fail(store, "api_key:hd_live_AbCdEfGh", T0 + timedelta(seconds=5))
    assert (first.count, first.last_failure_at, first.previous_failure_at) == (1, T0, None)
    assert (second.count, second.last_failure_at, second.previous_failure_at) == (2, T0 + timedelta(seconds=5), T0)
    assert second.expires_at == T0 + timedelta(seconds=5) + FORGET
    assert store.get_auth_failures("api_key:hd_live_AbCdEfGh") == second


def test_a_failure_after_the_forget_time_starts_the_count_again(store: ControlStore) -> None:
    for seconds in range(3):
        _fail(store, "login:a", T0 + timedelta(seconds=seconds))
    later = T0 + FORGET + timedelta(minutes=1)
    restarted = _fail(store, "login:a", later)
    assert (restarted.count, restarted.last_failure_at, restarted.previous_failure_at) == (1, later, None)


def test_subjects_are_counted_apart_and_cleared_one_at_a_time(store: ControlStore) -> None:
    _fail(store, "login:a", T0)
    _fail(store, "login:a", T0)
    _fail(store, "login:b", T0)
    store.clear_auth_failures("login:a")
    store.clear_auth_failures("login:never-failed")  # a no-op, not an error
    assert store.get_auth_failures("login:a") is None
    assert store.get_auth_failures("login:b") is not None
    assert _fail(store, "login:a", T0).count == 1


def test_auth_failures_come_back_as_utc_and_survive_reopening(store_factory: StoreFactory) -> None:
    _fail(store_factory(), "login:a", T0.astimezone(EASTERN))
    record = store_factory().get_auth_failures("login:a")
    assert record is not None and record.last_failure_at == T0 and record.last_failure_at.tzinfo == UTC


def test_concurrent_failures_each_see_their_own_count(store: ControlStore) -> None:
    seen: list[int] = []

    def fail(worker: int) -> None:
        for _ in range(5):
            seen.append(_fail(store, "api_key:hd_live_Race0001", T0 + timedelta(milliseconds=worker)).count)

    assert _run_threads(8, fail) == []
    # Exactly one writer sees each count: that is what lets a lockout be recorded once.
    assert sorted(seen) == list(range(1, 41))
