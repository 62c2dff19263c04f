"""Brute-force throttling: the policy's numbers, the throttle on the SQLite store, and its use by login and keys."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyotp
import pytest

import hd_core.api_keys as api_keys_module
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.api_keys import ApiKeyAuthenticator, ApiKeyHasher, issue_api_key
from hd_core.auth import begin_mfa_enrolment, confirm_mfa_enrolment, login
from hd_core.auth_throttle import AuthThrottle, Lockout, ThrottlePolicy, ThrottleSubject
from hd_core.errors import AuthenticationFailed, MfaRequired
from hd_core.models import AuthFailures, Organization, OrgStatus, Role, User, UserStatus, new_id
from hd_core.passwords import set_password
from hd_core.tokens import JwtIssuer
from tests.clocks import HandWoundClock

T0 = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)
EMAIL = "ana@acme.test"
PASSWORD = "correct horse battery"
PEPPER = b"p" * 32
# Small numbers, so a test reaches every stage in a few attempts: 2 free, 1-2 s backoff, locked at 4.
SMALL = ThrottlePolicy(
    free_failures=2,
    base_delay=timedelta(seconds=1),
    max_delay=timedelta(seconds=30),
    lockout_after=4,
    lockout=timedelta(minutes=5),
    forget_after=timedelta(minutes=30),
)


class CountingHasher(ApiKeyHasher):
    """Argon2id at the smallest legal cost (fast tests), counting verifies."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verify_calls = 0
        self._count_lock = threading.Lock()

    def verify(self, key_hash: str, plaintext: str) -> bool:
        with self._count_lock:
            self.verify_calls += 1
        return super().verify(key_hash, plaintext)


@dataclass
class World:
    store: SqliteControlStore
    clock: HandWoundClock
    lockouts: list[Lockout]
    throttle: AuthThrottle
    hasher: CountingHasher
    user: User
    issuer: JwtIssuer

    def fail(self, subject: ThrottleSubject) -> None:
        self.throttle.admit(subject).failed()

    def fail_past_the_backoff(self, subject: ThrottleSubject, times: int) -> None:
        for _ in range(times):
            self.fail(subject)
            self.clock.advance(seconds=2)

    def blocked(self, subject: ThrottleSubject) -> bool:
        try:
            self.throttle.admit(subject)
        except AuthenticationFailed as refused:
            assert str(refused) == "authentication failed"  # the generic message, whatever the reason
            return True
        return False


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> LocalKeyFile:
    return LocalKeyFile(tmp_path_factory.mktemp("keys") / "keys.json")


@pytest.fixture
def world(key_file: LocalKeyFile) -> Iterator[World]:
    store = SqliteControlStore(":memory:")
    clock = HandWoundClock(T0)
    lockouts: list[Lockout] = []
    org = Organization(new_id("org"), "Acme", OrgStatus.ACTIVE, T0)
    user = User(new_id("usr"), org.org_id, EMAIL, Role.ANALYST, UserStatus.ACTIVE, None, None, T0)
    store.put_org(org)
    store.put_user(user)
    hasher = CountingHasher()
    user = set_password(store, hasher, user.user_id, PASSWORD)
    hasher.verify_calls = 0
    issuer = JwtIssuer(key_file, issuer="https://control.hd.test", audience="hd", now=clock)
    throttle = AuthThrottle(store, SMALL, now=clock, on_lockout=lockouts.append)
    yield World(store, clock, lockouts, throttle, hasher, user, issuer)
    store.close()


ANA = ThrottleSubject.login(EMAIL)


# --- the policy ---------------------------------------------------------------------------------


def test_the_default_policy_is_five_free_then_doubling_backoff_then_a_15_minute_lockout_at_ten() -> None:
    policy = ThrottlePolicy()
    delays = [policy.delay(count).total_seconds() for count in range(1, 12)]
    assert delays == [0, 0, 0, 0, 0, 1, 2, 4, 8, 900, 900]
    assert policy.forget_after == timedelta(hours=1)


def test_backoff_stops_growing_at_max_delay_however_many_failures() -> None:
    policy = ThrottlePolicy(max_delay=timedelta(seconds=3), lockout_after=10**9)
    assert policy.delay(8) == timedelta(seconds=3)
    assert policy.delay(10**6) == timedelta(seconds=3)  # no 2**999994 computed on the way


@pytest.mark.parametrize(
    "changes",
    [
        {"free_failures": -1},
        {"free_failures": 10, "lockout_after": 10},
        {"base_delay": timedelta(0)},
        {"max_delay": timedelta(milliseconds=500)},
        {"lockout": timedelta(0)},
        {"forget_after": timedelta(minutes=10)},  # shorter than the 15 min lockout
    ],
)
def test_an_inconsistent_policy_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ThrottlePolicy(**changes)  # type: ignore[arg-type]


