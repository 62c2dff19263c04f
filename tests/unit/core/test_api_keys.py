"""API keys: format and checksum, Argon2id parameters, issuing, revoking and the authenticator's contract."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

import hd_core.api_keys as api_keys_module
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.api_keys import (
    ApiKeyAuthenticator,
    ApiKeyHasher,
    checksum_valid,
    generate_api_key,
    issue_api_key,
    key_id_of,
    revoke_api_key,
    rotate_api_key,
)
from hd_core.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidApiKeyFormat,
    InvalidRequest,
    NotFound,
    ScopeNotAllowed,
    SourceAddressNotAllowed,
)
from hd_core.models import (
    ALL_SCOPES,
    BASE62_ALPHABET,
    ApiScope,
    KeyEnv,
    Organization,
    OrgStatus,
    Principal,
    Role,
    User,
    UserStatus,
    new_id,
)
from hd_core.permissions import SCOPE_BUNDLES

PEPPER = b"p" * 32
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class CountingHasher(ApiKeyHasher):
    """Argon2id with the smallest legal cost (tests stay fast), counting every verify."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verify_calls = 0
        self._count_lock = threading.Lock()

    def verify(self, key_hash: str, plaintext: str) -> bool:
        with self._count_lock:
            self.verify_calls += 1
        return super().verify(key_hash, plaintext)


class ManualClock:
    """Monotonic seconds and wall-clock time that move only when a test says so."""

    def __init__(self) -> None:
        self.seconds = 1000.0
        self.wall = T0

    def monotonic(self) -> float:
        return self.seconds

    def now(self) -> datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.seconds += seconds
        self.wall += timedelta(seconds=seconds)


@dataclass
class World:
    store: SqliteControlStore
    hasher: CountingHasher
    clock: ManualClock
    authenticator: ApiKeyAuthenticator
    org: Organization
    user: User
    key: str
    key_id: str

    def verifies_during(self, username: str, password: str) -> int:
        """How many Argon2 verifies one login attempt costs (whether it succeeds or not)."""
        before = self.hasher.verify_calls
        try:
            self.authenticator.authenticate(username, password)
        except AuthenticationFailed:
            pass
        return self.hasher.verify_calls - before


def _add_org_and_user(store: SqliteControlStore, *, role: Role = Role.ANALYST) -> tuple[Organization, User]:
    org = Organization(new_id("org"), "Acme", OrgStatus.ACTIVE, T0)
    user_id = new_id("usr")
    # Emails are unique across the store: one per user.
    user = User(user_id, org.org_id, f"ana.{user_id}@acme.test", role, UserStatus.ACTIVE, "finance", "eu", T0)
    store.put_org(org)
    store.put_user(user)
    return org, user


@pytest.fixture
def world() -> Iterator[World]:
    store = SqliteControlStore(":memory:")
    hasher = CountingHasher()
    clock = ManualClock()
    org, user = _add_org_and_user(store)
    key, record = issue_api_key(
        store, hasher, org_id=org.org_id, user_id=user.user_id, scopes=[ApiScope.QUERY_READ], name="ci", now=clock.now
    )
    authenticator = ApiKeyAuthenticator(
        store, PEPPER, hasher=hasher, ttl_seconds=60, clock=clock.monotonic, now=clock.now
    )
    hasher.verify_calls = 0
    yield World(store, hasher, clock, authenticator, org, user, key, record.key_id)
    store.close()


def _reject(world: World, username: str, password: str) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as caught:
        world.authenticator.authenticate(username, password)
    assert str(caught.value) == "authentication failed"  # never says which check failed
    return caught.value


def _with_other_secret(key: str) -> str:
    """A well-formed key (valid checksum) with the same key id as `key` but a different secret."""
    body = key[:-6]
    last = body[-1]
    body = body[:-1] + ("A" if last != "A" else "B")
    return body + api_keys_module._checksum(body)


