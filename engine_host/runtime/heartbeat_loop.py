"""The engine host's heartbeat: report every interval, feed each answer to the service gate, persist its grace.

A `HeartbeatLoop` asks its channel for a verdict on this host's report every interval (the first at
once) and records the outcome in a `ServiceGate`. Any failure to get an answer counts as a missing
answer, so the grace period starts; when it changes, the grace start is written atomically to the
gate file, and a restarted host reads it back: restarting cannot buy a fresh four hours.

The only destination is the customer's own control plane (`ControlPlaneHeartbeat`: the URL it was
given, no proxies, no redirects) or, in `hd dev`, this process itself (`InProcessHeartbeat`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from hd_core.errors import HdError, InvalidRequest
from hd_core.files import write_file_atomically
from hd_core.heartbeat import (
    GateState,
    HeartbeatReport,
    HeartbeatVerdict,
    ServiceGate,
    code_package_hash,
    environment_fingerprint,
    evaluate_report,
)
from hd_core.models import OrgStatus, utc_now
from hd_core.ports import OrgStore

log = logging.getLogger(__name__)

ENGINE_PACKAGES = ("engine_host", "hd_core", "functions")
HEARTBEAT_PATH = "/v1/fleet/heartbeat"
SIGNING_SERVICE = "execute-api"
DEFAULT_TIMEOUT_SECONDS = 10.0
_GATE_FILE_MODE = 0o600
_MAX_ANSWER_BYTES = 64 * 1024
_ENGINE_CODE_KIND = b"hd.engine-code/v1"
_LOG_LEVEL_OF = {GateState.SERVING: logging.INFO, GateState.DEGRADED: logging.WARNING,
                 GateState.REFUSING: logging.ERROR}


class HeartbeatNoAnswer(HdError):
    """The control plane gave no usable answer to a heartbeat (unreachable, timed out, malformed)."""

    code = "HD_ERR_HEARTBEAT_NO_ANSWER"


class HeartbeatRefused(HeartbeatNoAnswer):
    """The control plane answered with an error instead of a verdict; `remote_code` is its HD_ERR code."""

    code = "HD_ERR_HEARTBEAT_REFUSED"

    def __init__(self, status: int, remote_code: str | None, message: str) -> None:
        super().__init__(f"the control plane refused the heartbeat: HTTP {status} {remote_code or '-'}: {message}")
        self.status = status
        self.remote_code = remote_code


class HeartbeatChannel(Protocol):
    """Where a report goes and a verdict comes from; any exception means no answer."""

    def send(self, report: HeartbeatReport) -> HeartbeatVerdict:
        """The verdict on `report`."""
        ...


# --- what this host reports -----------------------------------------------------------------------


def installed_code_roots() -> dict[str, Path]:
    """Where each engine package (engine_host, hd_core, functions) is installed."""
    roots = {}
    for name in ENGINE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise InvalidRequest(f"engine package {name} is not installed")
        roots[name] = Path(next(iter(spec.submodule_search_locations)))
    return roots


def engine_code_hash(roots: Mapping[str, Path]) -> str:
    """SHA-256 hex over the packages' `code_package_hash`es, by package name (what the allow-list holds)."""
    combined = hashlib.sha256(_ENGINE_CODE_KIND)
    for name in sorted(roots):
        combined.update(b"\0" + name.encode("utf-8") + b"\0")
        combined.update(bytes.fromhex(code_package_hash(roots[name])))
    return combined.hexdigest()


def host_report(
    org_id: str,
    *,
    instance_id: str,
    account_id: str,
    region: str,
    launch_time: datetime,
    code_root: Path | None = None,
    now: Callable[[], datetime] = utc_now,
) -> Callable[[], HeartbeatReport]:
    """A report factory for this host; fingerprint and code hash are computed once, here.

    `code_root` is a directory holding the three engine packages (a release's site-packages); None
    hashes the packages where Python imports them from. Hashing once means the hash describes the
    code this process loaded, not files changed under it later.
    """
    roots = installed_code_roots() if code_root is None else {name: code_root / name for name in ENGINE_PACKAGES}
    code_hash = engine_code_hash(roots)
    # EC2 reports launch times in whole seconds; the control plane truncates too (hd_core.fleet).
    fingerprint = environment_fingerprint(org_id, instance_id, account_id, region, launch_time.replace(microsecond=0))

    def report() -> HeartbeatReport:
        return HeartbeatReport(org_id=org_id, host_id=instance_id, fingerprint=fingerprint, code_hash=code_hash,
                               sent_at=now())

    return report


# --- channels -------------------------------------------------------------------------------------


