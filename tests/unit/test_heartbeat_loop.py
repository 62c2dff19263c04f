"""The host's heartbeat loop: grace on a hand-wound clock, the persisted gate file, and the two channels.

`ControlPlaneHeartbeat` is tested against real local HTTP servers: one plays the control plane and
captures what arrives (the SigV4 signature is recomputed from the captured request), others stand
where a redirect or a proxy would lead and must never be contacted.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from engine_host.runtime import heartbeat_loop
from engine_host.runtime.heartbeat_loop import (
    HEARTBEAT_PATH,
    ControlPlaneHeartbeat,
    HeartbeatLoop,
    HeartbeatNoAnswer,
    HeartbeatRefused,
    InProcessHeartbeat,
    engine_code_hash,
    host_report,
    installed_code_roots,
)
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.errors import InvalidRequest
from hd_core.heartbeat import GRACE_PERIOD, GateState, HeartbeatReport, HeartbeatVerdict, environment_fingerprint
from hd_core.models import Organization, OrgStatus
from tests.clocks import HandWoundClock

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LAUNCH = datetime(2026, 11, 1, 8, 30, 15, tzinfo=UTC)
ORG = "org_fleet"
HOST = "i-0123456789abcdef0"
REGION = "eu-west-1"
OK = HeartbeatVerdict(allowed=True, org_active=True, reason="ok")
BAD_BUILD = HeartbeatVerdict(allowed=False, org_active=True, reason="engine code package is not an approved build")
CREDENTIALS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token-example")
REPORT = HeartbeatReport(org_id=ORG, host_id=HOST, fingerprint="f" * 64, code_hash="c" * 64, sent_at=T0)


class ScriptedChannel:
    """Answers with the next scripted verdict, or raises the next scripted exception; records every report."""

    def __init__(self, *answers: HeartbeatVerdict | Exception) -> None:
        self.answers = list(answers)
        self.reports: list[HeartbeatReport] = []
        self.sent = threading.Event()

    def send(self, report: HeartbeatReport) -> HeartbeatVerdict:
        self.reports.append(report)
        self.sent.set()
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def clock() -> HandWoundClock:
    return HandWoundClock(T0)


@pytest.fixture
def gate_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "heartbeat-gate.json"


def new_loop(channel: ScriptedChannel, gate_file: Path, clock: HandWoundClock, interval: float = 900) -> HeartbeatLoop:
    return HeartbeatLoop(channel, gate_file, lambda: replace(REPORT, sent_at=clock()), interval, now=clock)


def persisted(gate_file: Path) -> Any:
    return json.loads(gate_file.read_text())["grace_started_at"]


# --- grace ----------------------------------------------------------------------------------------


def test_a_positive_answer_keeps_the_host_serving(gate_file: Path, clock: HandWoundClock) -> None:
    loop = new_loop(ScriptedChannel(OK), gate_file, clock)

    assert loop.beat_once() is GateState.SERVING
    assert loop.status()["last_ok_at"] == T0.isoformat()
    assert not gate_file.exists()  # nothing to persist while no grace has ever run


def test_a_negative_answer_degrades_and_the_host_refuses_at_exactly_four_hours(gate_file: Path,
                                                                               clock: HandWoundClock) -> None:
    loop = new_loop(ScriptedChannel(BAD_BUILD), gate_file, clock)

    assert loop.beat_once() is GateState.DEGRADED
    clock.advance(hours=3, minutes=59, seconds=59, microseconds=999_999)
    assert loop.beat_once() is GateState.DEGRADED
    clock.advance(microseconds=1)

    assert loop.gate.state() is GateState.REFUSING
    assert loop.beat_once() is GateState.REFUSING
    assert loop.status()["grace_ends_at"] == (T0 + GRACE_PERIOD).isoformat()
    assert loop.status()["last_reason"] == BAD_BUILD.reason
    assert persisted(gate_file) == T0.isoformat()  # later bad answers never move the grace start


def test_a_positive_answer_restores_service_and_clears_the_persisted_grace(gate_file: Path,
                                                                           clock: HandWoundClock) -> None:
    channel = ScriptedChannel(BAD_BUILD, OK)
    loop = new_loop(channel, gate_file, clock)
    loop.beat_once()
    clock.advance(hours=5)
    assert loop.gate.state() is GateState.REFUSING

    assert loop.beat_once() is GateState.SERVING
    assert loop.gate.accepts_new_connections()
    assert persisted(gate_file) is None


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (HeartbeatRefused(403, "HD_ERR_FLEET_CALLER_REJECTED", "the caller is not the engine hosts' instance role"),
         "HD_ERR_HEARTBEAT_REFUSED: the control plane refused the heartbeat: HTTP 403 HD_ERR_FLEET_CALLER_REJECTED"),
        (HeartbeatNoAnswer("the control plane at https://x could not be reached: timed out"),
         "HD_ERR_HEARTBEAT_NO_ANSWER: the control plane at https://x could not be reached"),
        (RuntimeError("the channel has a bug"), "RuntimeError: the channel has a bug"),
    ],
)
def test_a_channel_failure_is_a_missing_answer_recorded_with_its_reason(
    gate_file: Path, clock: HandWoundClock, failure: Exception, reason: str
) -> None:
    loop = new_loop(ScriptedChannel(failure), gate_file, clock)

    assert loop.beat_once() is GateState.DEGRADED
    status = loop.status()
    assert str(status["last_reason"]).startswith(f"no answer from the control plane: {reason}")
    assert status["missed_answers"] == 1
    assert persisted(gate_file) == T0.isoformat()


def test_a_report_that_cannot_be_built_is_a_missing_answer_too(gate_file: Path, clock: HandWoundClock) -> None:
    def broken() -> HeartbeatReport:
        raise OSError("engine code vanished")

    channel = ScriptedChannel(OK)
    loop = HeartbeatLoop(channel, gate_file, broken, 900, now=clock)

    assert loop.beat_once() is GateState.DEGRADED
    assert "OSError: engine code vanished" in str(loop.status()["last_reason"])
    assert channel.reports == []


def test_missed_answers_count_until_an_answer_arrives(gate_file: Path, clock: HandWoundClock) -> None:
    loop = new_loop(ScriptedChannel(TimeoutError("slow"), TimeoutError("slow"), BAD_BUILD), gate_file, clock)
    loop.beat_once()
    loop.beat_once()
    assert loop.status()["missed_answers"] == 2

    loop.beat_once()  # a negative verdict is still an answer

    assert loop.status()["missed_answers"] == 0
    assert loop.status()["state"] == "degraded"


# --- persistence ----------------------------------------------------------------------------------


def test_a_restart_cannot_reset_a_running_grace(gate_file: Path, clock: HandWoundClock) -> None:
    new_loop(ScriptedChannel(BAD_BUILD), gate_file, clock).beat_once()
    clock.advance(hours=3)

    restarted = new_loop(ScriptedChannel(BAD_BUILD), gate_file, clock)

    assert restarted.gate.state() is GateState.DEGRADED
    assert restarted.gate.grace_started_at() == T0
    clock.advance(hours=1)
    assert restarted.gate.state() is GateState.REFUSING  # on time, even before the restarted loop beats
    assert restarted.beat_once() is GateState.REFUSING


def test_the_gate_file_is_owner_only_and_written_without_leftovers(gate_file: Path, clock: HandWoundClock) -> None:
    new_loop(ScriptedChannel(BAD_BUILD), gate_file, clock).beat_once()

    assert gate_file.stat().st_mode & 0o777 == 0o600
    assert [path.name for path in gate_file.parent.iterdir()] == [gate_file.name]


def test_the_gate_file_is_written_only_when_the_grace_start_changes(
    gate_file: Path, clock: HandWoundClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    write = heartbeat_loop.write_file_atomically

    def recording_write(path: Path, data: bytes, **options: Any) -> None:
        writes.append(data)
        write(path, data, **options)

    monkeypatch.setattr(heartbeat_loop, "write_file_atomically", recording_write)
    loop = new_loop(ScriptedChannel(OK, BAD_BUILD, BAD_BUILD, TimeoutError("x"), OK, OK), gate_file, clock)

    for _ in range(6):
        loop.beat_once()
        clock.advance(minutes=15)

    assert [json.loads(data)["grace_started_at"] for data in writes] == [(T0 + timedelta(minutes=15)).isoformat(), None]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe\x00",
        b"[]",
        b'{"something": "else"}',
        b'{"grace_started_at": 1763900000}',
        b'{"grace_started_at": "yesterday"}',
        b'{"grace_started_at": "2026-11-23T08:00:00"}',  # no time zone
    ],
)
def test_a_corrupt_gate_file_fails_closed_to_a_grace_started_now(
    gate_file: Path, clock: HandWoundClock, content: bytes
) -> None:
    gate_file.parent.mkdir(parents=True)
    gate_file.write_bytes(content)

    loop = new_loop(ScriptedChannel(OK), gate_file, clock)

    assert loop.gate.state() is GateState.DEGRADED
    assert loop.gate.grace_started_at() == T0
    assert f"heartbeat gate file {gate_file}" in str(loop.status()["last_reason"])
    assert persisted(gate_file) == T0.isoformat()  # repaired at once
    assert loop.beat_once() is GateState.SERVING  # the first answer settles it


def test_a_grace_start_in_the_future_is_clamped_to_now(gate_file: Path, clock: HandWoundClock) -> None:
    gate_file.parent.mkdir(parents=True)
    gate_file.write_text(json.dumps({"grace_started_at": (T0 + timedelta(days=30)).isoformat()}))

    loop = new_loop(ScriptedChannel(BAD_BUILD), gate_file, clock)

    assert loop.gate.grace_started_at() == T0
    assert persisted(gate_file) == T0.isoformat()


def test_an_unwritable_gate_file_never_stops_the_beat(tmp_path: Path, clock: HandWoundClock) -> None:
    (tmp_path / "not-a-directory").write_text("")
    gate_file = tmp_path / "not-a-directory" / "gate.json"
    loop = new_loop(ScriptedChannel(BAD_BUILD), gate_file, clock)

    assert loop.beat_once() is GateState.DEGRADED
    clock.advance(hours=4)
    assert loop.beat_once() is GateState.REFUSING


def test_the_interval_must_be_positive(gate_file: Path, clock: HandWoundClock) -> None:
    with pytest.raises(InvalidRequest):
        new_loop(ScriptedChannel(OK), gate_file, clock, interval=0)


# --- the thread -----------------------------------------------------------------------------------


def test_start_beats_at_once_and_stop_wakes_the_thread_at_once(gate_file: Path, clock: HandWoundClock) -> None:
    channel = ScriptedChannel(OK)
    loop = new_loop(channel, gate_file, clock, interval=3600)

    loop.start()
    assert channel.sent.wait(2)
    assert loop.status()["running"] is True
    started = time.monotonic()
    loop.stop()

    assert time.monotonic() - started < 1
    assert loop.status()["running"] is False
    assert len(channel.reports) == 1


def test_the_thread_beats_every_interval(gate_file: Path, clock: HandWoundClock) -> None:
    channel = ScriptedChannel(OK)
    loop = new_loop(channel, gate_file, clock, interval=0.01)

    loop.start()
    deadline = time.monotonic() + 2
    while len(channel.reports) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    loop.stop()

    assert len(channel.reports) >= 3


# --- reports --------------------------------------------------------------------------------------


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A release directory holding the three engine packages."""
    root = tmp_path / "site-packages"
    for package in ("engine_host", "hd_core", "functions"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text(f"NAME = {package!r}\n")
    return root


def test_host_report_fingerprints_this_instance_and_hashes_the_code_once(release: Path, clock: HandWoundClock) -> None:
    report = host_report(ORG, instance_id=HOST, account_id="123456789012", region=REGION,
                         launch_time=LAUNCH.replace(microsecond=123), code_root=release, now=clock)
    first = report()
    (release / "hd_core" / "__init__.py").write_text("NAME = 'patched'\n")
    clock.advance(minutes=15)
    second = report()

    assert first.fingerprint == environment_fingerprint(ORG, HOST, "123456789012", REGION, LAUNCH)
    assert first.code_hash == second.code_hash  # computed at start: describes the code this process loaded
    assert (first.org_id, first.host_id, first.sent_at, second.sent_at) == (ORG, HOST, T0, T0 + timedelta(minutes=15))
    assert engine_code_hash({name: release / name for name in ("engine_host", "hd_core", "functions")}) != (
        first.code_hash)


def test_the_engine_code_hash_tells_the_packages_apart(release: Path) -> None:
    roots = {name: release / name for name in ("engine_host", "hd_core", "functions")}
    swapped = {**roots, "hd_core": roots["functions"], "functions": roots["hd_core"]}

    assert engine_code_hash(roots) != engine_code_hash(swapped)
    assert len(engine_code_hash(roots)) == 64


def test_the_installed_packages_are_found_where_python_imports_them() -> None:
    roots = installed_code_roots()

    assert sorted(roots) == ["engine_host", "functions", "hd_core"]
    assert (roots["engine_host"] / "runtime" / "heartbeat_loop.py").is_file()
    assert (roots["hd_core"] / "heartbeat.py").is_file()


# --- the in-process channel (hd dev) --------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteControlStore]:
    store = SqliteControlStore(tmp_path / "control.sqlite3")
    store.put_org(Organization(org_id=ORG, name="Fleet Org", status=OrgStatus.ACTIVE, created_at=T0))
    yield store
    store.close()


def test_in_process_a_host_judged_against_its_own_report_is_allowed(store: SqliteControlStore) -> None:
    assert InProcessHeartbeat(store, REPORT).send(REPORT) == OK


def test_in_process_a_suspended_organisation_is_not_active(store: SqliteControlStore) -> None:
    org = store.get_org(ORG)
    assert org is not None
    store.put_org(replace(org, status=OrgStatus.SUSPENDED))

    verdict = InProcessHeartbeat(store, REPORT).send(REPORT)

    assert (verdict.allowed, verdict.org_active) == (True, False)


def test_in_process_another_build_is_not_allowed(store: SqliteControlStore) -> None:
    verdict = InProcessHeartbeat(store, REPORT).send(replace(REPORT, code_hash="d" * 64))

    assert verdict.allowed is False


# --- the control-plane channel --------------------------------------------------------------------


@dataclass
class Captured:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeControlPlane:
    """A local HTTP server: records each request and answers with `status` and `body` (or `respond`)."""

    status: int = 200
    body: Any = field(default_factory=lambda: {"allowed": True, "org_active": True, "reason": "ok",
                                               "checked_at": T0.isoformat(), "next_heartbeat_seconds": 900})
    headers: dict[str, str] = field(default_factory=dict)
    requests: list[Captured] = field(default_factory=list)
    hold: threading.Event | None = None
    server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeControlPlane:
        plane = self

        class _Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                plane.requests.append(Captured(self.command, self.path, dict(self.headers.items()),
                                               self.rfile.read(length)))
                if plane.hold is not None:
                    plane.hold.wait(5)
                payload = plane.body if isinstance(plane.body, bytes) else json.dumps(plane.body).encode()
                self.send_response(plane.status)
                for name, value in {"Content-Type": "application/json", **plane.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_CONNECT = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers() -> Iterator[Callable[..., FakeControlPlane]]:
    started: list[FakeControlPlane] = []

    def start(**kwargs: Any) -> FakeControlPlane:
        started.append(FakeControlPlane(**kwargs).start())
        return started[-1]

    yield start
    for server in started:
        server.stop()


def channel_to(plane: FakeControlPlane, **kwargs: Any) -> ControlPlaneHeartbeat:
    return ControlPlaneHeartbeat(f"{plane.base_url}{HEARTBEAT_PATH}", REGION, CREDENTIALS, **kwargs)


def test_the_report_is_posted_as_json_and_signed_with_sigv4(servers: Callable[..., FakeControlPlane]) -> None:
    plane = servers()

    verdict = channel_to(plane).send(REPORT)

    assert verdict == OK
    [request] = plane.requests
    assert (request.method, request.path) == ("POST", HEARTBEAT_PATH)
    assert json.loads(request.body) == {"org_id": ORG, "host_id": HOST, "fingerprint": "f" * 64,
                                        "code_hash": "c" * 64, "sent_at": T0.isoformat()}
    assert request.headers["X-Amz-Security-Token"] == CREDENTIALS.token
    algorithm, _, fields = request.headers["Authorization"].partition(" ")
    parts = dict(item.strip().split("=", 1) for item in fields.split(","))
    assert algorithm == "AWS4-HMAC-SHA256"
    date = request.headers["X-Amz-Date"][:8]
    assert parts["Credential"] == f"AKIDEXAMPLE/{date}/{REGION}/execute-api/aws4_request"
    signed = parts["SignedHeaders"].split(";")
    assert {"host", "x-amz-date", "x-amz-security-token", "content-type"} <= set(signed)
    # Recompute the signature from what arrived, as API Gateway does: it must match.
    header_of = {name.lower(): value for name, value in request.headers.items()}
    arrived = AWSRequest(method="POST", url=f"{plane.base_url}{HEARTBEAT_PATH}", data=request.body,
                         headers={name: header_of[name] for name in signed})
    arrived.context["timestamp"] = request.headers["X-Amz-Date"]
    signer = SigV4Auth(CREDENTIALS, "execute-api", REGION)
    expected = signer.signature(signer.string_to_sign(arrived, signer.canonical_request(arrived)), arrived)
    assert parts["Signature"] == expected


def test_a_tampered_body_would_not_match_the_signature(servers: Callable[..., FakeControlPlane]) -> None:
    plane = servers()
    channel_to(plane).send(REPORT)
    [request] = plane.requests
    fields = request.headers["Authorization"].partition(" ")[2]
    parts = dict(item.strip().split("=", 1) for item in fields.split(","))
    header_of = {name.lower(): value for name, value in request.headers.items()}
    forged = request.body.replace(b"c" * 64, b"d" * 64)
    arrived = AWSRequest(method="POST", url=f"{plane.base_url}{HEARTBEAT_PATH}", data=forged,
                         headers={name: header_of[name] for name in parts["SignedHeaders"].split(";")})
    arrived.context["timestamp"] = request.headers["X-Amz-Date"]
    signer = SigV4Auth(CREDENTIALS, "execute-api", REGION)

    assert parts["Signature"] != signer.signature(signer.string_to_sign(arrived, signer.canonical_request(arrived)),
                                                  arrived)


def test_an_error_answer_raises_with_the_hd_err_code_of_its_body(servers: Callable[..., FakeControlPlane]) -> None:
    plane = servers(status=403, body={"error": {"code": "HD_ERR_FLEET_CALLER_REJECTED", "request_id": "r1",
                                                "message": "the caller is not the engine hosts' instance role"}})

    with pytest.raises(HeartbeatRefused) as raised:
        channel_to(plane).send(REPORT)

    assert (raised.value.status, raised.value.remote_code) == (403, "HD_ERR_FLEET_CALLER_REJECTED")
    assert "the caller is not the engine hosts' instance role" in str(raised.value)


def test_an_error_answer_without_our_error_body_still_raises(servers: Callable[..., FakeControlPlane]) -> None:
    plane = servers(status=502, body=b"<html>Bad Gateway</html>")

    with pytest.raises(HeartbeatRefused) as raised:
        channel_to(plane).send(REPORT)

    assert (raised.value.status, raised.value.remote_code) == (502, None)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", {"allowed": "true", "org_active": True, "reason": "ok"}, {"allowed": True, "reason": "ok"},
     {"allowed": 1, "org_active": 1, "reason": "ok"}],
)
def test_a_malformed_verdict_is_no_answer(servers: Callable[..., FakeControlPlane], body: Any) -> None:
    plane = servers(body=body)

    with pytest.raises(HeartbeatNoAnswer):
        channel_to(plane).send(REPORT)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_never_followed(servers: Callable[..., FakeControlPlane], status: int) -> None:
    elsewhere = servers()
    plane = servers(status=status, body=b"", headers={"Location": f"{elsewhere.base_url}{HEARTBEAT_PATH}"})

    with pytest.raises(HeartbeatRefused) as raised:
        channel_to(plane).send(REPORT)

    assert raised.value.status == status
    assert len(plane.requests) == 1 and elsewhere.requests == []