# --- format -----------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["live", "test"])
def test_generated_key_is_prefix_then_32_base62_characters(env: str) -> None:
    plaintext, key_id = generate_api_key(env)
    assert plaintext.startswith(f"hd_{env}_")
    tail = plaintext[len(f"hd_{env}_"):]
    assert len(tail) == 32
    assert set(tail) <= set(BASE62_ALPHABET)
    assert key_id == key_id_of(plaintext)


def test_last_six_characters_are_base62_crc32_of_everything_before() -> None:
    plaintext, _ = generate_api_key("live")
    crc = zlib.crc32(plaintext[:-6].encode())
    encoded = ""
    for _ in range(6):
        crc, digit = divmod(crc, 62)
        encoded = BASE62_ALPHABET[digit] + encoded
    assert plaintext[-6:] == encoded
    assert checksum_valid(plaintext)


def test_checksum_detects_any_single_changed_character() -> None:
    plaintext, _ = generate_api_key("live")
    for position in range(len("hd_live_"), len(plaintext)):
        original = plaintext[position]
        replacement = "0" if original != "0" else "1"
        mutated = plaintext[:position] + replacement + plaintext[position + 1:]
        assert not checksum_valid(mutated), f"change at {position} went unnoticed"


def test_checksum_covers_the_environment_prefix() -> None:
    plaintext, _ = generate_api_key("live")
    assert not checksum_valid(plaintext.replace("hd_live_", "hd_test_", 1))


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "hd_prod_" + "a" * 32,
        "hd_live_" + "a" * 31,
        "hd_live_" + "a" * 33,
        "hd_live_" + "a" * 31 + "-",
        "hd_live_" + "é" * 32,
        "eyJhbGciOiJSUzI1NiJ9.e30.sig",
    ],
)
def test_malformed_keys_fail_the_checksum_and_have_no_key_id(candidate: str) -> None:
    assert not checksum_valid(candidate)
    with pytest.raises(InvalidApiKeyFormat) as caught:
        key_id_of(candidate)
    assert isinstance(caught.value, AuthenticationFailed)


def test_a_trailing_newline_is_not_part_of_a_valid_key() -> None:
    plaintext, _ = generate_api_key("test")
    assert not checksum_valid(plaintext + "\n")


def test_key_id_is_prefix_plus_first_eight_random_characters() -> None:
    plaintext, key_id = generate_api_key("live")
    assert key_id == plaintext[:16]
    assert len(key_id) == len("hd_live_") + 8


def test_generated_keys_differ() -> None:
    assert len({generate_api_key("live")[0] for _ in range(200)}) == 200


# --- hashing ----------------------------------------------------------------------------------


def test_default_hasher_uses_owasp_argon2id_parameters() -> None:
    hasher = ApiKeyHasher()
    plaintext, _ = generate_api_key("live")
    encoded = hasher.hash(plaintext)
    assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert hasher.verify(encoded, plaintext)
    assert not hasher.verify(encoded, _with_other_secret(plaintext))


def test_each_hash_has_its_own_salt() -> None:
    hasher = CountingHasher()
    assert hasher.hash("same") != hasher.hash("same")


def test_verify_returns_false_for_an_unreadable_hash() -> None:
    assert CountingHasher().verify("not-a-hash", "anything") is False


# --- issuing and revoking ---------------------------------------------------------------------


def test_issued_key_is_stored_as_a_hash_with_normalised_scopes() -> None:
    store = SqliteControlStore(":memory:")
    hasher = CountingHasher()
    org, user = _add_org_and_user(store)
    plaintext, record = issue_api_key(
        store,
        hasher,
        org_id=org.org_id,
        user_id=user.user_id,
        env="test",
        scopes=["query:write", ApiScope.QUERY_READ, "query:write"],
        name="etl",
    )
    stored = store.get_api_key(record.key_id)
    assert stored == record
    assert record.env is KeyEnv.TEST
    assert record.key_id == key_id_of(plaintext)
    assert record.scopes == ("query:read", "query:write")
    assert plaintext not in repr(record)
    assert record.key_hash not in repr(record)  # nor the hash, so logging a record leaks nothing
    assert hasher.verify(record.key_hash, plaintext)


