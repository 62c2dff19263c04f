"""Signing in to the control API: password + TOTP login, rotating refresh tokens and MFA enrolment.

A TOTP code is accepted once: each accepted code records its time step on the user
(`mfa_last_step`), and only a later step is accepted after it (RFC 6238 section 5.2).

A login returns a short-lived RS256 access token and a single-use refresh token
`hdr_<token id>.<secret>`. Only the SHA-256 of the secret is stored (it is 256 random bits, so a
slow hash adds nothing). Each refresh spends its token and returns the next one of the same
family; a spent token presented again means it was copied, so the whole family is revoked.
Every refused login raises the same generic `AuthenticationFailed`; `reason` is for our logs.

Password and TOTP checks are throttled per email tried (`hd_core.auth_throttle`): a blocked email
is refused before its password is verified. A login that omits the TOTP code is not counted, since
clients ask for the code only once the password is accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import NoReturn, TypeVar

import pyotp

from hd_core.api_keys import ApiKeyHasher
from hd_core.auth_throttle import AuthThrottle, ThrottleSubject, with_lockout
from hd_core.directory import record_user_change
from hd_core.errors import AuthenticationFailed, Conflict, MfaRequired, NotFound, RefreshTokenReused
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import IamEventType
from hd_core.models import (
    BASE62_ALPHABET,
    ChangeContext,
    KeyEnv,
    Organization,
    OrgStatus,
    RefreshToken,
    User,
    UserStatus,
    new_id,
    random_base62,
    utc_now,
)
from hd_core.passwords import MAX_PASSWORD_LENGTH, require_password_current, verify_password
from hd_core.ports import ControlStore
from hd_core.sealed_secrets import SecretSealer, is_sealed
from hd_core.tokens import JwtIssuer

REFRESH_TOKEN_PREFIX = "hdr_"  # noqa: S105 - a public marker, not a secret
REFRESH_TOKEN_TTL = timedelta(days=7)
_REFRESH_ID_CHARS = 20
_REFRESH_SECRET_BYTES = 32
# token_urlsafe(32) is 43 characters; anything much longer is not one of ours.
_MAX_REFRESH_SECRET_CHARS = 64
# One 30-second step either side: tolerates clock drift and a code typed just as it rolled over.
TOTP_VALID_WINDOW = 1
DEFAULT_TOTP_ISSUER = "Hardened Duck"
_T = TypeVar("_T")


@dataclass(frozen=True, kw_only=True)
class TokenPair:
    """What a successful login or refresh returns (an OAuth 2.0 token response)."""

    # Bearer credentials stay out of repr, so logging a pair by accident leaks nothing.
    access_token: str = field(repr=False)
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int
    refresh_token: str = field(repr=False)
    refresh_expires_in: int


class MfaEnrolmentRequired(MfaRequired):
    """The organisation requires MFA but the user has no confirmed TOTP authenticator yet."""

    generic_message = (
        "your organization requires multi-factor authentication: enrol a TOTP authenticator for this "
        "account before logging in with a password"
    )

    def __init__(self, reason: str = "org requires mfa; user not enrolled") -> None:
        super().__init__(reason)


@dataclass(frozen=True, kw_only=True)
class PasswordProvenEnrolment:
    """A first MFA enrolment confirmed with a password instead of a session: the user then, now, and their tokens."""

    before: User
    enrolled: User
    tokens: TokenPair


# --- login ---------------------------------------------------------------------------------------


def login(
    store: ControlStore,
    hasher: ApiKeyHasher,
    issuer: JwtIssuer,
    *,
    email: str,
    password: str,
    totp_code: str | None = None,
    env: KeyEnv | str = KeyEnv.LIVE,
    sealer: SecretSealer | None = None,
    now: Callable[[], datetime] = utc_now,
    throttle: AuthThrottle | None = None,
) -> TokenPair:
    """Tokens for an active user of an active organisation whose password (and TOTP code, if needed) is right.

    Raises `AuthenticationFailed` for any wrong credential or a throttled email, `MfaRequired` when a
    TOTP code is needed and missing or wrong (`MfaEnrolmentRequired` when the organisation requires
    MFA and the user has not enrolled). Every attempt the throttle admits costs exactly one Argon2
    verify, known email or not; one it refuses costs none.
    """

    def checked() -> User:
        user = _user_with_password(store, hasher, email, password)
        org = _active_org_of(store, user)
        require_password_current(user)  # before the TOTP check, which would spend the code for nothing
        return _check_mfa(store, user, org, totp_code, now(), sealer)

    def counts(refused: AuthenticationFailed) -> bool:
        return totp_code is not None or not isinstance(refused, MfaRequired)

    user = throttled(throttle or AuthThrottle(store, now=now), email, checked, counts=counts)
    return issue_token_pair(store, issuer, user, env=env, now=now)


def throttled(
    throttle: AuthThrottle,
    email: str,
    check: Callable[[], _T],
    *,
    counts: Callable[[AuthenticationFailed], bool] = lambda refused: True,
) -> _T:
    """`check()` if `email` is not blocked; its refusals are counted against the email unless `counts` says not."""
    attempt = throttle.admit(ThrottleSubject.login(email))
    try:
        result = check()
    except AuthenticationFailed as refused:
        if counts(refused):
            with_lockout(refused, attempt.failed())
        raise
    attempt.succeeded()
    return result


def prove_password(
    store: ControlStore,
    hasher: ApiKeyHasher,
    *,
    email: str,
    password: str,
    totp_code: str | None,
    at: datetime,
    sealer: SecretSealer | None = None,
    throttle: AuthThrottle | None = None,
) -> User:
    """The active user whose password, and current TOTP code if enrolled, are right: proof without a session.

    Unlike `login` it issues nothing and accepts a password an administrator set (the way to replace
    it). Raises `AuthenticationFailed` or `MfaRequired` as `login` does, after exactly one Argon2 verify;
    throttled like `login` (same subject), so it is no way around login's brute-force limits.
    """

    def checked() -> User:
        user = _user_with_password(store, hasher, email, password)
        _active_org_of(store, user)
        return prove_totp(store, user, totp_code, at, sealer) if user.mfa_enabled else user

    return throttled(throttle or AuthThrottle(store), email, checked)


def prove_totp(store: ControlStore, user: User, code: str | None, at: datetime, sealer: SecretSealer | None) -> User:
    """The user with `code`'s step spent, if it is their current unspent TOTP code; else `MfaRequired`."""
    step = None if code is None else _fresh_totp_step(user, code, at, sealer)
    if step is None:
        raise MfaRequired("totp code missing, wrong or reused while re-proving the factor")
    return _spend_totp_step(store, user, step)


