"""Heartbeat: what a host reports, how the control plane judges it, and the grace-period gate on the host."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from hd_core.errors import InvalidRequest
from hd_core.heartbeat import (
    GRACE_EXPIRED_SQLSTATE,
    GRACE_PERIOD,
    GateState,
    GraceExpired,
    HeartbeatReport,
    HeartbeatVerdict,
    ServiceGate,
    code_package_hash,
    environment_fingerprint,
    evaluate_report,
)
from tests.clocks import HandWoundClock

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LAUNCH = datetime(2026, 11, 1, 8, 30, tzinfo=UTC)

OK = HeartbeatVerdict(allowed=True, org_active=True, reason="ok")
HOST_UNKNOWN = HeartbeatVerdict(allowed=False, org_active=True, reason="unknown environment fingerprint")
ORG_INACTIVE = HeartbeatVerdict(allowed=True, org_active=False, reason="organisation org_1 is not active")


@pytest.fixture
def clock() -> HandWoundClock:
    return HandWoundClock(T0)


@pytest.fixture
def gate(clock: HandWoundClock) -> ServiceGate:
    return ServiceGate(now=clock)


# --- environment fingerprint ----------------------------------------------------------------------


def fingerprint(
    *, org_id: str = "org_1", instance_id: str = "i-0abc", account_id: str = "123456789012",
    region: str = "eu-west-1", launch_time: datetime = LAUNCH,
) -> str:
    return environment_fingerprint(org_id, instance_id, account_id, region, launch_time)


def test_fingerprint_is_a_sha256_hex_and_deterministic() -> None:
    assert fingerprint() == fingerprint()
    assert len(fingerprint()) == 64
    int(fingerprint(), 16)


@pytest.mark.parametrize(
    "change",
    [
        {"org_id": "org_2"},
        {"instance_id": "i-0abd"},
        {"account_id": "123456789013"},
        {"region": "eu-west-2"},
        {"launch_time": LAUNCH + timedelta(seconds=1)},
    ],
)
def test_fingerprint_changes_with_each_input(change: dict[str, Any]) -> None:
    assert fingerprint(**change) != fingerprint()


def test_fingerprint_cannot_be_forged_by_moving_characters_between_fields() -> None:
    assert fingerprint(org_id="org_1i", instance_id="-0abc") != fingerprint()


def test_fingerprint_is_the_same_for_the_same_instant_in_another_offset() -> None:
    paris = LAUNCH.astimezone(timezone(timedelta(hours=1)))

    assert fingerprint(launch_time=paris) == fingerprint()


def test_fingerprint_refuses_a_naive_launch_time() -> None:
    with pytest.raises(InvalidRequest):
        fingerprint(launch_time=LAUNCH.replace(tzinfo=None))


# --- code package hash ----------------------------------------------------------------------------


@pytest.fixture
def package(tmp_path: Path) -> Path:
    root = tmp_path / "engine_host"
    (root / "wire").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "server.py").write_text("def serve() -> None:\n    pass\n")
    (root / "wire" / "messages.py").write_text("STARTUP = 196608\n")
    return root


def test_code_hash_is_stable_for_the_same_files(package: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "engine_host"
    for source in package.rglob("*.py"):
        target = copy / source.relative_to(package)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())

    assert code_package_hash(copy) == code_package_hash(package)


def test_code_hash_changes_with_one_byte(package: Path) -> None:
    before = code_package_hash(package)
    (package / "wire" / "messages.py").write_text("STARTUP = 196609\n")

    assert code_package_hash(package) != before


def test_code_hash_changes_when_a_file_is_renamed(package: Path) -> None:
    before = code_package_hash(package)
    (package / "server.py").rename(package / "serve.py")

    assert code_package_hash(package) != before


def test_code_hash_changes_when_a_file_is_added(package: Path) -> None:
    before = code_package_hash(package)
    (package / "backdoor.py").write_text("")

    assert code_package_hash(package) != before


def test_code_hash_ignores_pycache_symlinks_and_other_files(package: Path, tmp_path: Path) -> None:
    before = code_package_hash(package)
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "cached.py").write_text("x = 1\n")
    (package / "README.md").write_text("notes\n")
    outside = tmp_path / "outside.py"
    outside.write_text("y = 2\n")
    (package / "linked.py").symlink_to(outside)
    (package / "linked_dir").symlink_to(package / "wire", target_is_directory=True)

    assert code_package_hash(package) == before


def test_code_hash_honours_the_include_patterns(package: Path) -> None:
    before = code_package_hash(package, include=("*.py", "*.sql"))
    (package / "schema.sql").write_text("select 1;\n")

    assert code_package_hash(package, include=("*.py", "*.sql")) != before
    assert code_package_hash(package) == code_package_hash(package, include=("*.py",))


def test_code_hash_refuses_a_missing_or_empty_root(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        code_package_hash(tmp_path / "absent")
    with pytest.raises(InvalidRequest):
        code_package_hash(tmp_path)


# --- the control plane's decision -----------------------------------------------------------------


REPORT = HeartbeatReport(org_id="org_1", host_id="host-a", fingerprint="f" * 64, code_hash="c" * 64, sent_at=T0)


def judge(report: HeartbeatReport = REPORT, *, fingerprints: tuple[str, ...] = ("f" * 64,),
          code_hashes: tuple[str, ...] = ("c" * 64,), org_active: bool = True) -> HeartbeatVerdict:
    return evaluate_report(
        report, expected_fingerprints=fingerprints, allowed_code_hashes=code_hashes, org_active=org_active
    )


def test_known_host_with_approved_code_in_active_org_is_allowed() -> None:
    verdict = judge()

    assert verdict == HeartbeatVerdict(allowed=True, org_active=True, reason="ok")
    assert verdict.positive


def test_unknown_fingerprint_is_not_allowed() -> None:
    verdict = judge(fingerprints=("e" * 64,))

    assert not verdict.allowed and not verdict.positive
    assert "fingerprint" in verdict.reason


def test_unapproved_code_hash_is_not_allowed() -> None:
    verdict = judge(code_hashes=("d" * 64,))

    assert not verdict.allowed
    assert "code package" in verdict.reason


def test_inactive_org_keeps_the_host_allowed_but_the_verdict_negative() -> None:
    verdict = judge(org_active=False)

    assert verdict.allowed and not verdict.org_active and not verdict.positive
    assert "org_1 is not active" in verdict.reason


def test_empty_allow_lists_allow_nothing() -> None:
    verdict = judge(fingerprints=(), code_hashes=())

    assert not verdict.allowed
    assert "fingerprint" in verdict.reason and "code package" in verdict.reason


# --- the host's gate ------------------------------------------------------------------------------


def test_a_new_gate_serves(gate: ServiceGate) -> None:
    assert gate.state() is GateState.SERVING
    assert gate.accepts_new_connections()
    assert gate.status() == {
        "state": "serving", "since": T0.isoformat(), "grace_ends_at": None, "last_ok_at": None, "last_reason": None,
    }


def test_grace_starts_at_the_first_failure_and_keeps_serving(gate: ServiceGate, clock: HandWoundClock) -> None:
    clock.advance(minutes=15)
    assert gate.record(None, error="connect timeout") is GateState.DEGRADED

    assert gate.accepts_new_connections()
    assert gate.status() == {
        "state": "degraded",
        "since": (T0 + timedelta(minutes=15)).isoformat(),
        "grace_ends_at": (T0 + timedelta(minutes=15) + GRACE_PERIOD).isoformat(),
        "last_ok_at": None,
        "last_reason": "no answer from the control plane: connect timeout",
    }


def test_further_failures_do_not_extend_the_grace(gate: ServiceGate, clock: HandWoundClock) -> None:
    gate.record(HOST_UNKNOWN)
    for _ in range(15):
        clock.advance(minutes=15)
        gate.record(None)

    assert gate.status()["grace_ends_at"] == (T0 + GRACE_PERIOD).isoformat()
    assert gate.status()["since"] == T0.isoformat()


def test_refuses_exactly_when_the_grace_ends(gate: ServiceGate, clock: HandWoundClock) -> None:
    gate.record(HOST_UNKNOWN)

    clock.advance(hours=4, microseconds=-1)
    assert gate.accepts_new_connections()
    clock.advance(microseconds=1)
    assert not gate.accepts_new_connections()
    assert gate.state() is GateState.REFUSING
    assert gate.status()["since"] == (T0 + GRACE_PERIOD).isoformat()


def test_gate_refuses_on_time_even_when_no_further_answer_is_recorded(gate: ServiceGate, clock: HandWoundClock) -> None:
    gate.record(None)
    clock.advance(days=2)

    assert gate.state() is GateState.REFUSING


def test_refusal_raises_a_clear_coded_error(gate: ServiceGate, clock: HandWoundClock) -> None:
    gate.record(None)
    clock.advance(hours=4)

    with pytest.raises(GraceExpired) as refused:
        gate.check_new_connection()
    assert refused.value.code == "HD_ERR_LICENSE_GRACE_EXPIRED"
    assert refused.value.sqlstate == GRACE_EXPIRED_SQLSTATE == "08004"
    assert "refusing new connections" in str(refused.value)


def test_check_new_connection_passes_while_degraded(gate: ServiceGate, clock: HandWoundClock) -> None:
    gate.record(None)
    clock.advance(hours=3, minutes=59)

    gate.check_new_connection()


def test_org_inactive_counts_as_a_negative_answer(gate: ServiceGate, clock: HandWoundClock) -> None:
    assert gate.record(ORG_INACTIVE) is GateState.DEGRADED
    clock.advance(hours=4)

    assert gate.state() is GateState.REFUSING
    assert gate.status()["last_reason"] == "organisation org_1 is not active"


def test_a_positive_answer_restores_service_after_refusal(gate: ServiceGate, clock: HandWoundClock) -> None:
    gate.record(None)
    clock.advance(hours=5)
    assert not gate.accepts_new_connections()

    assert gate.record(OK) is GateState.SERVING
    assert gate.accepts_new_connections()
    assert gate.status() == {
        "state": "serving",
        "since": (T0 + timedelta(hours=5)).isoformat(),
        "grace_ends_at": None,
        "last_ok_at": (T0 + timedelta(hours=5)).isoformat(),
        "last_reason": "ok",
    }


def test_a_positive_answer_during_grace_resets_it(gate: ServiceGate, clock: HandWoundClock) -> None:
    gate.record(None)
    clock.advance(hours=3)
    gate.record(OK)
    clock.advance(hours=1)
    gate.record(None)
    clock.advance(hours=3, minutes=59)

    assert gate.state() is GateState.DEGRADED
    assert gate.status()["grace_ends_at"] == (T0 + timedelta(hours=8)).isoformat()


def test_positive_answers_while_serving_keep_the_serving_since(gate: ServiceGate, clock: HandWoundClock) -> None:
    clock.advance(minutes=15)
    gate.record(OK)

    assert gate.status()["since"] == T0.isoformat()
    assert gate.status()["last_ok_at"] == (T0 + timedelta(minutes=15)).isoformat()


def test_grace_period_is_configurable_and_must_be_positive(clock: HandWoundClock) -> None:
    short = ServiceGate(grace=timedelta(minutes=30), now=clock)
    short.record(None)
    clock.advance(minutes=30)

    assert short.state() is GateState.REFUSING
    with pytest.raises(InvalidRequest):
        ServiceGate(grace=timedelta(0), now=clock)
    with pytest.raises(InvalidRequest):
        ServiceGate(grace_started_at=T0.replace(tzinfo=None), now=clock)


def test_a_restarted_gate_resumes_a_persisted_grace_period(gate: ServiceGate, clock: HandWoundClock) -> None:
    gate.record(None)
    clock.advance(hours=3)

    restarted = ServiceGate(grace_started_at=gate.grace_started_at(), now=clock)
    clock.advance(hours=1)

    assert restarted.state() is GateState.REFUSING
    assert restarted.status()["grace_ends_at"] == (T0 + GRACE_PERIOD).isoformat()


def test_a_positive_answer_clears_the_grace_start_to_persist(gate: ServiceGate) -> None:
    gate.record(None)
    assert gate.grace_started_at() == T0

    gate.record(OK)
    assert gate.grace_started_at() is None


def test_concurrent_failures_start_the_grace_at_the_earliest_one() -> None:
    ticks = itertools.count()
    gate = ServiceGate(now=lambda: T0 + timedelta(seconds=next(ticks)))
    start = threading.Barrier(8)

    def report_failures() -> None:
        start.wait()
        for _ in range(200):
            gate.record(None)

    threads = [threading.Thread(target=report_failures) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Tick 0 went to the constructor, so the first failure recorded under the lock read tick 1.
    assert gate.status()["grace_ends_at"] == (T0 + timedelta(seconds=1) + GRACE_PERIOD).isoformat()