class InProcessHeartbeat:
    """Local mode (`hd dev`): the verdict is computed in this process.

    There is no separate authority here: the fingerprint and code hash are compared with what this
    same process computed (`expected`), so only the organisation's status in the store can make the
    verdict negative. That is enough for a laptop; a fleet member uses `ControlPlaneHeartbeat`.
    """

    def __init__(self, store: OrgStore, expected: HeartbeatReport) -> None:
        self._store = store
        self._expected = expected

    def send(self, report: HeartbeatReport) -> HeartbeatVerdict:
        """The verdict on `report`, judged against this process's own report and the store."""
        org = self._store.get_org(report.org_id)
        return evaluate_report(
            report,
            expected_fingerprints={self._expected.fingerprint},
            allowed_code_hashes={self._expected.code_hash},
            org_active=org is not None and org.status == OrgStatus.ACTIVE,
        )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: the heartbeat goes to the configured URL and nowhere else."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class ControlPlaneHeartbeat:
    """POSTs the report to the customer's control plane, SigV4-signed with this host's instance role."""

    def __init__(
        self,
        url: str,
        region: str,
        credentials: Any | None = None,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        """`url` is the full heartbeat URL; `credentials` are botocore credentials (default: boto3's chain)."""
        parts = urlsplit(url)
        if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(parts.hostname)):
            # Over plain HTTP anyone on the path could forge a positive verdict; loopback is for tests.
            raise InvalidRequest(f"the heartbeat URL must be https://, not {url!r}")
        if not parts.hostname or not region:
            raise InvalidRequest("the heartbeat needs a URL with a host and an AWS region to sign for")
        self._url = url
        self._region = region
        self._credentials = credentials
        self._timeout = timeout_seconds
        # No ProxyHandler settings from the environment, no redirects: only the configured URL is contacted.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())

    def send(self, report: HeartbeatReport) -> HeartbeatVerdict:
        """The control plane's verdict; raises `HeartbeatNoAnswer` (or `HeartbeatRefused` for an error answer)."""
        body = json.dumps({
            "org_id": report.org_id, "host_id": report.host_id, "fingerprint": report.fingerprint,
            "code_hash": report.code_hash, "sent_at": report.sent_at.isoformat(),
        }).encode("utf-8")
        headers = self._signed_headers(body)
        request = urllib.request.Request(self._url, data=body, headers=headers, method="POST")  # noqa: S310 (checked)
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                status, payload = response.status, response.read(_MAX_ANSWER_BYTES)
        except urllib.error.HTTPError as error:
            try:
                payload = error.read(_MAX_ANSWER_BYTES)
            finally:
                error.close()
            raise _refusal(error.code, payload) from None
        except (OSError, ValueError) as error:  # URLError, timeouts, TLS failures are all OSErrors
            raise HeartbeatNoAnswer(f"the control plane at {self._url} could not be reached: {error}") from error
        if status != 200:
            raise _refusal(status, payload)
        return _verdict_of(payload)

    def _signed_headers(self, body: bytes) -> dict[str, str]:
        # Imported here: local mode never signs anything and need not load botocore.
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="POST", url=self._url, data=body, headers={"Content-Type": "application/json"})
        SigV4Auth(self._frozen_credentials(), SIGNING_SERVICE, self._region).add_auth(request)
        return dict(request.headers.items())

    def _frozen_credentials(self) -> Any:
        if self._credentials is None:
            import boto3

            # Kept: the session's credential provider refreshes the instance role's credentials itself.
            self._credentials = boto3.Session().get_credentials()
        if self._credentials is None:
            raise HeartbeatNoAnswer("no AWS credentials to sign the heartbeat with (is the instance role attached?)")
        # One consistent snapshot: refreshable credentials could rotate between reading key and token.
        return self._credentials.get_frozen_credentials()


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ip_address(host).is_loopback
    except ValueError:
        return False


def _refusal(status: int, payload: bytes) -> HeartbeatRefused:
    try:
        error = json.loads(payload)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, TypeError, KeyError):
        code, message = None, "no error body in our format"
    return HeartbeatRefused(status, code, message)


def _verdict_of(payload: bytes) -> HeartbeatVerdict:
    try:
        answer = json.loads(payload)
    except ValueError as error:
        raise HeartbeatNoAnswer("the control plane's answer is not JSON") from error
    if not isinstance(answer, dict):
        raise HeartbeatNoAnswer("the control plane's answer is not a JSON object")
    allowed, org_active, reason = answer.get("allowed"), answer.get("org_active"), answer.get("reason")
    # Strict types: a truthy string like "false" must never read as a positive verdict.
    if not isinstance(allowed, bool) or not isinstance(org_active, bool) or not isinstance(reason, str):
        raise HeartbeatNoAnswer("the control plane's answer lacks allowed/org_active/reason")
    return HeartbeatVerdict(allowed=allowed, org_active=org_active, reason=reason)


# --- the loop -------------------------------------------------------------------------------------