def test_issue_refuses_unknown_scopes_no_scopes_and_past_expiry() -> None:
    store = SqliteControlStore(":memory:")
    org, user = _add_org_and_user(store)
    hasher = CountingHasher()
    with pytest.raises(ValueError, match="unknown api scope"):
        issue_api_key(store, hasher, org_id=org.org_id, user_id=user.user_id, scopes=["root"])
    with pytest.raises(ValueError, match="at least one scope"):
        issue_api_key(store, hasher, org_id=org.org_id, user_id=user.user_id, scopes=[])
    with pytest.raises(ValueError, match="future"):
        past = datetime(2000, 1, 1, tzinfo=UTC)
        issue_api_key(store, hasher, org_id=org.org_id, user_id=user.user_id, expires_at=past)
    assert store.list_api_keys(org.org_id) == []


def test_issue_requires_the_user_to_be_active_and_in_the_organisation() -> None:
    store = SqliteControlStore(":memory:")
    org, user = _add_org_and_user(store)
    other_org, _ = _add_org_and_user(store)
    with pytest.raises(NotFound):
        issue_api_key(store, CountingHasher(), org_id=org.org_id, user_id="usr_missing")
    with pytest.raises(NotFound):
        issue_api_key(store, CountingHasher(), org_id=other_org.org_id, user_id=user.user_id)
    store.put_user(replace(user, status=UserStatus.SUSPENDED))
    with pytest.raises(Conflict):
        issue_api_key(store, CountingHasher(), org_id=org.org_id, user_id=user.user_id)


def test_issue_retries_when_a_key_id_is_already_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    store = SqliteControlStore(":memory:")
    org, user = _add_org_and_user(store)
    taken_key, taken = issue_api_key(store, CountingHasher(), org_id=org.org_id, user_id=user.user_id)
    fresh = generate_api_key("live")
    candidates = iter([(taken_key, taken.key_id), fresh])
    monkeypatch.setattr(api_keys_module, "generate_api_key", lambda env: next(candidates))
    plaintext, record = issue_api_key(store, CountingHasher(), org_id=org.org_id, user_id=user.user_id)
    assert (plaintext, record.key_id) == fresh
    assert store.get_api_key(taken.key_id) == taken


def test_revoke_unknown_key_is_not_found(world: World) -> None:
    with pytest.raises(NotFound):
        revoke_api_key(world.store, world.authenticator, "hd_live_nothere0")


def test_revoking_twice_keeps_the_first_revocation_time(world: World) -> None:
    first = revoke_api_key(world.store, None, world.key_id, now=lambda: T0)
    second = revoke_api_key(world.store, None, world.key_id, now=lambda: T0 + timedelta(days=1))
    assert first.revoked_at == second.revoked_at == T0


# --- authenticating ---------------------------------------------------------------------------


def test_valid_key_authenticates_as_its_user(world: World) -> None:
    principal = world.authenticator.authenticate(world.user.user_id, world.key)
    assert principal == Principal(
        user_id=world.user.user_id,
        org_id=world.org.org_id,
        role=Role.ANALYST,
        key_id=world.key_id,
        env=KeyEnv.LIVE,
        scopes=("query:read",),
        department="finance",
        region="eu",
    )
    assert principal.has_scope("query:read")
    assert not principal.has_scope("query:write")


def test_user_name_may_be_the_user_id_or_the_key_id_and_nothing_else(world: World) -> None:
    assert world.authenticator.authenticate(world.key_id, world.key).user_id == world.user.user_id
    assert world.authenticator.authenticate(world.user.user_id, world.key).user_id == world.user.user_id
    _, other = issue_api_key(world.store, world.hasher, org_id=world.org.org_id, user_id=world.user.user_id)
    for username in ["", "owner", world.user.email, other.key_id, world.user.user_id.upper(), world.key]:
        _reject(world, username, world.key)