def test_a_failure_during_a_lockout_starts_no_new_one_but_one_after_it_does() -> None:
    def failures(count: int, previous: timedelta) -> AuthFailures:
        return AuthFailures("s", count, T0, T0 - previous, T0 + SMALL.forget_after)

    assert SMALL.starts_lockout(failures(4, timedelta(seconds=1)))
    assert not SMALL.starts_lockout(failures(5, timedelta(seconds=1)))  # raced in during the lockout
    assert SMALL.starts_lockout(failures(5, SMALL.lockout))
    assert not SMALL.starts_lockout(failures(3, SMALL.lockout))


def test_login_subjects_ignore_case_and_spaces_and_keep_only_a_hash_of_the_email() -> None:
    assert ThrottleSubject.login("  Ana@ACME.test ") == ANA
    assert ANA.key.startswith("login:") and EMAIL not in ANA.key and len(ANA.key) == len("login:") + 64
    assert ThrottleSubject.api_key("hd_live_AbCdEfGh").key == "api_key:hd_live_AbCdEfGh"


# --- the throttle on a store ----------------------------------------------------------------------


def test_free_failures_then_backoff_then_lockout(world: World) -> None:
    world.fail(ANA)
    world.fail(ANA)
    assert not world.blocked(ANA)  # two free failures
    world.fail(ANA)  # the third blocks for 1 s
    assert world.blocked(ANA)
    world.clock.advance(seconds=1)
    world.fail(ANA)  # the fourth locks
    world.clock.advance(minutes=4, seconds=59)
    assert world.blocked(ANA)
    world.clock.advance(seconds=1)
    assert not world.blocked(ANA)


def test_refused_attempts_are_not_counted(world: World) -> None:
    for _ in range(3):
        world.fail(ANA)
    for _ in range(50):
        assert world.blocked(ANA)
    failures = world.store.get_auth_failures(ANA.key)
    assert failures is not None and failures.count == 3


def test_a_proven_secret_forgets_the_failures(world: World) -> None:
    for _ in range(3):
        world.fail(ANA)
    world.clock.advance(seconds=1)
    world.throttle.admit(ANA).succeeded()
    assert world.store.get_auth_failures(ANA.key) is None
    for _ in range(2):
        world.fail(ANA)
    assert not world.blocked(ANA)


def test_failures_are_forgotten_after_a_quiet_period(world: World) -> None:
    for _ in range(3):
        world.fail(ANA)
    world.clock.advance(minutes=30, seconds=1)
    assert not world.blocked(ANA)
    world.fail(ANA)
    failures = world.store.get_auth_failures(ANA.key)
    assert failures is not None and failures.count == 1


def test_subjects_are_throttled_apart(world: World) -> None:
    key = ThrottleSubject.api_key("hd_live_AbCdEfGh")
    world.fail_past_the_backoff(ANA, 4)
    assert world.blocked(ANA)
    assert not world.blocked(key)
    assert not world.blocked(ThrottleSubject.login("bob@acme.test"))


def test_each_lockout_is_reported_once_and_a_failure_after_it_ends_locks_again(world: World) -> None:
    for _ in range(4):
        world.clock.advance(seconds=2)
        world.fail(ANA)
    locked_at = T0 + timedelta(seconds=8)
    assert [(lockout.failures, lockout.until) for lockout in world.lockouts] == [(4, locked_at + SMALL.lockout)]
    world.clock.advance(minutes=5)
    world.fail(ANA)  # one more guess after the lockout: locked again at once
    assert world.blocked(ANA)
    assert [lockout.failures for lockout in world.lockouts] == [4, 5]


def test_a_lockout_observer_that_fails_leaves_the_refusal_as_it_was(world: World) -> None:
    def broken(_: Lockout) -> None:
        raise RuntimeError("audit storage down")

    throttle = AuthThrottle(world.store, SMALL, now=world.clock, on_lockout=broken)
    for _ in range(4):
        throttle.admit(ANA).failed()
        world.clock.advance(seconds=2)
    with pytest.raises(AuthenticationFailed):
        throttle.admit(ANA)


