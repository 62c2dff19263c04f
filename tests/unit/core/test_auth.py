"""Passwords, login with TOTP (each code once), rotating refresh tokens and MFA enrolment, on the real SQLite store."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pyotp
import pytest

from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.api_keys import ApiKeyHasher
from hd_core.auth import (
    MfaEnrolmentRequired,
    PasswordProvenEnrolment,
    TokenPair,
    begin_mfa_enrolment,
    begin_mfa_enrolment_with_password,
    confirm_mfa_enrolment,
    confirm_mfa_enrolment_with_password,
    confirm_own_mfa_enrolment,
    login,
    refresh,
    reset_mfa,
    revoke_refresh_token,
    totp_step,
)
from hd_core.errors import AuthenticationFailed, Conflict, InvalidRequest, MfaRequired, NotFound, RefreshTokenReused
from hd_core.iam_audit import IamAuditTrail
from hd_core.models import (
    ChangeContext,
    KeyEnv,
    Organization,
    OrgStatus,
    Principal,
    RefreshToken,
    Role,
    User,
    UserStatus,
    new_id,
)
from hd_core.passwords import set_password, verify_password
from hd_core.ports import ControlStore
from hd_core.tokens import JwtIssuer, JwtVerifier

T0 = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)  # 10 s into a 30 s TOTP step
STEP = timedelta(seconds=30)
ENROLLED_AT = T0 - timedelta(minutes=5)  # `World.enrol` spends a step well before T0, so codes at T0 are fresh
PASSWORD = "correct horse battery"
EMAIL = "ana@acme.test"


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


class Clock:
    def __init__(self) -> None:
        self.at = T0

    def now(self) -> datetime:
        return self.at

    def advance(self, delta: timedelta) -> None:
        self.at += delta


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> LocalKeyFile:
    return LocalKeyFile(tmp_path_factory.mktemp("keys") / "keys.json")


@dataclass
class World:
    store: SqliteControlStore
    hasher: CountingHasher
    clock: Clock
    issuer: JwtIssuer
    verifier: JwtVerifier
    org: Organization
    user: User

    def login(self, *, email: str = EMAIL, password: str = PASSWORD, totp_code: str | None = None) -> TokenPair:
        return login(
            self.store,
            self.hasher,
            self.issuer,
            email=email,
            password=password,
            totp_code=totp_code,
            now=self.clock.now,
        )

    def refresh(self, token: str, seen: list[RefreshToken] | None = None) -> TokenPair:
        on_reuse = None if seen is None else seen.append
        return refresh(self.store, self.issuer, token, on_reuse=on_reuse, now=self.clock.now)

    def current_user(self) -> User:
        user = self.store.get_user(self.user.user_id)
        assert user is not None
        return user

    def enrol(self) -> str:
        secret, _ = begin_mfa_enrolment(self.store, self.user.user_id)
        code = pyotp.TOTP(secret).at(ENROLLED_AT)
        confirm_mfa_enrolment(self.store, self.user.user_id, code, now=lambda: ENROLLED_AT)
        return secret


@pytest.fixture
def world(key_file: LocalKeyFile) -> Iterator[World]:
    store = SqliteControlStore(":memory:")
    hasher = CountingHasher()
    clock = Clock()
    org = Organization(new_id("org"), "Acme", OrgStatus.ACTIVE, T0)
    user = User(new_id("usr"), org.org_id, EMAIL, Role.ANALYST, UserStatus.ACTIVE, "finance", "eu", T0)
    store.put_org(org)
    store.put_user(user)
    user = set_password(store, hasher, user.user_id, PASSWORD)
    hasher.verify_calls = 0
    issuer = JwtIssuer(key_file, issuer="https://control.hd.test", audience="hd", now=clock.now)
    verifier = JwtVerifier(key_file, issuer="https://control.hd.test", audience="hd", now=clock.now)
    yield World(store, hasher, clock, issuer, verifier, org, user)
    store.close()


def _other_code(code: str) -> str:
    return "000000" if code != "000000" else "111111"


def _refused(world: World, **kwargs: str | None) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as caught:
        world.login(**kwargs)  # type: ignore[arg-type]  # the keywords are login()'s own
    return caught.value


# --- passwords ------------------------------------------------------------------------------------


def test_set_password_stores_an_argon2id_hash_never_the_plaintext(world: World) -> None:
    stored = world.current_user()
    assert stored.password_hash is not None and stored.password_hash.startswith("$argon2id$")
    assert PASSWORD not in stored.password_hash
    assert stored.password_hash not in repr(stored)
    assert verify_password(world.hasher, stored.password_hash, PASSWORD)


def test_a_password_must_have_twelve_to_1024_characters(world: World) -> None:
    before = world.current_user().password_hash
    for too_short_or_long in ("x" * 11, "", "x" * 1025):
        with pytest.raises(InvalidRequest, match="characters"):
            set_password(world.store, world.hasher, world.user.user_id, too_short_or_long)
    assert world.current_user().password_hash == before
    assert set_password(world.store, world.hasher, world.user.user_id, "x" * 12).password_hash != before


def test_set_password_for_an_unknown_or_removed_user_is_refused(world: World) -> None:
    with pytest.raises(NotFound):
        set_password(world.store, world.hasher, "usr_missing", PASSWORD)
    world.store.put_user(replace(world.current_user(), status=UserStatus.REMOVED))
    with pytest.raises(Conflict):
        set_password(world.store, world.hasher, world.user.user_id, PASSWORD)


def test_verifying_against_no_hash_still_costs_one_argon2_verify_and_fails(world: World) -> None:
    assert not verify_password(world.hasher, None, PASSWORD)
    assert world.hasher.verify_calls == 1


# --- login ----------------------------------------------------------------------------------------


def test_login_with_the_right_password_returns_a_bearer_access_token_and_a_refresh_token(world: World) -> None:
    pair = world.login()
    assert (pair.token_type, pair.expires_in, pair.refresh_expires_in) == ("Bearer", 3600, 7 * 24 * 3600)
    claims = world.verifier.verify(pair.access_token)
    assert (claims["sub"], claims["org_id"], claims["role"], claims["env"]) == (
        world.user.user_id,
        world.org.org_id,
        "Analyst",
        "live",
    )
    token_id, secret = pair.refresh_token.removeprefix("hdr_").split(".")
    record = world.store.get_refresh_token(token_id)
    assert record is not None
    assert record.token_hash == hashlib.sha256(secret.encode()).hexdigest()  # only the hash is stored
    assert (record.user_id, record.issued_at, record.expires_at, record.used_at) == (
        world.user.user_id,
        T0,
        T0 + timedelta(days=7),
        None,
    )
    assert pair.access_token not in repr(pair) and pair.refresh_token not in repr(pair)


def test_login_email_is_case_insensitive(world: World) -> None:
    assert world.verifier.verify(world.login(email="  ANA@Acme.TEST ").access_token)["sub"] == world.user.user_id


def test_every_login_failure_is_generic_and_costs_exactly_one_argon2_verify(world: World) -> None:
    passwordless = replace(world.user, user_id=new_id("usr"), email="bo@acme.test", password_hash=None)
    world.store.put_user(passwordless)
    for attempt in (
        {"password": "wrong password!"},
        {"email": "nobody@acme.test"},
        {"email": ""},
        {"email": "bo@acme.test"},
        {"password": "x" * 100_000},
    ):
        before = world.hasher.verify_calls
        error = _refused(world, **attempt)
        assert type(error) is AuthenticationFailed
        assert str(error) == "authentication failed"
        assert world.hasher.verify_calls - before == 1, attempt


def test_a_suspended_or_removed_user_cannot_log_in(world: World) -> None:
    for status in (UserStatus.SUSPENDED, UserStatus.REMOVED):
        world.store.put_user(replace(world.current_user(), status=status))
        assert _refused(world).reason == "user not active"


def test_a_user_of_a_suspended_organisation_cannot_log_in(world: World) -> None:
    world.store.put_org(replace(world.org, status=OrgStatus.SUSPENDED))
    assert _refused(world).reason == "organization missing or not active"


def test_an_enrolled_user_needs_a_current_totp_code(world: World) -> None:
    secret = world.enrol()
    totp = pyotp.TOTP(secret)
    for code in (None, "", "abcdef", _other_code(totp.at(T0)), totp.at(T0 - 2 * STEP)):
        with pytest.raises(MfaRequired) as caught:
            world.login(totp_code=code)
        assert caught.value.code == "HD_ERR_MFA_REQUIRED"
    assert world.login(totp_code=totp.at(T0 - STEP)).access_token  # one step of drift
    assert world.login(totp_code=totp.at(T0)).access_token


def test_a_wrong_password_is_refused_before_mfa_is_mentioned(world: World) -> None:
    world.enrol()
    error = _refused(world, password="wrong password!")
    assert not isinstance(error, MfaRequired)  # nobody learns that an account has MFA without its password


def test_an_org_that_requires_mfa_tells_an_unenrolled_user_to_enrol(world: World) -> None:
    world.store.put_org(replace(world.org, mfa_required=True))
    with pytest.raises(MfaEnrolmentRequired) as caught:
        world.login(totp_code="123456")
    assert isinstance(caught.value, MfaRequired) and caught.value.code == "HD_ERR_MFA_REQUIRED"
    assert "enrol" in str(caught.value)
    begin_mfa_enrolment(world.store, world.user.user_id)  # a pending enrolment is not an enrolment
    with pytest.raises(MfaEnrolmentRequired):
        world.login()


def test_an_org_that_requires_mfa_admits_an_enrolled_user_with_a_code(world: World) -> None:
    world.store.put_org(replace(world.org, mfa_required=True))
    secret = world.enrol()
    with pytest.raises(MfaRequired):
        world.login()
    assert world.login(totp_code=pyotp.TOTP(secret).at(T0)).access_token


def test_mfa_flagged_on_without_a_stored_secret_fails_closed(world: World) -> None:
    world.store.put_user(replace(world.current_user(), mfa_enabled=True, mfa_secret=None))
    with pytest.raises(MfaRequired):
        world.login(totp_code="123456")


# --- TOTP replay (RFC 6238 section 5.2) -----------------------------------------------------------


def _step(at: datetime) -> int:
    return int(at.timestamp()) // 30


def test_totp_step_names_the_step_of_a_code_within_one_step_of_now_and_skips_spent_steps() -> None:
    secret = pyotp.random_base32()
    totp = pyotp.TOTP(secret)
    now = _step(T0)
    assert [totp_step(secret, totp.at(T0 + offset * STEP), T0) for offset in (-2, -1, 0, 1, 2)] == [
        None, now - 1, now, now + 1, None,
    ]
    assert totp_step(secret, " ".join([totp.at(T0)[:3], totp.at(T0)[3:]]), T0) == now  # as an app displays it
    assert totp_step(secret, totp.at(T0), T0, after_step=now - 1) == now
    assert totp_step(secret, totp.at(T0), T0, after_step=now) is None
    assert totp_step(secret, "abcdef", T0) is None


def test_the_same_totp_code_is_accepted_only_once_and_the_next_steps_code_works(world: World) -> None:
    totp = pyotp.TOTP(world.enrol())
    code = totp.at(T0)
    assert world.login(totp_code=code).access_token
    assert world.current_user().mfa_last_step == _step(T0)
    with pytest.raises(MfaRequired) as caught:
        world.login(totp_code=code)
    assert caught.value.code == "HD_ERR_MFA_REQUIRED"
    world.clock.advance(STEP)
    with pytest.raises(MfaRequired):
        world.login(totp_code=code)  # still inside the drift window, but spent
    assert world.login(totp_code=totp.at(world.clock.at)).access_token
    assert world.current_user().mfa_last_step == _step(T0) + 1


def test_after_a_code_from_a_fast_clock_the_current_steps_code_is_refused(world: World) -> None:
    totp = pyotp.TOTP(world.enrol())
    assert world.login(totp_code=totp.at(T0 + STEP)).access_token
    with pytest.raises(MfaRequired):
        world.login(totp_code=totp.at(T0))  # an earlier step than one already accepted


def test_the_code_that_confirmed_enrolment_cannot_log_in(world: World) -> None:
    secret, _ = begin_mfa_enrolment(world.store, world.user.user_id)
    totp = pyotp.TOTP(secret)
    confirmed = confirm_mfa_enrolment(world.store, world.user.user_id, totp.at(T0), now=world.clock.now)
    assert confirmed.mfa_last_step == _step(T0) == world.current_user().mfa_last_step
    with pytest.raises(MfaRequired):
        world.login(totp_code=totp.at(T0))
    assert world.login(totp_code=totp.at(T0 + STEP)).access_token


class StaleReadStore:
    """The store as a login sees it when another request writes the user during its password check."""

    def __init__(self, store: SqliteControlStore, stale: User) -> None:
        self._store = store
        self._stale = stale

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def get_user_by_email(self, email: str) -> User | None:
        return self._stale


def _stale_login(world: World, stale: User, code: str) -> TokenPair:
    store: ControlStore = StaleReadStore(world.store, stale)  # type: ignore[assignment]  # a proxy, duck-typed
    return login(store, world.hasher, world.issuer, email=EMAIL, password=PASSWORD, totp_code=code, now=world.clock.now)


def test_a_code_spent_by_another_login_during_the_password_check_is_refused(world: World) -> None:
    totp = pyotp.TOTP(world.enrol())
    before = world.current_user()
    assert world.login(totp_code=totp.at(T0)).access_token  # the other login, between read and write
    with pytest.raises(MfaRequired):
        _stale_login(world, before, totp.at(T0))
    assert world.current_user().mfa_last_step == _step(T0)


def test_spending_a_code_does_not_undo_a_suspension_made_during_the_password_check(world: World) -> None:
    totp = pyotp.TOTP(world.enrol())
    before = world.current_user()
    world.store.put_user(replace(before, status=UserStatus.SUSPENDED))
    with pytest.raises(MfaRequired):
        _stale_login(world, before, totp.at(T0))
    assert world.current_user().status == UserStatus.SUSPENDED


def test_a_new_secret_starts_with_no_spent_step(world: World) -> None:
    world.enrol()
    assert world.current_user().mfa_last_step == _step(ENROLLED_AT)
    assert reset_mfa(world.store, world.user.user_id).mfa_last_step == 0
    world.store.put_user(replace(world.current_user(), mfa_last_step=_step(T0) + 1))
    secret, _ = begin_mfa_enrolment(world.store, world.user.user_id)
    assert world.current_user().mfa_last_step == 0
    # A code of the new secret is not refused for a step the old secret spent.
    assert confirm_mfa_enrolment(world.store, world.user.user_id, pyotp.TOTP(secret).at(T0), now=world.clock.now)


# --- refresh tokens -------------------------------------------------------------------------------


def test_refresh_spends_the_token_and_returns_the_next_one_of_the_same_family(world: World) -> None:
    first = world.login()
    world.clock.advance(timedelta(hours=2))
    second = world.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    spent = world.store.get_refresh_token(first.refresh_token[4:].split(".")[0])
    following = world.store.get_refresh_token(second.refresh_token[4:].split(".")[0])
    assert spent is not None and following is not None
    assert spent.used_at == world.clock.at
    assert following.family_id == spent.family_id
    assert following.expires_at == world.clock.at + timedelta(days=7)
    assert world.verifier.verify(second.access_token)["iat"] == int(world.clock.at.timestamp())


def test_a_refreshed_access_token_carries_the_users_current_role(world: World) -> None:
    pair = world.login()
    world.store.put_user(replace(world.current_user(), role=Role.AUDITOR))
    assert world.verifier.verify(world.refresh(pair.refresh_token).access_token)["role"] == "Auditor"


def test_reused_refresh_token_revokes_the_whole_family(world: World) -> None:
    first = world.login()
    second = world.refresh(first.refresh_token)
    seen: list[RefreshToken] = []
    with pytest.raises(RefreshTokenReused) as caught:
        world.refresh(first.refresh_token, seen)
    assert caught.value.code == "HD_ERR_REFRESH_TOKEN_REUSED"
    assert [token.token_id for token in seen] == [first.refresh_token[4:].split(".")[0]]
    assert world.store.refresh_family_revoked(seen[0].family_id)
    with pytest.raises(AuthenticationFailed) as later:
        world.refresh(second.refresh_token, seen)  # the legitimate holder is logged out too
    assert later.value.reason == "refresh token family revoked"
    assert len(seen) == 1
    assert world.login().refresh_token  # a fresh login starts a new family


class RacingStore:
    """The store as a request sees it when another request spends the same token between read and write."""

    def __init__(self, store: SqliteControlStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def get_refresh_token(self, token_id: str) -> RefreshToken | None:
        record = self._store.get_refresh_token(token_id)
        return None if record is None else replace(record, used_at=None)


def test_losing_the_race_to_spend_a_token_counts_as_reuse(world: World) -> None:
    pair = world.login()
    token_id = pair.refresh_token[4:].split(".")[0]
    world.store.use_refresh_token(token_id, T0)  # the other request won
    seen: list[RefreshToken] = []
    with pytest.raises(RefreshTokenReused):
        refresh(RacingStore(world.store), world.issuer, pair.refresh_token, on_reuse=seen.append, now=world.clock.now)
    assert len(seen) == 1 and world.store.refresh_family_revoked(seen[0].family_id)


def test_a_wrong_secret_is_refused_without_revoking_the_family(world: World) -> None:
    pair = world.login()
    token_id, secret = pair.refresh_token[4:].split(".")
    forged = f"hdr_{token_id}.{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    with pytest.raises(AuthenticationFailed) as caught:
        world.refresh(forged)
    assert type(caught.value) is AuthenticationFailed and caught.value.reason == "wrong refresh token secret"
    assert world.refresh(pair.refresh_token).access_token


def test_an_expired_refresh_token_is_refused(world: World) -> None:
    pair = world.login()
    world.clock.advance(timedelta(days=7))
    with pytest.raises(AuthenticationFailed) as caught:
        world.refresh(pair.refresh_token)
    assert caught.value.reason == "refresh token expired"


@pytest.mark.parametrize(
    "token",
    ["", "hdr_", "hdr_abc.def", "rt_AAAAAAAAAAAAAAAAAAAA.secret", "hdr_AAAAAAAAAAAAAAAAAAAA.", "eyJhbGciOi.x.y"],
)
def test_malformed_refresh_tokens_are_refused(world: World, token: str) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        world.refresh(token)
    assert caught.value.reason == "malformed refresh token"


def test_an_unknown_refresh_token_is_refused(world: World) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        world.refresh("hdr_AAAAAAAAAAAAAAAAAAAA.c2VjcmV0")
    assert caught.value.reason == "unknown refresh token"


def test_refresh_is_refused_once_the_user_or_org_is_suspended(world: World) -> None:
    pair = world.login()
    world.store.put_user(replace(world.current_user(), status=UserStatus.SUSPENDED))
    with pytest.raises(AuthenticationFailed):
        world.refresh(pair.refresh_token)
    world.store.put_user(replace(world.current_user(), status=UserStatus.ACTIVE))
    world.store.put_org(replace(world.org, status=OrgStatus.SUSPENDED))
    with pytest.raises(AuthenticationFailed):
        world.refresh(pair.refresh_token)
    world.store.put_org(world.org)
    assert world.refresh(pair.refresh_token).access_token  # refusals did not spend it


def test_logout_revokes_the_family(world: World) -> None:
    pair = world.login()
    revoke_refresh_token(world.store, pair.refresh_token, now=world.clock.now)
    with pytest.raises(AuthenticationFailed) as caught:
        world.refresh(pair.refresh_token)
    assert caught.value.reason == "refresh token family revoked"


# --- MFA enrolment --------------------------------------------------------------------------------


def test_enrolment_stores_an_unconfirmed_secret_and_returns_a_provisioning_uri(world: World) -> None:
    secret, uri = begin_mfa_enrolment(world.store, world.user.user_id, issuer_name="Acme Duck")
    parsed = urlparse(uri)
    assert (parsed.scheme, parsed.netloc) == ("otpauth", "totp")
    assert unquote(parsed.path) == f"/Acme Duck:{EMAIL}"
    assert parse_qs(parsed.query)["secret"] == [secret] and parse_qs(parsed.query)["issuer"] == ["Acme Duck"]
    stored = world.current_user()
    assert (stored.mfa_secret, stored.mfa_enabled) == (secret, False)
    assert secret not in repr(stored)


def test_confirming_with_a_wrong_code_keeps_mfa_off_and_a_right_code_turns_it_on(world: World) -> None:
    secret, _ = begin_mfa_enrolment(world.store, world.user.user_id)
    right = pyotp.TOTP(secret).at(T0)
    with pytest.raises(AuthenticationFailed):
        confirm_mfa_enrolment(world.store, world.user.user_id, _other_code(right), now=world.clock.now)
    assert not world.current_user().mfa_enabled
    assert confirm_mfa_enrolment(world.store, world.user.user_id, right, now=world.clock.now).mfa_enabled
    assert world.current_user().mfa_enabled
    with pytest.raises(Conflict):
        confirm_mfa_enrolment(world.store, world.user.user_id, right, now=world.clock.now)


def test_an_enrolled_user_cannot_start_a_new_enrolment_until_mfa_is_reset(world: World) -> None:
    world.enrol()
    with pytest.raises(Conflict, match="reset"):
        begin_mfa_enrolment(world.store, world.user.user_id)
    cleared = reset_mfa(world.store, world.user.user_id)
    assert (cleared.mfa_secret, cleared.mfa_enabled) == (None, False)
    assert world.current_user() == cleared
    assert world.login().access_token  # no code needed any more
    begin_mfa_enrolment(world.store, world.user.user_id)


def test_mfa_operations_on_an_unknown_user_are_not_found(world: World) -> None:
    with pytest.raises(NotFound):
        begin_mfa_enrolment(world.store, "usr_missing")
    with pytest.raises(NotFound):
        confirm_mfa_enrolment(world.store, "usr_missing", "123456")
    with pytest.raises(NotFound):
        reset_mfa(world.store, "usr_missing")
    with pytest.raises(Conflict):
        confirm_mfa_enrolment(world.store, world.user.user_id, "123456")  # nothing pending



# --- first enrolment proven by password -----------------------------------------------------------


def _begin_by_password(world: World, *, email: str = EMAIL, password: str = PASSWORD) -> tuple[str, str]:
    return begin_mfa_enrolment_with_password(world.store, world.hasher, email=email, password=password)


def _confirm_by_password(
    world: World, code: str, *, email: str = EMAIL, password: str = PASSWORD
) -> PasswordProvenEnrolment:
    return confirm_mfa_enrolment_with_password(
        world.store, world.hasher, world.issuer, email=email, password=password, code=code, now=world.clock.now
    )


def test_a_user_whose_org_requires_mfa_enrols_with_the_password_and_is_logged_in(world: World) -> None:
    world.store.put_org(replace(world.org, mfa_required=True))
    secret, uri = _begin_by_password(world, email="  ANA@acme.test")
    assert uri.startswith("otpauth://totp/") and world.current_user().mfa_secret == secret
    totp = pyotp.TOTP(secret)
    result = _confirm_by_password(world, totp.at(T0))
    assert (result.before.mfa_enabled, result.enrolled.mfa_enabled) == (False, True)
    assert result.enrolled == world.current_user() and result.enrolled.mfa_last_step == _step(T0)
    assert world.verifier.verify(result.tokens.access_token)["sub"] == world.user.user_id
    assert world.refresh(result.tokens.refresh_token).access_token
    with pytest.raises(MfaRequired) as caught:
        world.login()
    assert not isinstance(caught.value, MfaEnrolmentRequired)  # enrolled now: a code, not an enrolment, is missing
    with pytest.raises(MfaRequired):
        world.login(totp_code=totp.at(T0))  # the confirmation code is spent
    assert world.login(totp_code=totp.at(T0 + STEP)).access_token


def test_each_password_proven_enrolment_replaces_the_pending_secret(world: World) -> None:
    first, _ = _begin_by_password(world)
    second, _ = _begin_by_password(world)
    assert first != second and world.current_user().mfa_secret == second
    with pytest.raises(AuthenticationFailed):
        _confirm_by_password(world, pyotp.TOTP(first).at(T0))
    assert not world.current_user().mfa_enabled
    assert _confirm_by_password(world, pyotp.TOTP(second).at(T0)).enrolled.mfa_enabled


def _suspend_user(world: World) -> None:
    world.store.put_user(replace(world.current_user(), status=UserStatus.SUSPENDED))


def _suspend_org(world: World) -> None:
    world.store.put_org(replace(world.org, status=OrgStatus.SUSPENDED))


@pytest.mark.parametrize("operation", ["begin", "confirm"])
@pytest.mark.parametrize(
    ("credentials", "before_attempt"),
    [
        ({"password": "wrong password!"}, None),
        ({"email": "nobody@acme.test"}, None),
        ({"email": ""}, None),
        ({"password": "x" * 100_000}, None),
        ({}, _suspend_user),
        ({}, _suspend_org),
    ],
    ids=["wrong-password", "unknown-email", "no-email", "huge-password", "suspended-user", "suspended-org"],
)
def test_every_password_proven_enrolment_failure_is_generic_and_costs_one_argon2_verify(
    world: World, operation: str, credentials: dict[str, str], before_attempt: Callable[[World], None] | None
) -> None:
    secret, _ = _begin_by_password(world)
    if before_attempt is not None:
        before_attempt(world)
    verifies = world.hasher.verify_calls
    with pytest.raises(AuthenticationFailed) as caught:
        if operation == "begin":
            _begin_by_password(world, **credentials)
        else:
            _confirm_by_password(world, pyotp.TOTP(secret).at(T0), **credentials)
    assert type(caught.value) is AuthenticationFailed and str(caught.value) == "authentication failed"
    assert world.hasher.verify_calls - verifies == 1
    assert (world.current_user().mfa_secret, world.current_user().mfa_enabled) == (secret, False)


def test_a_wrong_code_with_the_right_password_confirms_nothing(world: World) -> None:
    secret, _ = _begin_by_password(world)
    with pytest.raises(AuthenticationFailed) as caught:
        _confirm_by_password(world, _other_code(pyotp.TOTP(secret).at(T0)))
    assert str(caught.value) == "authentication failed"
    assert not world.current_user().mfa_enabled


def test_an_enrolled_user_cannot_enrol_again_with_the_password(world: World) -> None:
    secret = world.enrol()
    with pytest.raises(Conflict, match="reset"):
        _begin_by_password(world)
    with pytest.raises(Conflict):
        _confirm_by_password(world, pyotp.TOTP(secret).at(T0))
    assert world.current_user().mfa_secret == secret  # the enrolled authenticator was not replaced


# --- IAM audit: the auth module records what it changes ------------------------------------------


def _trail(world: World, key_file: LocalKeyFile, tmp_path: Path) -> IamAuditTrail:
    return IamAuditTrail(world.store, LocalFolderCheckpointStore(tmp_path / "checkpoints"), key_file,
                         now=world.clock.now)


def test_a_reused_refresh_token_is_recorded_in_the_users_chain_after_the_family_is_revoked(
    world: World, key_file: LocalKeyFile, tmp_path: Path
) -> None:
    trail = _trail(world, key_file, tmp_path)
    first = world.login()
    refresh(world.store, world.issuer, first.refresh_token, trail=trail, request_id="req_1", now=world.clock.now)
    with pytest.raises(RefreshTokenReused):
        refresh(world.store, world.issuer, first.refresh_token, trail=trail, request_id="req_2", now=world.clock.now)
    [event] = trail.events(world.org.org_id)
    assert (event.event_type, event.actor, event.request_id) == ("auth.refresh_token_reused", world.user.user_id,
                                                                 "req_2")
    assert world.store.refresh_family_revoked(event.target.removeprefix("refresh_family:"))


def test_confirming_ones_own_enrolment_records_it_with_the_caller_as_actor(
    world: World, key_file: LocalKeyFile, tmp_path: Path
) -> None:
    trail = _trail(world, key_file, tmp_path)
    secret, _ = begin_mfa_enrolment(world.store, world.user.user_id)
    principal = Principal(world.user.user_id, world.org.org_id, Role.ANALYST, "key_1", KeyEnv.LIVE, (), None, None)
    ctx = ChangeContext(actor=principal, request_id="req_mfa", source_ip=None)
    enrolled = confirm_own_mfa_enrolment(world.store, trail, ctx, pyotp.TOTP(secret).at(T0), now=world.clock.now)
    [event] = trail.events(world.org.org_id)
    assert enrolled.mfa_enabled and (event.event_type, event.actor, event.target, event.request_id) == (
        "user.mfa_enrolled", world.user.user_id, world.user.user_id, "req_mfa")


def test_a_password_proven_enrolment_is_recorded_with_the_user_as_actor(
    world: World, key_file: LocalKeyFile, tmp_path: Path
) -> None:
    trail = _trail(world, key_file, tmp_path)
    secret, _ = _begin_by_password(world)
    confirm_mfa_enrolment_with_password(
        world.store, world.hasher, world.issuer, email=EMAIL, password=PASSWORD, code=pyotp.TOTP(secret).at(T0),
        now=world.clock.now, trail=trail, request_id="req_pw",
    )
    [event] = trail.events(world.org.org_id)
    assert (event.event_type, event.actor, event.request_id) == ("user.mfa_enrolled", world.user.user_id, "req_pw")
    assert (event.before["mfa_enabled"], event.after["mfa_enabled"]) == (False, True)  # type: ignore[index]