def test_wrong_secret_for_a_known_key_id_fails(world: World) -> None:
    _reject(world, world.user.user_id, _with_other_secret(world.key))


def test_unknown_key_id_fails(world: World) -> None:
    stranger, _ = generate_api_key("live")
    assert _reject(world, world.user.user_id, stranger).reason == "unknown key id"


def test_bad_checksum_fails(world: World) -> None:
    mangled = world.key[:-1] + ("0" if world.key[-1] != "0" else "1")
    assert _reject(world, world.user.user_id, mangled).reason == "malformed api key or bad checksum"


def test_a_jwt_or_empty_password_fails_like_any_bad_key(world: World) -> None:
    _reject(world, world.user.user_id, "")
    _reject(world, world.user.user_id, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln")


def test_every_failure_costs_exactly_one_argon2_verify(world: World) -> None:
    stranger, _ = generate_api_key("live")
    mangled = world.key[:-1] + ("0" if world.key[-1] != "0" else "1")
    assert world.verifies_during(world.user.user_id, stranger) == 1  # unknown key id: dummy hash
    assert world.verifies_during(world.user.user_id, mangled) == 1  # bad checksum: dummy hash
    assert world.verifies_during(world.user.user_id, "not a key") == 1
    assert world.verifies_during(world.user.user_id, _with_other_secret(world.key)) == 1


def test_a_cache_hit_skips_argon2(world: World) -> None:
    assert world.verifies_during(world.user.user_id, world.key) == 1
    assert world.verifies_during(world.user.user_id, world.key) == 0
    assert world.verifies_during(world.key_id, world.key) == 0


def test_the_cache_holds_a_digest_never_the_plaintext(world: World) -> None:
    world.authenticator.authenticate(world.user.user_id, world.key)
    assert world.key not in repr(vars(world.authenticator))
    assert world.key.encode() not in repr(vars(world.authenticator)).encode()


def test_a_failed_attempt_is_not_cached(world: World) -> None:
    assert world.verifies_during("someone-else", world.key) == 1  # right key, wrong user name
    assert world.verifies_during(world.user.user_id, world.key) == 1
    assert world.verifies_during(world.user.user_id, world.key) == 0


def test_the_cache_expires_after_its_ttl(world: World) -> None:
    assert world.verifies_during(world.user.user_id, world.key) == 1
    world.clock.advance(59)
    assert world.verifies_during(world.user.user_id, world.key) == 0
    world.clock.advance(1)
    assert world.verifies_during(world.user.user_id, world.key) == 1


def test_a_zero_ttl_disables_the_cache(world: World) -> None:
    authenticator = ApiKeyAuthenticator(world.store, PEPPER, hasher=world.hasher, ttl_seconds=0)
    before = world.hasher.verify_calls
    authenticator.authenticate(world.user.user_id, world.key)
    authenticator.authenticate(world.user.user_id, world.key)
    assert world.hasher.verify_calls - before == 2


def test_revocation_after_a_cache_hit_fails_at_once_even_without_forget(world: World) -> None:
    world.authenticator.authenticate(world.user.user_id, world.key)
    world.authenticator.authenticate(world.user.user_id, world.key)
    world.store.revoke_api_key(world.key_id, world.clock.now())  # as another host would: no forget()
    assert _reject(world, world.user.user_id, world.key).reason == "api key revoked"


def test_forget_makes_the_next_login_verify_again(world: World) -> None:
    assert world.verifies_during(world.user.user_id, world.key) == 1
    world.authenticator.forget(world.key_id)
    assert world.verifies_during(world.user.user_id, world.key) == 1


def test_revoke_api_key_forgets_and_blocks_the_key(world: World) -> None:
    world.authenticator.authenticate(world.user.user_id, world.key)
    revoke_api_key(world.store, world.authenticator, world.key_id, now=world.clock.now)
    _reject(world, world.user.user_id, world.key)
    _reject(world, world.key_id, world.key)


def test_a_suspended_or_removed_user_fails_even_when_cached(world: World) -> None:
    world.authenticator.authenticate(world.user.user_id, world.key)
    for status in (UserStatus.SUSPENDED, UserStatus.REMOVED):
        world.store.put_user(replace(world.user, status=status))
        _reject(world, world.user.user_id, world.key)
    world.store.put_user(world.user)
    assert world.authenticator.authenticate(world.user.user_id, world.key).user_id == world.user.user_id


def test_a_suspended_organisation_fails(world: World) -> None:
    world.authenticator.authenticate(world.user.user_id, world.key)
    world.store.put_org(replace(world.org, status=OrgStatus.SUSPENDED))
    _reject(world, world.user.user_id, world.key)


def test_an_expired_key_fails_even_when_cached(world: World) -> None:
    key, record = issue_api_key(
        world.store,
        world.hasher,
        org_id=world.org.org_id,
        user_id=world.user.user_id,
        expires_at=world.clock.now() + timedelta(seconds=30),
        now=world.clock.now,
    )
    world.authenticator.authenticate(record.key_id, key)
    world.clock.advance(29)
    world.authenticator.authenticate(record.key_id, key)
    world.clock.advance(1)
    assert _reject(world, record.key_id, key).reason == "api key expired"


def test_role_changes_apply_to_the_next_login_even_when_cached(world: World) -> None:
    world.authenticator.authenticate(world.user.user_id, world.key)
    world.store.put_user(replace(world.user, role=Role.AUDITOR))
    assert world.authenticator.authenticate(world.user.user_id, world.key).role is Role.AUDITOR


def test_a_short_pepper_is_refused(world: World) -> None:
    with pytest.raises(ValueError, match="pepper"):
        ApiKeyAuthenticator(world.store, b"short", hasher=world.hasher)


def test_the_cache_stays_within_its_size_bound(world: World) -> None:
    authenticator = ApiKeyAuthenticator(
        world.store, PEPPER, hasher=world.hasher, clock=world.clock.monotonic, now=world.clock.now, max_cached_keys=2
    )
    keys = [world.key] + [
        issue_api_key(world.store, world.hasher, org_id=world.org.org_id, user_id=world.user.user_id)[0]
        for _ in range(2)
    ]
    for key in keys:
        authenticator.authenticate(world.user.user_id, key)
    before = world.hasher.verify_calls
    authenticator.authenticate(world.user.user_id, keys[-1])  # newest: still remembered
    authenticator.authenticate(world.user.user_id, keys[0])  # oldest: evicted
    assert world.hasher.verify_calls - before == 1


def test_concurrent_logins_from_many_threads_all_succeed(world: World) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def login() -> None:
        try:
            for _ in range(20):
                results.append(world.authenticator.authenticate(world.user.user_id, world.key).user_id)
        except BaseException as error:  # collected and asserted on the main thread
            errors.append(error)

    threads = [threading.Thread(target=login) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [world.user.user_id] * 160
    assert 1 <= world.hasher.verify_calls <= 8  # Argon2 ran only until the first verification was cached


# --- scopes and roles -------------------------------------------------------------------------


def test_key_cannot_hold_scope_its_role_lacks() -> None:
    store = SqliteControlStore(":memory:")
    org, user = _add_org_and_user(store, role=Role.ANALYST)
    with pytest.raises(ScopeNotAllowed) as caught:
        issue_api_key(
            store, CountingHasher(), org_id=org.org_id, user_id=user.user_id, scopes=["query:read", "policies:manage"]
        )
    assert caught.value.missing == ("policies:manage",)
    assert caught.value.code == "HD_ERR_SCOPE_NOT_ALLOWED"
    assert store.list_api_keys(org.org_id) == []


def test_an_auditor_key_cannot_query() -> None:
    store = SqliteControlStore(":memory:")
    org, user = _add_org_and_user(store, role=Role.AUDITOR)
    with pytest.raises(ScopeNotAllowed, match="query:read"):
        issue_api_key(store, CountingHasher(), org_id=org.org_id, user_id=user.user_id)
    _, record = issue_api_key(store, CountingHasher(), org_id=org.org_id, user_id=user.user_id, scopes=["audit:read"])
    assert record.scopes == ("audit:read",)


def test_issue_accepts_scope_bundles_within_the_role() -> None:
    store = SqliteControlStore(":memory:")
    org, user = _add_org_and_user(store, role=Role.SERVICE_ACCOUNT)
    _, record = issue_api_key(store, CountingHasher(), org_id=org.org_id, user_id=user.user_id, scopes=["agent"])
    assert record.scopes == SCOPE_BUNDLES["agent"]


def test_an_owner_may_hold_every_scope() -> None:
    store = SqliteControlStore(":memory:")
    org, user = _add_org_and_user(store, role=Role.OWNER)
    _, record = issue_api_key(store, CountingHasher(), org_id=org.org_id, user_id=user.user_id, scopes=ALL_SCOPES)
    assert record.scopes == ALL_SCOPES


def test_issue_for_a_missing_user_is_not_found_before_any_scope_check() -> None:
    store = SqliteControlStore(":memory:")
    org, _ = _add_org_and_user(store)
    with pytest.raises(NotFound):
        issue_api_key(store, CountingHasher(), org_id=org.org_id, user_id="usr_missing", scopes=["billing:manage"])


def test_a_demoted_users_key_loses_the_scopes_of_the_old_role_at_the_next_login() -> None:
    store = SqliteControlStore(":memory:")
    hasher = CountingHasher()
    org, user = _add_org_and_user(store, role=Role.ADMIN)
    key, record = issue_api_key(
        store, hasher, org_id=org.org_id, user_id=user.user_id, scopes=["query:read", "policies:manage", "audit:read"]
    )
    authenticator = ApiKeyAuthenticator(store, PEPPER, hasher=hasher)
    assert authenticator.authenticate(record.key_id, key).scopes == ("query:read", "audit:read", "policies:manage")
    store.put_user(replace(user, role=Role.ANALYST))
    principal = authenticator.authenticate(record.key_id, key)
    assert principal.scopes == ("query:read",)
    assert not principal.has_scope("policies:manage")
    store.put_user(replace(user, role=Role.AUDITOR))
    assert authenticator.authenticate(record.key_id, key).scopes == ("audit:read",)


def test_a_promotion_does_not_widen_an_existing_key() -> None:
    store = SqliteControlStore(":memory:")
    hasher = CountingHasher()
    org, user = _add_org_and_user(store, role=Role.ANALYST)
    key, record = issue_api_key(store, hasher, org_id=org.org_id, user_id=user.user_id, scopes=["query:read"])
    store.put_user(replace(user, role=Role.OWNER))
    authenticator = ApiKeyAuthenticator(store, PEPPER, hasher=hasher)
    assert authenticator.authenticate(record.key_id, key).scopes == ("query:read",)


# --- IP allowlists ------------------------------------------------------------------------------


def _key_with_allowlist(world: World, cidrs: list[str]) -> tuple[str, str]:
    key, record = issue_api_key(
        world.store,
        world.hasher,
        org_id=world.org.org_id,
        user_id=world.user.user_id,
        allowed_cidrs=cidrs,
        now=world.clock.now,
    )
    return key, record.key_id


def test_issue_stores_the_allowlist_in_canonical_form_each_network_once(world: World) -> None:
    _, key_id = _key_with_allowlist(world, ["10.1.2.3/8", " 192.168.0.7 ", "2001:DB8::1/32", "10.0.0.0/8"])
    stored = world.store.get_api_key(key_id)
    assert stored is not None
    assert stored.allowed_cidrs == ("10.0.0.0/8", "192.168.0.7/32", "2001:db8::/32")


def test_issue_refuses_a_malformed_network_and_stores_nothing(world: World) -> None:
    before = world.store.list_api_keys(world.org.org_id)
    for junk in (["10.0.0.0/33"], ["not-an-address"], [""], ["10.0.0.0/8", "300.1.1.1"]):
        with pytest.raises(InvalidRequest, match="network"):
            _key_with_allowlist(world, junk)
    with pytest.raises(InvalidRequest, match="list"):
        issue_api_key(
            world.store, world.hasher, org_id=world.org.org_id, user_id=world.user.user_id, allowed_cidrs="10.0.0.0/8"
        )
    assert world.store.list_api_keys(world.org.org_id) == before


def test_a_key_with_an_allowlist_works_from_inside_it(world: World) -> None:
    key, key_id = _key_with_allowlist(world, ["10.0.0.0/8", "2001:db8::/32"])
    for address in ("10.200.3.4", "2001:db8:1::5", "::ffff:10.0.0.9"):
        assert world.authenticator.authenticate(key_id, key, address).key_id == key_id


def test_a_key_with_an_allowlist_is_refused_from_outside_it(world: World) -> None:
    key, key_id = _key_with_allowlist(world, ["10.0.0.0/8"])
    for address in ("11.0.0.1", "2001:db8::1", "::ffff:11.0.0.1"):
        with pytest.raises(SourceAddressNotAllowed) as caught:
            world.authenticator.authenticate(key_id, key, address)
        # Told apart from a wrong secret only by its class and reason: code and message are the generic ones.
        assert (caught.value.code, str(caught.value)) == ("HD_ERR_AUTH_FAILED", "authentication failed")
        assert "allowlist" in caught.value.reason
        assert isinstance(caught.value, AuthenticationFailed)


def test_a_key_with_an_allowlist_fails_closed_without_a_usable_source_address(world: World) -> None:
    key, key_id = _key_with_allowlist(world, ["10.0.0.0/8"])
    with pytest.raises(SourceAddressNotAllowed, match="authentication failed"):
        world.authenticator.authenticate(key_id, key)
    with pytest.raises(SourceAddressNotAllowed):
        world.authenticator.authenticate(key_id, key, "10.0.0.1:5432")


def test_a_key_without_an_allowlist_works_from_anywhere_or_an_unknown_address(world: World) -> None:
    assert world.authenticator.authenticate(world.key_id, world.key, "198.51.100.7").key_id == world.key_id
    assert world.authenticator.authenticate(world.key_id, world.key, None).key_id == world.key_id


def test_the_allowlist_is_checked_on_every_login_even_when_the_key_is_cached(world: World) -> None:
    key, key_id = _key_with_allowlist(world, ["10.0.0.0/8"])
    world.authenticator.authenticate(key_id, key, "10.0.0.1")
    with pytest.raises(SourceAddressNotAllowed):
        world.authenticator.authenticate(key_id, key, "192.0.2.1")


def test_a_wrong_secret_from_outside_the_allowlist_says_only_authentication_failed(world: World) -> None:
    key, key_id = _key_with_allowlist(world, ["10.0.0.0/8"])
    with pytest.raises(AuthenticationFailed) as caught:
        world.authenticator.authenticate(key_id, _with_other_secret(key), "192.0.2.1")
    assert not isinstance(caught.value, SourceAddressNotAllowed)  # the allowlist is not revealed without the key


# --- rotation -----------------------------------------------------------------------------------


def test_rotation_issues_a_twin_key_and_the_old_one_keeps_working_for_the_grace_period(world: World) -> None:
    key, key_id = _key_with_allowlist(world, ["10.0.0.0/8"])
    plaintext, new, old = rotate_api_key(world.store, world.hasher, key_id, now=world.clock.now)
    assert new.key_id != key_id and new.key_id == key_id_of(plaintext)
    assert (new.org_id, new.user_id, new.env, new.scopes, new.allowed_cidrs, new.name, new.expires_at) == (
        old.org_id,
        old.user_id,
        old.env,
        old.scopes,
        old.allowed_cidrs,
        old.name,
        None,
    )
    assert old.rotated_to == new.key_id
    assert old.expires_at == T0 + timedelta(hours=72)
    assert world.store.get_api_key(key_id) == old
    assert world.store.get_api_key(new.key_id) == new
    world.clock.advance(72 * 3600 - 1)
    assert world.authenticator.authenticate(key_id, key, "10.0.0.1").key_id == key_id
    world.clock.advance(1)
    with pytest.raises(AuthenticationFailed) as caught:
        world.authenticator.authenticate(key_id, key, "10.0.0.1")
    assert caught.value.reason == "api key expired"
    assert world.authenticator.authenticate(new.key_id, plaintext, "10.0.0.1").key_id == new.key_id


def test_rotation_never_extends_the_old_keys_life_nor_the_new_keys_beyond_the_original_expiry(world: World) -> None:
    soon = T0 + timedelta(hours=1)
    _, record = issue_api_key(
        world.store,
        world.hasher,
        org_id=world.org.org_id,
        user_id=world.user.user_id,
        expires_at=soon,
        now=world.clock.now,
    )
    _, new, old = rotate_api_key(world.store, world.hasher, record.key_id, now=world.clock.now)
    assert old.expires_at == soon
    assert new.expires_at == soon


def test_rotation_honours_a_custom_grace_period(world: World) -> None:
    _, new, old = rotate_api_key(world.store, world.hasher, world.key_id, grace=timedelta(0), now=world.clock.now)
    assert old.expires_at == T0
    with pytest.raises(AuthenticationFailed):
        world.authenticator.authenticate(world.key_id, world.key)
    with pytest.raises(InvalidRequest):
        rotate_api_key(world.store, world.hasher, new.key_id, grace=timedelta(hours=-1))


def test_rotating_a_revoked_an_already_rotated_or_an_expired_key_conflicts(world: World) -> None:
    _, rotated_away, _ = rotate_api_key(world.store, world.hasher, world.key_id, now=world.clock.now)
    with pytest.raises(Conflict, match="already rotated"):
        rotate_api_key(world.store, world.hasher, world.key_id, now=world.clock.now)
    revoke_api_key(world.store, None, rotated_away.key_id, now=world.clock.now)
    with pytest.raises(Conflict, match="revoked"):
        rotate_api_key(world.store, world.hasher, rotated_away.key_id, now=world.clock.now)
    _, expiring = issue_api_key(
        world.store,
        world.hasher,
        org_id=world.org.org_id,
        user_id=world.user.user_id,
        expires_at=T0 + timedelta(seconds=10),
        now=world.clock.now,
    )
    world.clock.advance(10)
    with pytest.raises(Conflict, match="expired"):
        rotate_api_key(world.store, world.hasher, expiring.key_id, now=world.clock.now)
    with pytest.raises(NotFound):
        rotate_api_key(world.store, world.hasher, "hd_live_nothere0", now=world.clock.now)


def test_rotating_a_demoted_users_key_keeps_only_the_scopes_the_role_still_has() -> None:
    store = SqliteControlStore(":memory:")
    hasher = CountingHasher()
    org, user = _add_org_and_user(store, role=Role.ADMIN)
    _, record = issue_api_key(
        store, hasher, org_id=org.org_id, user_id=user.user_id, scopes=["query:read", "policies:manage"]
    )
    store.put_user(replace(user, role=Role.ANALYST))
    _, new, _ = rotate_api_key(store, hasher, record.key_id)
    assert new.scopes == ("query:read",)
    store.put_user(replace(user, role=Role.AUDITOR))
    with pytest.raises(Conflict, match="none of this key's scopes"):
        rotate_api_key(store, hasher, new.key_id)
    still = store.get_api_key(new.key_id)
    assert still is not None and still.rotated_to is None