def _user_with_password(store: ControlStore, hasher: ApiKeyHasher, email: str, password: str) -> User:
    # Cut absurd input before Argon2 sees it, but after nothing else: the cost stays one verify.
    password = password[: MAX_PASSWORD_LENGTH + 1]
    user = store.get_user_by_email(email.strip()) if email.strip() else None
    if not verify_password(hasher, None if user is None else user.password_hash, password):
        raise AuthenticationFailed("unknown email or wrong password" if user is None else "wrong password")
    assert user is not None  # verify_password never accepts a missing hash
    if user.status != UserStatus.ACTIVE:
        raise AuthenticationFailed("user not active")
    return user


def _active_org_of(store: ControlStore, user: User) -> Organization:
    org = store.get_org(user.org_id)
    if org is None or org.status != OrgStatus.ACTIVE:
        raise AuthenticationFailed("organization missing or not active")
    return org


def _check_mfa(
    store: ControlStore, user: User, org: Organization, totp_code: str | None, at: datetime, sealer: SecretSealer | None
) -> User:
    """The user after a TOTP check: with the code's step spent if MFA is on; raises `MfaRequired`."""
    if user.mfa_enabled:
        step = None if totp_code is None else _fresh_totp_step(user, totp_code, at, sealer)
        if step is None:
            raise MfaRequired()
        return _spend_totp_step(store, user, step)
    if org.mfa_required:
        raise MfaEnrolmentRequired()
    return user


