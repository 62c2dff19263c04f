"""Fleet membership: who may send a heartbeat, and the verdict on a host from EC2's facts and the store.

EC2 is a recording in-memory `FleetMembership` here (the boto3 adapter is tested against moto in
tests/integration/functions/test_fleet_heartbeat.py); the store is the real SQLite adapter.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.errors import AuthenticationFailed, Forbidden
from hd_core.fleet import (
    FleetCallerRejected,
    FleetConfig,
    FleetIdentityMissing,
    FleetInstance,
    code_hash_allow_list,
    fleet_fingerprint,
    judge_heartbeat,
    verify_caller,
)
from hd_core.heartbeat import HeartbeatReport, environment_fingerprint
from hd_core.models import Organization, OrgStatus

ACCOUNT = "123456789012"
REGION = "eu-west-1"
HOST = "i-0123456789abcdef0"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/hd/hd-engine-host"
CALLER = f"arn:aws:sts::{ACCOUNT}:assumed-role/hd-engine-host/{HOST}"
ASG = "hd-engine-fleet"
LAUNCH = datetime(2026, 11, 1, 8, 30, 15, tzinfo=UTC)
CODE = "c0de" * 16
OTHER_CODE = "bad0" * 16

ORG = "org_fleet"
FLEET = FleetConfig(role_arn=ROLE_ARN, asg_name=ASG, allowed_code_hashes=frozenset({CODE}), org_id=ORG)
INSTANCE = FleetInstance(instance_id=HOST, account_id=ACCOUNT, region=REGION, state="running", launch_time=LAUNCH,
                         asg_name=ASG)


class RecordingMembership:
    """EC2 as a dictionary of instances, recording every lookup."""

    def __init__(self, *instances: FleetInstance) -> None:
        self.instances = {instance.instance_id: instance for instance in instances}
        self.lookups: list[str] = []

    def describe_instance(self, instance_id: str) -> FleetInstance | None:
        self.lookups.append(instance_id)
        return self.instances.get(instance_id)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteControlStore]:
    store = SqliteControlStore(tmp_path / "control.sqlite3")
    store.put_org(Organization(org_id=ORG, name="Fleet Org", status=OrgStatus.ACTIVE, created_at=LAUNCH))
    yield store
    store.close()


def honest_report(*, org_id: str = ORG, code_hash: str = CODE, launch_time: datetime = LAUNCH) -> HeartbeatReport:
    """What a host on INSTANCE reports when nothing is wrong."""
    fingerprint = environment_fingerprint(org_id, HOST, ACCOUNT, REGION, launch_time)
    return HeartbeatReport(org_id=org_id, host_id=HOST, fingerprint=fingerprint, code_hash=code_hash,
                           sent_at=datetime(2026, 11, 23, 12, 0, tzinfo=UTC))


def judge(report: HeartbeatReport, store: SqliteControlStore, *instances: FleetInstance,
          caller: str | None = CALLER, fleet: FleetConfig = FLEET) -> tuple[bool, bool, str]:
    verdict = judge_heartbeat(report, caller_arn=caller, fleet=fleet, membership=RecordingMembership(*instances),
                              store=store)
    return verdict.allowed, verdict.org_active, verdict.reason


# --- the caller -----------------------------------------------------------------------------------


def test_the_fleet_roles_session_for_the_reported_instance_is_accepted() -> None:
    verify_caller(CALLER, fleet_role_arn=ROLE_ARN, host_id=HOST)


def test_a_role_configured_without_a_path_matches_the_same_session() -> None:
    verify_caller(CALLER, fleet_role_arn=f"arn:aws:iam::{ACCOUNT}:role/hd-engine-host", host_id=HOST)


@pytest.mark.parametrize(
    ("caller", "problem"),
    [
        (f"arn:aws:iam::{ACCOUNT}:user/alice", "not the engine hosts' instance role"),
        (f"arn:aws:sts::{ACCOUNT}:assumed-role/hd-admin/{HOST}", "not the engine hosts' instance role"),
        (f"arn:aws:sts::{ACCOUNT}:assumed-role/hd-engine-host-2/{HOST}", "not the engine hosts' instance role"),
        (f"arn:aws:sts::210987654321:assumed-role/hd-engine-host/{HOST}", "not the engine hosts' instance role"),
        (f"arn:aws-cn:sts::{ACCOUNT}:assumed-role/hd-engine-host/{HOST}", "not the engine hosts' instance role"),
        (f"arn:aws:sts::{ACCOUNT}:assumed-role/hd-engine-host/i-0aaaaaaaaaaaaaaaa", "not the instance named"),
        (f"arn:aws:sts::{ACCOUNT}:assumed-role/hd-engine-host/{HOST}/extra", "not the engine hosts' instance role"),
    ],
)
def test_any_other_caller_is_rejected_with_a_403_code(caller: str | None, problem: str) -> None:
    with pytest.raises(FleetCallerRejected, match=problem) as raised:
        verify_caller(caller, fleet_role_arn=ROLE_ARN, host_id=HOST)

    assert isinstance(raised.value, Forbidden)
    assert raised.value.code == "HD_ERR_FLEET_CALLER_REJECTED"


@pytest.mark.parametrize("caller", [None, ""])
def test_a_request_without_an_aws_identity_is_unauthenticated_not_forbidden(caller: str | None) -> None:
    with pytest.raises(FleetIdentityMissing, match="no AWS identity") as raised:
        verify_caller(caller, fleet_role_arn=ROLE_ARN, host_id=HOST)

    assert isinstance(raised.value, AuthenticationFailed)  # the API answers 401
    assert raised.value.code == "HD_ERR_FLEET_IDENTITY_MISSING"
    assert "AWS_IAM" in raised.value.reason  # for the logs: the likely deployment mistake


@pytest.mark.parametrize("configured", ["", "hd-engine-host", f"arn:aws:sts::{ACCOUNT}:assumed-role/hd-engine-host/x"])
def test_without_a_valid_configured_role_every_caller_is_rejected(configured: str) -> None:
    with pytest.raises(FleetCallerRejected, match="no engine host role is configured"):
        verify_caller(CALLER, fleet_role_arn=configured, host_id=HOST)


def test_a_rejected_caller_causes_no_ec2_lookup(store: SqliteControlStore) -> None:
    membership = RecordingMembership(INSTANCE)
    wrong = f"arn:aws:sts::{ACCOUNT}:assumed-role/hd-engine-host/i-0aaaaaaaaaaaaaaaa"

    with pytest.raises(FleetCallerRejected):
        judge_heartbeat(honest_report(), caller_arn=wrong, fleet=FLEET, membership=membership, store=store)

    assert membership.lookups == []


# --- the verdict ----------------------------------------------------------------------------------


def test_a_running_fleet_member_with_an_approved_build_is_allowed(store: SqliteControlStore) -> None:
    assert judge(honest_report(), store, INSTANCE) == (True, True, "ok")


@pytest.mark.parametrize("state", ["pending", "running"])
def test_pending_and_running_instances_are_live(store: SqliteControlStore, state: str) -> None:
    assert judge(honest_report(), store, replace(INSTANCE, state=state))[0] is True


@pytest.mark.parametrize("state", ["stopping", "stopped", "shutting-down", "terminated"])
def test_an_instance_that_is_not_live_is_not_allowed(store: SqliteControlStore, state: str) -> None:
    allowed, org_active, reason = judge(honest_report(), store, replace(INSTANCE, state=state))

    assert (allowed, org_active) == (False, True)
    assert f"is {state}, not pending or running" in reason


def test_an_instance_ec2_does_not_know_is_not_allowed(store: SqliteControlStore) -> None:
    allowed, _, reason = judge(honest_report(), store)

    assert allowed is False
    assert "does not exist in this account and region" in reason


@pytest.mark.parametrize("asg_name", [None, "someone-elses-asg"])
def test_an_instance_outside_the_fleet_group_is_not_allowed(store: SqliteControlStore, asg_name: str | None) -> None:
    allowed, _, reason = judge(honest_report(), store, replace(INSTANCE, asg_name=asg_name))

    assert allowed is False
    assert "not a member of the engine fleet's Auto Scaling group" in reason


def test_with_no_group_configured_no_instance_is_a_member(store: SqliteControlStore) -> None:
    untagged = replace(INSTANCE, asg_name="")

    assert judge(honest_report(), store, untagged, fleet=replace(FLEET, asg_name=""))[0] is False


@pytest.mark.parametrize(
    "fact",
    [{"account_id": "210987654321"}, {"region": "us-east-1"}, {"launch_time": datetime(2026, 11, 2, tzinfo=UTC)}],
)
def test_a_fingerprint_that_ec2s_facts_do_not_give_is_not_allowed(
    store: SqliteControlStore, fact: dict[str, object]
) -> None:
    allowed, org_active, reason = judge(honest_report(), store, replace(INSTANCE, **fact))  # type: ignore[arg-type]

    assert (allowed, org_active) == (False, True)
    assert reason == f"unknown environment fingerprint for host {HOST}"


def test_a_fingerprint_for_another_organisation_is_not_allowed(store: SqliteControlStore) -> None:
    claimed = replace(honest_report(), fingerprint=environment_fingerprint("org_other", HOST, ACCOUNT, REGION, LAUNCH))

    assert judge(claimed, store, INSTANCE)[0] is False


def test_sub_second_launch_times_are_truncated_like_the_host_does(store: SqliteControlStore) -> None:
    precise = replace(INSTANCE, launch_time=LAUNCH.replace(microsecond=250_000))

    assert fleet_fingerprint(ORG, precise) == fleet_fingerprint(ORG, INSTANCE)
    assert judge(honest_report(), store, precise)[0] is True


def test_a_build_outside_the_allow_list_is_not_allowed(store: SqliteControlStore) -> None:
    allowed, _, reason = judge(honest_report(code_hash=OTHER_CODE), store, INSTANCE)

    assert allowed is False
    assert reason == "engine code package is not an approved build"


def test_an_empty_allow_list_allows_no_build(store: SqliteControlStore) -> None:
    assert judge(honest_report(), store, INSTANCE, fleet=replace(FLEET, allowed_code_hashes=frozenset()))[0] is False


def test_a_suspended_organisation_keeps_the_host_allowed_but_not_the_org(store: SqliteControlStore) -> None:
    org = store.get_org(ORG)
    assert org is not None
    store.put_org(replace(org, status=OrgStatus.SUSPENDED))

    assert judge(honest_report(), store, INSTANCE) == (True, False, f"organisation {ORG} is not active")


def test_an_unknown_organisation_is_not_active(store: SqliteControlStore) -> None:
    allowed, org_active, _ = judge(honest_report(org_id="org_nobody"), store, INSTANCE,
                                   fleet=replace(FLEET, org_id="org_nobody"))

    assert (allowed, org_active) == (True, False)


def test_every_problem_is_named_in_the_reason(store: SqliteControlStore) -> None:
    org = store.get_org(ORG)
    assert org is not None
    store.put_org(replace(org, status=OrgStatus.SUSPENDED))

    _, _, reason = judge(honest_report(code_hash=OTHER_CODE), store, replace(INSTANCE, state="stopped"))

    assert reason.split("; ") == [
        f"instance {HOST} is stopped, not pending or running",
        f"unknown environment fingerprint for host {HOST}",
        "engine code package is not an approved build",
        f"organisation {ORG} is not active",
    ]


# --- configuration --------------------------------------------------------------------------------


def test_the_allow_list_is_comma_separated_case_insensitive_and_drops_non_hashes() -> None:
    text = f" {CODE.upper()} ,,{OTHER_CODE}, not-a-hash, {'a' * 63}"

    assert code_hash_allow_list(text) == frozenset({CODE, OTHER_CODE})
    assert code_hash_allow_list("") == frozenset()


def test_an_instance_reporting_for_another_organisation_is_not_allowed(store: SqliteControlStore) -> None:
    store.put_org(Organization(org_id="org_other", name="Other", status=OrgStatus.ACTIVE, created_at=LAUNCH))
    allowed, org_active, reason = judge(honest_report(org_id="org_other"), store, INSTANCE)

    assert (allowed, org_active) == (False, True)
    assert "this fleet serves 'org_fleet'" in reason
