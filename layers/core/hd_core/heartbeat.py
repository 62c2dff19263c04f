"""Heartbeat to the customer's own control plane and the graceful-degradation gate it drives.

Every heartbeat interval (15 minutes unless configured) an engine host reports its organisation, an
environment fingerprint and the hash of its installed engine code. The control plane (and only it:
nothing phones home elsewhere) answers with a `HeartbeatVerdict`. The host feeds each answer, or the
absence of one, to a `ServiceGate`:

    SERVING --bad/missing answer--> DEGRADED --4 h after the first bad answer--> REFUSING
       ^                               |                                            |
       +-------- positive answer ------+--------------------------------------------+

DEGRADED still serves, so a control-plane outage shorter than the grace period is invisible to users.
REFUSING refuses new connections; statements already running are left to finish.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from hd_core.errors import HdError, InvalidRequest
from hd_core.models import utc_now

DEFAULT_HEARTBEAT_INTERVAL = timedelta(minutes=15)
GRACE_PERIOD = timedelta(hours=4)

# Versioned so that a future change of the encoding can never collide with today's fingerprints.
_FINGERPRINT_KIND = "hd.environment-fingerprint/v1"
_NO_ANSWER_REASON = "no answer from the control plane"

# 08004 (sqlserver_rejected_establishment_of_sqlconnection) is the SQLSTATE for exactly this: the
# server refuses to open a new connection. Class 08 makes drivers and pools report a connection
# failure rather than a query error. 57P01 (admin_shutdown) would be wrong: it terminates sessions
# that exist, while we let in-flight statements finish. 53400 (configuration_limit_exceeded) reads as
# "too many connections" and would send operators tuning pool sizes instead of checking the heartbeat.
GRACE_EXPIRED_SQLSTATE = "08004"
GRACE_EXPIRED_MESSAGE = (
    "this warehouse host is refusing new connections: its control plane has not confirmed the host or its "
    "organisation for more than the 4-hour grace period. Statements already running were allowed to finish. "
    "Service resumes as soon as the control plane answers positively; ask your administrator to check the "
    "host's heartbeat to the control plane."
)


class GraceExpired(HdError):
    """The grace period after a negative or missing heartbeat answer has run out: new connections are refused."""

    code = "HD_ERR_LICENSE_GRACE_EXPIRED"
    sqlstate = GRACE_EXPIRED_SQLSTATE

    def __init__(self, message: str = GRACE_EXPIRED_MESSAGE) -> None:
        super().__init__(message)


# --- what a host reports --------------------------------------------------------------------------


def environment_fingerprint(
    org_id: str, instance_id: str, account_id: str, region: str, launch_time: datetime
) -> str:
    """SHA-256 hex of the host's identity, encoded canonically.

    The encoding is UTF-8 JSON with sorted keys and no whitespace of
    `{"account_id", "instance_id", "kind", "launch_time", "org_id", "region"}`, where `launch_time` is
    the ISO 8601 form of the instant in UTC. JSON quoting makes field boundaries unambiguous
    (`("ab", "c")` and `("a", "bc")` differ), and normalising to UTC makes the same instant hash the
    same whatever offset the caller used.
    """
    if launch_time.tzinfo is None or launch_time.utcoffset() is None:
        raise InvalidRequest("launch_time must be timezone-aware")
    identity = {
        "kind": _FINGERPRINT_KIND,
        "org_id": org_id,
        "instance_id": instance_id,
        "account_id": account_id,
        "region": region,
        "launch_time": launch_time.astimezone(UTC).isoformat(),
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def code_package_hash(root: Path, *, include: tuple[str, ...] = ("*.py",)) -> str:
    """SHA-256 hex over the engine code files under `root` whose names match one of `include`.

    Files are taken in order of their POSIX relative path; for each, the hash absorbs the path's
    UTF-8 bytes, a NUL (which no path contains) and the SHA-256 of the file's bytes, so neither
    renaming nor editing a file can go unnoticed. Symlinks and `__pycache__` are skipped: they vary
    between machines and are not code anyone shipped.
    """
    if not root.is_dir():
        raise InvalidRequest(f"engine code root {root} is not a directory")
    files = sorted(_code_files(root, include))
    if not files:
        raise InvalidRequest(f"no engine code files matching {', '.join(include)} under {root}")
    package = hashlib.sha256()
    for relative in files:
        package.update(relative.encode("utf-8"))
        package.update(b"\0")
        package.update(hashlib.sha256((root / relative).read_bytes()).digest())
    return package.hexdigest()


def _code_files(root: Path, include: tuple[str, ...]) -> Iterator[str]:
    # os.walk does not descend into symlinked directories unless told to, which is what we want.
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if name != "__pycache__"]
        for name in names:
            path = Path(directory, name)
            if path.is_symlink() or not any(fnmatch.fnmatchcase(name, pattern) for pattern in include):
                continue
            yield path.relative_to(root).as_posix()


@dataclass(frozen=True, kw_only=True)
class HeartbeatReport:
    """What an engine host tells its control plane every heartbeat interval."""

    org_id: str
    host_id: str
    fingerprint: str
    code_hash: str
    sent_at: datetime


@dataclass(frozen=True, kw_only=True)
class HeartbeatVerdict:
    """The control plane's answer: is this host allowed, and is its organisation active."""

    allowed: bool
    org_active: bool
    reason: str

    @property
    def positive(self) -> bool:
        """Whether the host may keep serving: only when both the host and its organisation are in good standing."""
        return self.allowed and self.org_active