def totp_step(secret: str, code: str, at: datetime, *, after_step: int = 0) -> int | None:
    """The time step (epoch seconds // 30) at which `code` is the TOTP code of `secret`, or None.

    Only steps within one step of `at` and later than `after_step` count; if the code matches
    several (a 1-in-a-million collision), the latest wins, so it too is spent.
    """
    code = code.replace(" ", "").strip()
    if not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(at)
    matched: int | None = None
    for step in range(current - TOTP_VALID_WINDOW, current + TOTP_VALID_WINDOW + 1):
        # Every candidate is compared in constant time, so timing does not tell which step matched.
        if hmac.compare_digest(totp.generate_otp(step), code) and step > after_step:
            matched = step
    return matched


def _fresh_totp_step(user: User, code: str, at: datetime, sealer: SecretSealer | None) -> int | None:
    """The step of `code` if it is the user's current code and later than the last one accepted."""
    if not user.mfa_secret:
        # MFA on without a stored secret cannot be satisfied: refuse rather than skip the factor.
        return None
    if is_sealed(user.mfa_secret):
        if sealer is None:
            return None  # a sealed secret and no key to open it: refuse, never skip the factor
        secret = sealer.unseal(user.user_id, user.mfa_secret)
    else:
        secret = user.mfa_secret  # stored before sealing was configured (local tools, older records)
    return totp_step(secret, code, at, after_step=user.mfa_last_step)


def _spend_totp_step(store: ControlStore, checked: User, step: int, *, enable: bool = False) -> User:
    """Record `step` as the last TOTP step `checked` accepted (and turn MFA on if `enable`); returns the stored user.

    Raises `MfaRequired` if the step was spent, or the user's MFA or status changed, since `checked` was read.
    """
    # `checked` was read before the Argon2 verify, tens of ms ago: re-read so that a step spent or a
    # change made meanwhile (a suspension, an MFA reset) is seen, and not overwritten with old values.
    current = store.get_user(checked.user_id)
    if (
        current is None
        or current.status != UserStatus.ACTIVE
        or (current.mfa_secret, current.mfa_enabled) != (checked.mfa_secret, checked.mfa_enabled)
        or current.mfa_last_step >= step
    ):
        raise MfaRequired("totp step already spent, or the user changed during the check")
    # The conditional write is what makes the code single-use: of two requests racing with it, one
    # advances the step and the other is refused.
    if not store.advance_mfa_step(current.user_id, step):
        raise MfaRequired("totp step already spent")
    spent = replace(current, mfa_last_step=step)
    if enable and not current.mfa_enabled:
        spent = replace(spent, mfa_enabled=True)
        try:
            store.put_user(spent)
        except Conflict:
            # DynamoDB gives up when the user keeps changing under us: refuse rather than enable MFA unrecorded.
            raise MfaRequired("mfa enrolment could not be recorded") from None
    return spent


# --- refresh tokens ------------------------------------------------------------------------------


def issue_token_pair(
    store: ControlStore,
    issuer: JwtIssuer,
    user: User,
    *,
    env: KeyEnv | str = KeyEnv.LIVE,
    family_id: str | None = None,
    now: Callable[[], datetime] = utc_now,
) -> TokenPair:
    """An access token for `user` and a new refresh token (of `family_id`, or of a new family)."""
    # Never dated before the user's sessions were ended (another host's clock may lag): it would be born refused.
    issued_at = max(now(), user.tokens_valid_after or datetime.min.replace(tzinfo=UTC))
    token_id = random_base62(_REFRESH_ID_CHARS)
    secret = secrets.token_urlsafe(_REFRESH_SECRET_BYTES)
    store.put_refresh_token(
        RefreshToken(
            token_id=token_id,
            family_id=family_id or new_id("rtf"),
            user_id=user.user_id,
            org_id=user.org_id,
            token_hash=_secret_hash(secret),
            issued_at=issued_at,
            expires_at=issued_at + REFRESH_TOKEN_TTL,
            env=KeyEnv(env),
        )
    )
    return TokenPair(
        access_token=issuer.issue(user, env),
        expires_in=issuer.ttl_seconds,
        refresh_token=f"{REFRESH_TOKEN_PREFIX}{token_id}.{secret}",
        refresh_expires_in=int(REFRESH_TOKEN_TTL.total_seconds()),
    )