class HeartbeatLoop:
    """Sends a heartbeat every interval on a daemon thread and keeps `gate` (and the gate file) current."""

    def __init__(
        self,
        channel: HeartbeatChannel,
        gate_file: Path,
        report: Callable[[], HeartbeatReport],
        interval_seconds: float,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        """Restore the gate from `gate_file`; an unreadable file starts the grace period now (see `_restore`)."""
        if interval_seconds <= 0:
            raise InvalidRequest("the heartbeat interval must be positive")
        self._channel = channel
        self._gate_file = gate_file
        self._report = report
        self._interval = float(interval_seconds)
        self._now = now
        self._beat_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_beat_at: datetime | None = None
        self._missed_answers = 0
        self._persisted: datetime | None = None
        self.gate = self._restore()
        self._persist()

    def beat_once(self) -> GateState:
        """Send one heartbeat and record its outcome; never raises (a failure is a missing answer)."""
        with self._beat_lock:
            before = self.gate.state()
            try:
                verdict = self._channel.send(self._report())
            except Exception as error:  # noqa: BLE001 - whatever went wrong, there was no answer
                reason = f"{error.code}: {error}" if isinstance(error, HdError) else f"{type(error).__name__}: {error}"
                self._missed_answers += 1
                log.warning("heartbeat got no answer: %s", reason)
                state = self.gate.record(None, error=reason)
            else:
                self._missed_answers = 0
                if not verdict.positive:
                    log.warning("heartbeat verdict is negative: %s", verdict.reason)
                state = self.gate.record(verdict)
            self._last_beat_at = self._now()
            self._persist()
            if state is not before:
                log.log(_LOG_LEVEL_OF[state], "heartbeat gate is now %s (was %s)", state.value, before.value)
            return state

    def start(self) -> None:
        """Beat now, then every interval, on a daemon thread (no-op if already running)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS + 5) -> None:
        """Wake the thread and wait for it (at most `timeout_seconds`: a beat in flight may be mid-request)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_seconds)
            self._thread = None

    def status(self) -> dict[str, object]:
        """The gate's status (see `ServiceGate.status`) plus the loop's: for /readyz and metrics."""
        last = self._last_beat_at
        return {
            **self.gate.status(),
            "last_beat_at": None if last is None else last.isoformat(),
            "missed_answers": self._missed_answers,
            "interval_seconds": self._interval,
            "running": self._thread is not None and self._thread.is_alive(),
        }

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.beat_once()
            stop.wait(self._interval)

    def _restore(self) -> ServiceGate:
        """The gate as persisted. A missing file means no grace is running (a first boot).

        A file that exists but cannot be read, or holds no valid instant, fails closed to "grace
        started now": not to "serving" (deleting or garbling the file must not cancel a running
        grace) and not to "refusing" (a damaged file alone should not take a host offline while
        its control plane may be unreachable). The first beat, sent at once, settles it either way.
        A grace start in the future is clamped to now, so the file cannot lengthen the grace.
        """
        now = self._now()
        try:
            text = self._gate_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ServiceGate(now=self._now)
        except (OSError, UnicodeDecodeError) as error:
            return self._corrupt(f"cannot be read ({error})")
        try:
            started = _grace_start(text)
        except ValueError as error:
            return self._corrupt(str(error))
        self._persisted = started  # what the file holds: a clamped start differs from it and is rewritten
        if started is not None and started > now:
            log.warning("heartbeat gate file %s has a grace start in the future; using now", self._gate_file)
            started = now
        return ServiceGate(grace_started_at=started, now=self._now)

    def _corrupt(self, problem: str) -> ServiceGate:
        reason = f"heartbeat gate file {self._gate_file} {problem}; grace period started now"
        log.error("%s", reason)
        gate = ServiceGate(now=self._now)
        gate.record(None, error=reason)
        self._persisted = _UNKNOWN
        return gate

    def _persist(self) -> None:
        started = self.gate.grace_started_at()
        if started == self._persisted:
            return
        document = {"grace_started_at": None if started is None else started.isoformat()}
        try:
            self._gate_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_file_atomically(self._gate_file, json.dumps(document).encode("utf-8"), mode=_GATE_FILE_MODE)
        except OSError as error:
            # The gate in memory is still right; the next beat tries to persist again.
            log.error("cannot persist the heartbeat gate to %s: %s", self._gate_file, error)
            return
        self._persisted = started


# A sentinel that never equals a grace start, so a damaged file is always rewritten.
_UNKNOWN: Any = object()


def _grace_start(text: str) -> datetime | None:
    """The grace start in a gate file's text; raises ValueError for anything but a valid document."""
    document = json.loads(text)
    if not isinstance(document, dict) or "grace_started_at" not in document:
        raise ValueError("does not hold a heartbeat gate document")
    value = document["grace_started_at"]
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("holds a grace start that is not a timestamp")
    started = datetime.fromisoformat(value)
    if started.utcoffset() is None:
        raise ValueError("holds a grace start without a time zone")
    return started


if __name__ == "__main__":
    # The value for the control plane's HD_ALLOWED_CODE_HASHES, for the code installed here.
    print(engine_code_hash(installed_code_roots()))