def test_proxy_settings_in_the_environment_are_ignored(
    servers: Callable[..., FakeControlPlane], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = servers()
    plane = servers()
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy.base_url)

    assert channel_to(plane).send(REPORT) == OK

    assert len(plane.requests) == 1 and proxy.requests == []


def test_an_unreachable_control_plane_is_no_answer() -> None:
    channel = ControlPlaneHeartbeat(f"http://127.0.0.1:9{HEARTBEAT_PATH}", REGION, CREDENTIALS)

    with pytest.raises(HeartbeatNoAnswer, match="could not be reached"):
        channel.send(REPORT)


def test_a_control_plane_that_does_not_answer_in_time_is_no_answer(servers: Callable[..., FakeControlPlane]) -> None:
    plane = servers(hold=threading.Event())
    started = time.monotonic()

    with pytest.raises(HeartbeatNoAnswer, match="could not be reached"):
        channel_to(plane, timeout_seconds=0.2).send(REPORT)

    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "url",
    ["http://control.example.com/v1/fleet/heartbeat", "ftp://control.example.com/x", "file:///etc/passwd",
     "https:///v1/fleet/heartbeat"],
)
def test_only_https_or_loopback_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(InvalidRequest):
        ControlPlaneHeartbeat(url, REGION, CREDENTIALS)


def test_without_credentials_the_beat_is_a_missing_answer(
    servers: Callable[..., FakeControlPlane], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plane = servers()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                 "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never reach for a real instance's role in a test

    with pytest.raises(HeartbeatNoAnswer, match="no AWS credentials"):
        ControlPlaneHeartbeat(f"{plane.base_url}{HEARTBEAT_PATH}", REGION).send(REPORT)

    assert plane.requests == []


def test_the_loop_over_the_control_plane_channel_serves_on_a_positive_answer(
    servers: Callable[..., FakeControlPlane], gate_file: Path, clock: HandWoundClock
) -> None:
    plane = servers()
    loop = HeartbeatLoop(channel_to(plane), gate_file, lambda: REPORT, 900, now=clock)

    assert loop.beat_once() is GateState.SERVING
    plane.status, plane.body = 503, {"error": {"code": "HD_ERR_FLEET_LOOKUP_UNAVAILABLE", "message": "retry",
                                               "request_id": "r"}}
    assert loop.beat_once() is GateState.DEGRADED
    assert "HD_ERR_FLEET_LOOKUP_UNAVAILABLE" in str(loop.status()["last_reason"])
    assert os.stat(gate_file).st_mode & 0o777 == 0o600