def refresh(
    store: ControlStore,
    issuer: JwtIssuer,
    token: str,
    *,
    trail: IamAuditTrail | None = None,
    request_id: str = "",
    on_reuse: Callable[[RefreshToken], None] | None = None,
    now: Callable[[], datetime] = utc_now,
) -> TokenPair:
    """Spend a refresh token: the next token of its family and a fresh access token from the user's current state.

    Raises `AuthenticationFailed` for an unknown, wrong, expired or revoked token or an inactive
    user or organisation, and `RefreshTokenReused` for a token already spent: its family is then
    revoked, REFRESH_TOKEN_REUSED recorded in `trail` (the token's holder as actor) and `on_reuse`
    called with the token, before raising.
    """
    if trail is not None:
        on_reuse = _recording_reuse(trail, request_id, on_reuse)
    at = now()
    record = _stored_token(store, token)
    if store.refresh_family_revoked(record.family_id):
        raise AuthenticationFailed("refresh token family revoked")
    if record.used_at is not None:
        _reject_reuse(store, record, at, on_reuse)
    if at >= record.expires_at:
        raise AuthenticationFailed("refresh token expired")
    user = store.get_user(record.user_id)
    if user is None or user.org_id != record.org_id or user.status != UserStatus.ACTIVE:
        raise AuthenticationFailed("user missing or not active")
    if user.tokens_valid_after is not None and record.issued_at < user.tokens_valid_after:
        raise AuthenticationFailed("refresh token issued before the user's sessions were ended")
    _active_org_of(store, user)
    try:
        store.use_refresh_token(record.token_id, at)
    except Conflict:
        # Another request spent it between our read and our write: two holders of one token.
        _reject_reuse(store, record, at, on_reuse)
    except NotFound:
        raise AuthenticationFailed("refresh token vanished") from None
    # The family keeps the environment it was logged in to.
    return issue_token_pair(store, issuer, user, env=record.env, family_id=record.family_id, now=lambda: at)


def _recording_reuse(
    trail: IamAuditTrail, request_id: str, then: Callable[[RefreshToken], None] | None
) -> Callable[[RefreshToken], None]:
    def record(token: RefreshToken) -> None:
        # The family is revoked (stored) before this runs: stored first, audited second.
        trail.record(
            token.org_id,
            IamEventType.REFRESH_TOKEN_REUSED,
            actor=token.user_id,
            target=f"refresh_family:{token.family_id}",
            before=None,
            after={"family_id": token.family_id, "token_id": token.token_id},
            request_id=request_id,
        )
        if then is not None:
            then(token)

    return record


def revoke_refresh_token(store: ControlStore, token: str, *, now: Callable[[], datetime] = utc_now) -> None:
    """Log out: revoke the family of a genuine refresh token; raises `AuthenticationFailed` for anything else.

    The user's access tokens end too: they do not say which family minted them, so all of them do.
    """
    record = _stored_token(store, token)
    at = now()
    store.revoke_refresh_family(record.family_id, at)
    _end_sessions(store, record.user_id, at)


def _stored_token(store: ControlStore, token: str) -> RefreshToken:
    """The stored record of a well-formed token whose secret matches; raises `AuthenticationFailed`."""
    token_id, secret = _parse_refresh_token(token)
    record = store.get_refresh_token(token_id)
    presented = _secret_hash(secret)
    if record is None:
        raise AuthenticationFailed("unknown refresh token")
    if not hmac.compare_digest(presented, record.token_hash):
        # A wrong secret is not reuse: whoever knows only the token id must not revoke the family.
        raise AuthenticationFailed("wrong refresh token secret")
    return record


