"""Brute-force limits on credential checks: exponential backoff, then a temporary lockout, per subject.

A subject is what an attacker guesses against: the email tried at login (an account's password
and TOTP codes), or an API key id. Emails nobody holds are throttled exactly like real ones, so
probing for accounts costs what guessing passwords costs and lockouts tell nothing about which
accounts exist. Failures are counted in the `ControlStore`, one atomic write per failure, so the
limits hold across Lambda containers and engine hosts. The default policy:

    failures 1-5         no delay: typos are free
    failures 6-9         refused for 1, 2, 4, 8 s after the last failure (doubling, at most 60 s)
    failure 10           locked for 15 min; every failure after a lockout ends locks again
    1 h without failure  the count is forgotten; a proven secret forgets it at once

A blocked subject is refused before its secret is looked at, so its refusals cost the attacker's
requests no Argon2 and answer nothing about the secret; the refusal is the generic
`AuthenticationFailed` a wrong secret gets (HTTP 401 HD_ERR_AUTH_FAILED, Postgres 28P01), and only
its `reason` (logs) and the `auth.lockout` IAM event say why. Refused attempts are not counted:
they tested nothing, and a flood of them then costs one read each, never a write.

The store keeps an email as its SHA-256 only: keys stay short, and a password typed into the email
box is not kept in clear. A record expires `forget_after` after its last failure, so the records of
names nobody holds are bounded by the failures of one such period.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hd_core.errors import AuthenticationFailed
from hd_core.models import AuthFailures, email_key, utc_now
from hd_core.ports import AuthFailureStore

log = logging.getLogger(__name__)

LOGIN = "login"
API_KEY = "api_key"
# Beyond this many doublings the delay is max_delay anyway; capping first keeps 2**n small.
_MAX_DOUBLINGS = 32


@dataclass(frozen=True, kw_only=True)
class ThrottlePolicy:
    """When failures block a subject, and for how long."""

    free_failures: int = 5
    base_delay: timedelta = timedelta(seconds=1)
    max_delay: timedelta = timedelta(minutes=1)
    lockout_after: int = 10
    lockout: timedelta = timedelta(minutes=15)
    forget_after: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if not 0 <= self.free_failures < self.lockout_after:
            raise ValueError("free_failures must be at least 0 and below lockout_after")
        if self.base_delay <= timedelta(0) or self.max_delay < self.base_delay:
            raise ValueError("base_delay must be positive and max_delay at least base_delay")
        if self.lockout <= timedelta(0):
            raise ValueError("the lockout must be positive")
        # Otherwise a record could be forgotten (and deleted) while it still blocks its subject.
        if self.forget_after < max(self.lockout, self.max_delay):
            raise ValueError("forget_after must be at least the lockout and max_delay")

    def delay(self, count: int) -> timedelta:
        """How long `count` failures block their subject after the last one (zero while they are free)."""
        if count >= self.lockout_after:
            return self.lockout
        if count <= self.free_failures:
            return timedelta(0)
        doublings = min(count - self.free_failures - 1, _MAX_DOUBLINGS)
        return min(self.base_delay * 2**doublings, self.max_delay)

    def blocked_until(self, failures: AuthFailures) -> datetime | None:
        """When `failures` stop blocking their subject; None if they never block it."""
        delay = self.delay(failures.count)
        return None if delay == timedelta(0) else failures.last_failure_at + delay

    def starts_lockout(self, failures: AuthFailures) -> bool:
        """Whether the failure just recorded in `failures` locked a subject that was not locked before it."""
        if failures.count < self.lockout_after:
            return False
        previous = failures.previous_failure_at
        # Past the threshold a failure locks again only once the previous lockout has run out; a
        # failure racing in during a lockout (it passed the check just before) starts none.
        return (
            failures.count == self.lockout_after
            or previous is None
            or previous + self.lockout <= failures.last_failure_at
        )


@dataclass(frozen=True)
class ThrottleSubject:
    """What failures are counted against: `kind` is `login` or `api_key`; `key` is its store key."""

    kind: str
    # The email tried or the key id: for attributing a lockout, never stored.
    name: str = field(repr=False)
    key: str

    @classmethod
    def login(cls, email: str) -> ThrottleSubject:
        """The subject of password and TOTP checks for `email`, spelt any way that finds the same account."""
        normalised = email_key(email.strip())
        return cls(LOGIN, normalised, f"{LOGIN}:{hashlib.sha256(normalised.encode('utf-8')).hexdigest()}")

    @classmethod
    def api_key(cls, key_id: str) -> ThrottleSubject:
        """The subject of secret checks for one API key id (a public identifier, stored as it is)."""
        return cls(API_KEY, key_id, f"{API_KEY}:{key_id}")


@dataclass(frozen=True)
class Lockout:
    """A subject just locked: what the `auth.lockout` audit event and the log record say."""

    subject: ThrottleSubject
    failures: int
    at: datetime
    until: datetime
    source_ip: str | None

    def describe(self) -> str:
        """One line for logs: who is locked, after how many failures, until when, from where."""
        return (f"{self.subject.kind} {self.subject.key} locked after {self.failures} failures until "
                f"{self.until.isoformat()} (source {self.source_ip})")


class AuthThrottle:
    """Admits credential checks of subjects that are not blocked, and counts the ones that fail.

    `on_lockout` is told of each lockout once (the wiring records the IAM event); if it raises,
    the error is logged and the caller still gets the generic refusal.
    """

    def __init__(
        self,
        store: AuthFailureStore,
        policy: ThrottlePolicy | None = None,
        *,
        now: Callable[[], datetime] = utc_now,
        on_lockout: Callable[[Lockout], object] | None = None,
    ) -> None:
        self._store = store
        self.policy = policy if policy is not None else ThrottlePolicy()
        self._now = now
        self._on_lockout = on_lockout

    def admit(self, subject: ThrottleSubject, *, source_ip: str | None = None) -> ThrottledAttempt:
        """An attempt at `subject`'s secret; raises the generic `AuthenticationFailed` while the subject is blocked."""
        at = self._now()
        failures = self._store.get_auth_failures(subject.key)
        if failures is not None and failures.last_failure_at < at - self.policy.forget_after:
            failures = None  # forgotten: the store may not have deleted it yet
        until = None if failures is None else self.policy.blocked_until(failures)
        if failures is not None and until is not None and at < until:
            raise AuthenticationFailed(
                f"{subject.kind} throttled after {failures.count} failures until {until.isoformat()}"
            )
        return ThrottledAttempt(self, subject, had_failures=failures is not None, source_ip=source_ip)

    def _record_failure(self, attempt: ThrottledAttempt) -> Lockout | None:
        at = self._now()
        failures = self._store.record_auth_failure(
            attempt.subject.key,
            at,
            forget_before=at - self.policy.forget_after,
            expires_at=at + self.policy.forget_after,
        )
        if not self.policy.starts_lockout(failures):
            return None
        until = self.policy.blocked_until(failures)
        assert until is not None  # a count at the lockout threshold always blocks
        lockout = Lockout(attempt.subject, failures.count, at, until, attempt.source_ip)
        # Not logged here: the refusal this failure ends in is logged once, by whoever answers it
        # (the control API's error handler, the wire's credentials), with `describe()` attached.
        if self._on_lockout is not None:
            try:
                self._on_lockout(lockout)
            # Recording must not change the caller's answer: the refusal stays the generic one.
            except Exception:
                log.exception("the lockout of %s %s could not be recorded", lockout.subject.kind,
                              lockout.subject.key)
        return lockout

    def _record_success(self, attempt: ThrottledAttempt) -> None:
        if attempt.had_failures:
            self._store.clear_auth_failures(attempt.subject.key)


@dataclass(frozen=True)
class ThrottledAttempt:
    """One admitted credential check: report how it ended with `failed()` or `succeeded()`."""

    throttle: AuthThrottle
    subject: ThrottleSubject
    had_failures: bool
    source_ip: str | None

    def failed(self) -> Lockout | None:
        """The secret was wrong (or the name unknown): count it, and start a lockout if it is due (returned)."""
        return self.throttle._record_failure(self)

    def refused(self, reason: str) -> AuthenticationFailed:
        """Count a failure and return the refusal to raise: its `lockout` says what lockout it started, if any."""
        return with_lockout(AuthenticationFailed(reason), self.failed())

    def succeeded(self) -> None:
        """The secret was proven: forget the subject's failures (one write, only if it had any)."""
        self.throttle._record_success(self)


def with_lockout(refusal: AuthenticationFailed, lockout: Lockout | None) -> AuthenticationFailed:
    """`refusal`, carrying the description of the lockout it started (for its one log line)."""
    if lockout is not None:
        refusal.lockout = lockout.describe()
    return refusal