# --- the control-plane side -----------------------------------------------------------------------


def evaluate_report(
    report: HeartbeatReport,
    *,
    expected_fingerprints: Collection[str],
    allowed_code_hashes: Collection[str],
    org_active: bool,
) -> HeartbeatVerdict:
    """Decide whether the reporting host is allowed; empty allow-lists allow nothing (fail closed)."""
    problems = []
    if report.fingerprint not in expected_fingerprints:
        problems.append(f"unknown environment fingerprint for host {report.host_id}")
    if report.code_hash not in allowed_code_hashes:
        problems.append("engine code package is not an approved build")
    allowed = not problems
    if not org_active:
        problems.append(f"organisation {report.org_id} is not active")
    return HeartbeatVerdict(allowed=allowed, org_active=org_active, reason="; ".join(problems) or "ok")


# --- the host side --------------------------------------------------------------------------------


class GateState(StrEnum):
    """Whether a host serves normally, serves on borrowed time, or refuses new connections."""

    SERVING = "serving"
    DEGRADED = "degraded"
    REFUSING = "refusing"


class ServiceGate:
    """Tracks heartbeat answers and decides whether the host accepts new connections. Thread-safe.

    The grace period starts at the first negative or missing answer, is not extended by later ones,
    and ends (the host refuses) at exactly start + grace. Any positive answer restores service.
    The state is derived from the clock, so once the grace is running the host refuses on time even if
    nothing more is recorded. The caller must record a failure for every heartbeat that gets no answer.
    """

    def __init__(
        self,
        *,
        grace: timedelta = GRACE_PERIOD,
        grace_started_at: datetime | None = None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        """`grace_started_at` restores a grace period persisted before a restart, so restarting cannot reset it."""
        if grace <= timedelta(0):
            raise InvalidRequest("the grace period must be positive")
        if grace_started_at is not None and grace_started_at.utcoffset() is None:
            raise InvalidRequest("grace_started_at must be timezone-aware")
        self._grace = grace
        self._now = now
        self._lock = threading.Lock()
        self._serving_since = now()
        self._grace_started_at = grace_started_at
        self._last_ok_at: datetime | None = None
        self._last_reason: str | None = None

    def record(self, verdict: HeartbeatVerdict | None, *, error: str | None = None) -> GateState:
        """Take in one heartbeat outcome (None: no answer, `error` says why) and return the resulting state."""
        with self._lock:
            # The clock is read under the lock so the earliest failure always wins the grace start.
            at = self._now()
            if verdict is not None and verdict.positive:
                self._restore(at, verdict.reason)
            else:
                self._degrade(at, _failure_reason(verdict, error))
            return self._state_at(at)

    def state(self) -> GateState:
        """The state now."""
        with self._lock:
            return self._state_at(self._now())

    def accepts_new_connections(self) -> bool:
        """Whether a new client connection may be opened now (true while serving or degraded)."""
        return self.state() is not GateState.REFUSING

    def check_new_connection(self) -> None:
        """Raise `GraceExpired` if new connections are refused now."""
        if not self.accepts_new_connections():
            raise GraceExpired()

    def grace_started_at(self) -> datetime | None:
        """When the running grace period began (None while serving normally); persist it to survive restarts."""
        with self._lock:
            return self._grace_started_at

    def status(self) -> dict[str, str | None]:
        """State for /readyz and metrics: state, since, grace_ends_at, last_ok_at, last_reason (times ISO 8601)."""
        with self._lock:
            state = self._state_at(self._now())
            grace_ends_at = self._grace_ends_at()
            since = {
                GateState.SERVING: self._serving_since,
                GateState.DEGRADED: self._grace_started_at,
                GateState.REFUSING: grace_ends_at,
            }[state]
            return {
                "state": state.value,
                "since": _iso(since),
                "grace_ends_at": _iso(grace_ends_at),
                "last_ok_at": _iso(self._last_ok_at),
                "last_reason": self._last_reason,
            }

    def _restore(self, at: datetime, reason: str) -> None:
        if self._grace_started_at is not None:
            self._grace_started_at = None
            self._serving_since = at
        self._last_ok_at = at
        self._last_reason = reason

    def _degrade(self, at: datetime, reason: str) -> None:
        if self._grace_started_at is None:
            self._grace_started_at = at
        self._last_reason = reason

    def _grace_ends_at(self) -> datetime | None:
        return None if self._grace_started_at is None else self._grace_started_at + self._grace

    def _state_at(self, at: datetime) -> GateState:
        grace_ends_at = self._grace_ends_at()
        if grace_ends_at is None:
            return GateState.SERVING
        return GateState.DEGRADED if at < grace_ends_at else GateState.REFUSING


def _failure_reason(verdict: HeartbeatVerdict | None, error: str | None) -> str:
    if verdict is not None:
        return verdict.reason
    return f"{_NO_ANSWER_REASON}: {error}" if error else _NO_ANSWER_REASON


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()