def _reject_reuse(
    store: ControlStore, record: RefreshToken, at: datetime, on_reuse: Callable[[RefreshToken], None] | None
) -> NoReturn:
    store.revoke_refresh_family(record.family_id, at)
    # A copied token may already have minted access tokens: end every session of the user, not just the family.
    _end_sessions(store, record.user_id, at)
    if on_reuse is not None:
        on_reuse(record)
    raise RefreshTokenReused()


def _end_sessions(store: ControlStore, user_id: str, at: datetime) -> None:
    """Refuse the user's tokens issued before `at`; a user deleted meanwhile has no sessions left to end."""
    try:
        store.end_user_sessions(user_id, at)
    except NotFound:
        pass


def _parse_refresh_token(token: str) -> tuple[str, str]:
    if not token.startswith(REFRESH_TOKEN_PREFIX) or "." not in token:
        raise AuthenticationFailed("malformed refresh token")
    token_id, secret = token[len(REFRESH_TOKEN_PREFIX) :].split(".", 1)
    if (
        len(token_id) != _REFRESH_ID_CHARS
        or any(char not in BASE62_ALPHABET for char in token_id)
        or not secret
        or len(secret) > _MAX_REFRESH_SECRET_CHARS
    ):
        raise AuthenticationFailed("malformed refresh token")
    return token_id, secret


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


# --- MFA enrolment -------------------------------------------------------------------------------


def begin_mfa_enrolment(
    store: ControlStore,
    user_id: str,
    *,
    issuer_name: str = DEFAULT_TOTP_ISSUER,
    sealer: SecretSealer | None = None,
) -> tuple[str, str]:
    """Start TOTP enrolment: a new secret and its `otpauth://` provisioning URI (for a QR code).

    The secret is stored unconfirmed (`mfa_enabled` stays False) until `confirm_mfa_enrolment`.
    Raises `NotFound` for an unknown user and `Conflict` for an inactive user or one already
    enrolled: replacing a confirmed authenticator goes through `reset_mfa`, an administrator's act,
    so a stolen session cannot swap the second factor for its own.
    """
    return _start_enrolment(store, _existing_user(store, user_id), issuer_name, sealer)


def begin_mfa_enrolment_with_password(
    store: ControlStore,
    hasher: ApiKeyHasher,
    *,
    email: str,
    password: str,
    issuer_name: str = DEFAULT_TOTP_ISSUER,
    sealer: SecretSealer | None = None,
    throttle: AuthThrottle | None = None,
) -> tuple[str, str]:
    """Start a first enrolment proven by password, for a user who has no session (their org requires MFA).

    Each call replaces a pending secret with a fresh one. Raises the generic `AuthenticationFailed`
    (after exactly one Argon2 verify) for a wrong email or password or an inactive user or
    organisation, or (after none) for a throttled email, and `Conflict` only to the holder of the
    password of a user already enrolled.
    """

    def checked() -> User:
        user = _user_with_password(store, hasher, email, password)
        _active_org_of(store, user)
        return user

    user = throttled(throttle or AuthThrottle(store), email, checked)
    return _start_enrolment(store, user, issuer_name, sealer)


def _start_enrolment(
    store: ControlStore, user: User, issuer_name: str, sealer: SecretSealer | None
) -> tuple[str, str]:
    if user.status != UserStatus.ACTIVE:
        raise Conflict("only an active user can enrol in MFA")
    if user.mfa_enabled:
        raise Conflict("MFA is already enrolled; an administrator must reset it before a new enrolment")
    secret = pyotp.random_base32()
    # Steps spent belong to the old secret; the new one starts with none.
    stored = secret if sealer is None else sealer.seal(user.user_id, secret)
    store.put_user(replace(user, mfa_secret=stored, mfa_enabled=False, mfa_last_step=0))
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=issuer_name)
    return secret, uri


def confirm_mfa_enrolment(
    store: ControlStore,
    user_id: str,
    code: str,
    *,
    sealer: SecretSealer | None = None,
    now: Callable[[], datetime] = utc_now,
) -> User:
    """Turn MFA on once the user proves their authenticator with a current code; returns the user.

    The code's step is spent: it cannot log in afterwards. Raises `AuthenticationFailed` for a
    wrong or reused code, `NotFound` for an unknown user and `Conflict` when no enrolment is pending.
    """
    return _confirm_enrolment(store, _existing_user(store, user_id), code, now(), sealer)