def test_racing_failures_report_the_lockout_once(world: World) -> None:
    attempts = [world.throttle.admit(ANA) for _ in range(12)]  # all admitted before any failed
    start = threading.Barrier(len(attempts))

    def fail(attempt: object) -> None:
        start.wait()
        attempt.failed()  # type: ignore[attr-defined]

    threads = [threading.Thread(target=fail, args=(attempt,)) for attempt in attempts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(world.lockouts) == 1


# --- login ------------------------------------------------------------------------------------------


def _login(world: World, password: str = PASSWORD, totp_code: str | None = None, email: str = EMAIL) -> None:
    login(world.store, world.hasher, world.issuer, email=email, password=password, totp_code=totp_code,
          now=world.clock, throttle=world.throttle)


def test_wrong_passwords_lock_the_account_and_the_right_one_is_refused_unverified_until_it_ends(world: World) -> None:
    for _ in range(4):
        with pytest.raises(AuthenticationFailed):
            _login(world, password="wrong password!")
        world.clock.advance(seconds=2)
    verifies = world.hasher.verify_calls
    with pytest.raises(AuthenticationFailed) as refused:
        _login(world)
    assert type(refused.value) is AuthenticationFailed and str(refused.value) == "authentication failed"
    assert world.hasher.verify_calls == verifies  # refused before Argon2: no cost, no oracle
    world.clock.advance(minutes=5)
    _login(world)
    assert world.store.get_auth_failures(ANA.key) is None


def test_unknown_emails_are_throttled_like_real_ones(world: World) -> None:
    for _ in range(4):
        with pytest.raises(AuthenticationFailed):
            _login(world, email="nobody@acme.test")
        world.clock.advance(seconds=2)
    assert world.blocked(ThrottleSubject.login("nobody@acme.test"))
    assert world.lockouts[0].subject.kind == "login"


def test_wrong_totp_codes_count_but_a_missing_one_does_not(world: World) -> None:
    secret, _ = begin_mfa_enrolment(world.store, world.user.user_id)
    enrolled_at = T0 - timedelta(minutes=5)
    confirm_mfa_enrolment(world.store, world.user.user_id, pyotp.TOTP(secret).at(enrolled_at), now=lambda: enrolled_at)
    for _ in range(5):
        with pytest.raises(MfaRequired):
            _login(world)  # no code: the client is asked for one, nothing is counted
    assert world.store.get_auth_failures(ANA.key) is None
    right = pyotp.TOTP(secret).at(world.clock())
    wrong = "000000" if right != "000000" else "111111"
    for _ in range(4):
        with pytest.raises(AuthenticationFailed):
            _login(world, totp_code=wrong)
        world.clock.advance(seconds=2)
    with pytest.raises(AuthenticationFailed) as refused:
        _login(world, totp_code=pyotp.TOTP(secret).at(world.clock()))
    assert not isinstance(refused.value, MfaRequired)  # locked: the password is not even looked at
    world.clock.advance(minutes=5)
    _login(world, totp_code=pyotp.TOTP(secret).at(world.clock()))


# --- API keys ---------------------------------------------------------------------------------------


def _with_other_secret(key: str) -> str:
    """A well-formed key (valid checksum) with the same key id as `key` but a different secret."""
    body = key[:-6]
    body = body[:-1] + ("A" if body[-1] != "A" else "B")
    return body + api_keys_module._checksum(body)


def test_wrong_key_secrets_lock_the_key_id_even_for_the_right_key_and_its_cached_proof(world: World) -> None:
    key, record = issue_api_key(world.store, world.hasher, org_id=world.user.org_id, user_id=world.user.user_id)
    authenticator = ApiKeyAuthenticator(world.store, PEPPER, hasher=world.hasher, now=world.clock,
                                        throttle=world.throttle)
    authenticator.authenticate(record.user_id, key)  # verified now, remembered for 60 s
    wrong = _with_other_secret(key)
    for _ in range(4):
        with pytest.raises(AuthenticationFailed):
            authenticator.authenticate(record.user_id, wrong, "203.0.113.9")
        world.clock.advance(seconds=2)
    verifies = world.hasher.verify_calls
    with pytest.raises(AuthenticationFailed):
        authenticator.authenticate(record.user_id, key)
    assert world.hasher.verify_calls == verifies
    assert [(lockout.subject.key, lockout.source_ip) for lockout in world.lockouts] == [
        (f"api_key:{record.key_id}", "203.0.113.9")
    ]
    world.clock.advance(minutes=5)
    assert authenticator.authenticate(record.user_id, key).key_id == record.key_id


def test_a_cached_proof_of_the_key_does_not_wipe_an_attackers_count(world: World) -> None:
    key, record = issue_api_key(world.store, world.hasher, org_id=world.user.org_id, user_id=world.user.user_id)
    authenticator = ApiKeyAuthenticator(world.store, PEPPER, hasher=world.hasher, now=world.clock,
                                        throttle=world.throttle)
    authenticator.authenticate(record.user_id, key)
    for _ in range(4):
        with pytest.raises(AuthenticationFailed):
            authenticator.authenticate(record.user_id, _with_other_secret(key))
        world.clock.advance(seconds=2)
        try:
            authenticator.authenticate(record.user_id, key)  # the busy client, served from the cache
        except AuthenticationFailed:
            pass
    assert world.lockouts and world.blocked(ThrottleSubject.api_key(record.key_id))