def confirm_own_mfa_enrolment(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    code: str,
    *,
    sealer: SecretSealer | None = None,
    now: Callable[[], datetime] = utc_now,
) -> User:
    """The caller confirms their own pending enrolment (`confirm_mfa_enrolment`): USER_MFA_ENROLLED."""
    before = _existing_user(store, ctx.actor.user_id)
    enrolled = _confirm_enrolment(store, before, code, now(), sealer)
    record_user_change(store, trail, ctx, IamEventType.USER_MFA_ENROLLED, before, enrolled)
    return enrolled


def confirm_mfa_enrolment_with_password(
    store: ControlStore,
    hasher: ApiKeyHasher,
    issuer: JwtIssuer,
    *,
    email: str,
    password: str,
    code: str,
    env: KeyEnv | str = KeyEnv.LIVE,
    sealer: SecretSealer | None = None,
    now: Callable[[], datetime] = utc_now,
    throttle: AuthThrottle | None = None,
    trail: IamAuditTrail | None = None,
    request_id: str = "",
) -> PasswordProvenEnrolment:
    """Confirm a first enrolment proven by password and log the user in (the code is their second factor).

    USER_MFA_ENROLLED is recorded in `trail` with the user as actor (no session, so no ChangeContext).
    Raises the generic `AuthenticationFailed` (after exactly one Argon2 verify) for a wrong email,
    password or code or an inactive user or organisation, or (after none) for a throttled email,
    and `Conflict` when no enrolment is pending.
    """
    at = now()

    def checked() -> tuple[User, User]:
        user = _user_with_password(store, hasher, email, password)
        _active_org_of(store, user)
        require_password_current(user)
        return user, _confirm_enrolment(store, user, code, at, sealer)

    user, enrolled = throttled(throttle or AuthThrottle(store, now=now), email, checked)
    if trail is not None:
        trail.record(enrolled.org_id, IamEventType.USER_MFA_ENROLLED, actor=enrolled.user_id, target=enrolled.user_id,
                     before=user, after=enrolled, request_id=request_id)
    tokens = issue_token_pair(store, issuer, enrolled, env=env, now=lambda: at)
    return PasswordProvenEnrolment(before=user, enrolled=enrolled, tokens=tokens)


def _confirm_enrolment(
    store: ControlStore, user: User, code: str, at: datetime, sealer: SecretSealer | None
) -> User:
    if user.mfa_enabled or not user.mfa_secret:
        raise Conflict("no MFA enrolment is pending for this user")
    step = _fresh_totp_step(user, code, at, sealer)
    if step is None:
        raise AuthenticationFailed("wrong or reused totp code while confirming enrolment")
    enrolled = _spend_totp_step(store, user, step, enable=True)
    # Sessions opened without the second factor end with its arrival; tokens issued from here on are kept.
    return ended_sessions(store, enrolled, at)


def ended_sessions(store: ControlStore, user: User, at: datetime) -> User:
    """End every session of `user` opened before `at`; returns `user` as tokens for it must now be issued."""
    store.end_user_sessions(user.user_id, at)
    if user.tokens_valid_after is not None and user.tokens_valid_after >= at:
        return user
    return replace(user, tokens_valid_after=at)


def reset_mfa(store: ControlStore, user_id: str, *, now: Callable[[], datetime] = utc_now) -> User:
    """Forget a user's TOTP secret (a lost phone) and end their sessions; they enrol again. Raises `NotFound`.

    Who may ask is decided by `hd_core.credential_admin`; this is the change itself.
    """
    user = _existing_user(store, user_id)
    cleared = replace(user, mfa_secret=None, mfa_enabled=False, mfa_last_step=0)
    store.put_user(cleared)
    return ended_sessions(store, cleared, now())


def _existing_user(store: ControlStore, user_id: str) -> User:
    user = store.get_user(user_id)
    if user is None:
        raise NotFound("user not found")
    return user
