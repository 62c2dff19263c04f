"""`POST /v1/fleet/heartbeat` and the EC2 fleet adapter, against moto's EC2 on both control-store backends.

Events are API Gateway REST proxy events as AWS_IAM authorisation delivers them: the verified caller
is `requestContext.identity.userArn`. AWS forbids setting `aws:` tags yourself (Auto Scaling sets
`aws:autoscaling:groupName`); moto allows it, which is how these instances join the fleet's group.
Failures of EC2 itself are produced with botocore's `Stubber` (a throttling error) and with an
endpoint nothing listens on, since moto always answers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber
from moto import mock_aws

from engine_host.devmode.control_server import LocalLambdaContext, proxy_event
from functions.fleet import handler
from hd_core.adapters.ec2_fleet import Ec2FleetMembership
from hd_core.control_settings import settings
from hd_core.fleet import ASG_NAME_TAG, FleetLookupUnavailable
from hd_core.heartbeat import environment_fingerprint
from hd_core.models import OrgStatus
from tests.integration.functions.conftest import ControlApi

ACCOUNT = "123456789012"  # moto's account
REGION = "us-east-1"
ROLE = "hd-engine-host"
ASG = "hd-engine-fleet"
CODE = "c0de" * 16
PATH = "/v1/fleet/heartbeat"
# The route reads only the organisation from the store: tests of anything else run on one backend.
ONE_BACKEND = pytest.mark.parametrize("control", ["sqlite"], indirect=True)


@dataclass
class Fleet:
    """The control API, a moto EC2 with the fleet's group, and a way to post heartbeats."""

    control: ControlApi
    ec2: Any

    def launch(self, *, asg: str | None = ASG) -> dict[str, Any]:
        tags = [{"ResourceType": "instance", "Tags": [{"Key": ASG_NAME_TAG, "Value": asg}]}] if asg else []
        reply = self.ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, TagSpecifications=tags)
        return dict(reply["Instances"][0])

    def report(self, instance: dict[str, Any], **changes: Any) -> dict[str, Any]:
        """The report an honest engine host on `instance` sends."""
        fingerprint = environment_fingerprint(
            self.control.org_id, instance["InstanceId"], ACCOUNT, REGION, instance["LaunchTime"]
        )
        return {"org_id": self.control.org_id, "host_id": instance["InstanceId"], "fingerprint": fingerprint,
                "code_hash": CODE, "sent_at": datetime.now(UTC).isoformat(), **changes}

    def post(self, body: Any, *, caller: str | None) -> tuple[int, Any]:
        payload = json.dumps(body).encode()
        headers = [("Content-Type", "application/json")]
        request_id = f"req_{uuid.uuid4().hex}"
        event = proxy_event("POST", PATH, PATH, "", {}, headers, payload, "10.0.1.23", request_id)
        if caller is not None:
            event["requestContext"]["identity"]["userArn"] = caller
        response = handler.lambda_handler(event, LocalLambdaContext("hd-fleet", request_id))  # type: ignore[arg-type]
        return response["statusCode"], json.loads(response["body"])


def session_of(instance_id: str, *, role: str = ROLE, account: str = ACCOUNT) -> str:
    """The caller ARN of an instance signing with its instance role."""
    return f"arn:aws:sts::{account}:assumed-role/{role}/{instance_id}"


@pytest.fixture
def fleet(control: ControlApi, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    monkeypatch.setenv("HD_FLEET_ROLE_ARN", f"arn:aws:iam::{ACCOUNT}:role/hd/{ROLE}")
    monkeypatch.setenv("HD_FLEET_ASG_NAME", ASG)
    monkeypatch.setenv("HD_FLEET_ORG_ID", control.org_id)
    monkeypatch.setenv("HD_ALLOWED_CODE_HASHES", f"{'a' * 64},{CODE}")
    monkeypatch.setenv("HD_HEARTBEAT_INTERVAL_SECONDS", "600")
    settings.cache_clear()
    membership = handler.fleet_membership  # kept: a test may replace the module's function
    membership.cache_clear()
    ec2_mock: AbstractContextManager[Any]
    if control.backend == "aws":
        ec2_mock = nullcontext()  # the control fixture's mock_aws is already active
    else:
        request.getfixturevalue("aws_credentials")
        ec2_mock = mock_aws()
    try:
        with ec2_mock:
            yield Fleet(control, boto3.client("ec2", region_name=REGION))
    finally:
        settings.cache_clear()
        membership.cache_clear()


# --- the route ------------------------------------------------------------------------------------


def test_a_running_fleet_instance_with_an_approved_build_is_allowed(fleet: Fleet) -> None:
    instance = fleet.launch()

    status, verdict = fleet.post(fleet.report(instance), caller=session_of(instance["InstanceId"]))

    assert status == 200
    assert verdict["allowed"] is True and verdict["org_active"] is True and verdict["reason"] == "ok"
    assert verdict["next_heartbeat_seconds"] == 600
    assert abs((datetime.fromisoformat(verdict["checked_at"]) - datetime.now(UTC)).total_seconds()) < 60


@ONE_BACKEND
def test_a_negative_verdict_is_a_200_answer_and_is_logged_with_its_reason(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    instance = fleet.launch()

    status, verdict = fleet.post(fleet.report(instance, code_hash="b" * 64), caller=session_of(instance["InstanceId"]))

    assert status == 200
    assert verdict["allowed"] is False and verdict["org_active"] is True
    assert verdict["reason"] == "engine code package is not an approved build"
    negative = [record for record in caplog.records if record.getMessage() == "negative heartbeat verdict"]
    assert [(record.levelname, record.reason, record.host_id) for record in negative] == [  # type: ignore[attr-defined]
        ("WARNING", verdict["reason"], instance["InstanceId"])]


def test_a_suspended_organisation_is_reported_as_not_active(fleet: Fleet) -> None:
    instance = fleet.launch()
    org = fleet.control.services.store.get_org(fleet.control.org_id)
    assert org is not None
    fleet.control.services.store.put_org(replace(org, status=OrgStatus.SUSPENDED))

    status, verdict = fleet.post(fleet.report(instance), caller=session_of(instance["InstanceId"]))

    assert status == 200
    assert verdict["allowed"] is True and verdict["org_active"] is False


@ONE_BACKEND
def test_an_instance_outside_the_fleet_group_is_not_allowed(fleet: Fleet) -> None:
    for instance in (fleet.launch(asg=None), fleet.launch(asg="another-group")):
        status, verdict = fleet.post(fleet.report(instance), caller=session_of(instance["InstanceId"]))

        assert status == 200 and verdict["allowed"] is False
        assert "not a member of the engine fleet's Auto Scaling group" in verdict["reason"]


@ONE_BACKEND
def test_a_stopped_instance_is_not_allowed(fleet: Fleet) -> None:
    instance = fleet.launch()
    fleet.ec2.stop_instances(InstanceIds=[instance["InstanceId"]])

    status, verdict = fleet.post(fleet.report(instance), caller=session_of(instance["InstanceId"]))

    assert status == 200 and verdict["allowed"] is False
    assert "is stopped, not pending or running" in verdict["reason"]


@ONE_BACKEND
def test_an_instance_ec2_does_not_know_is_not_allowed(fleet: Fleet) -> None:
    ghost: dict[str, Any] = {"InstanceId": "i-0123456789abcdef0", "LaunchTime": datetime(2026, 11, 1, tzinfo=UTC)}

    status, verdict = fleet.post(fleet.report(ghost), caller=session_of(ghost["InstanceId"]))

    assert status == 200 and verdict["allowed"] is False
    assert "does not exist in this account and region" in verdict["reason"]


@ONE_BACKEND
def test_a_fingerprint_ec2_does_not_vouch_for_is_not_allowed(fleet: Fleet) -> None:
    instance = fleet.launch()
    elsewhere = environment_fingerprint(fleet.control.org_id, instance["InstanceId"], ACCOUNT, "eu-west-1",
                                        instance["LaunchTime"])

    status, verdict = fleet.post(fleet.report(instance, fingerprint=elsewhere),
                                 caller=session_of(instance["InstanceId"]))

    assert status == 200 and verdict["allowed"] is False
    assert verdict["reason"] == f"unknown environment fingerprint for host {instance['InstanceId']}"


@ONE_BACKEND
@pytest.mark.parametrize(
    ("caller", "problem"),
    [
        ("arn:aws:iam::123456789012:user/alice", "not the engine hosts' instance role"),
        ("arn:aws:sts::123456789012:assumed-role/hd-admin/{id}", "not the engine hosts' instance role"),
        ("arn:aws:sts::210987654321:assumed-role/hd-engine-host/{id}", "not the engine hosts' instance role"),
        ("arn:aws:sts::123456789012:assumed-role/hd-engine-host/i-0aaaaaaaaaaaaaaaa", "not the instance named"),
    ],
)
def test_a_caller_that_is_not_the_hosts_instance_role_session_gets_403(
    fleet: Fleet, caller: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    instance = fleet.launch()
    arn = caller.format(id=instance["InstanceId"])

    status, body = fleet.post(fleet.report(instance), caller=arn)

    assert status == 403
    assert body["error"]["code"] == "HD_ERR_FLEET_CALLER_REJECTED"
    assert problem in body["error"]["message"]
    rejected = [record for record in caplog.records if record.getMessage() == "heartbeat caller rejected"]
    assert [record.caller_arn for record in rejected] == [arn]  # type: ignore[attr-defined]


@ONE_BACKEND
def test_a_request_without_an_iam_identity_is_a_401(fleet: Fleet) -> None:
    instance = fleet.launch()

    status, body = fleet.post(fleet.report(instance), caller=None)

    assert status == 401
    assert body["error"]["code"] == "HD_ERR_FLEET_IDENTITY_MISSING"
    assert "sign it with the engine host's instance role" in body["error"]["message"]


@ONE_BACKEND
def test_an_unconfigured_fleet_rejects_even_the_right_caller(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HD_FLEET_ROLE_ARN", "")
    settings.cache_clear()
    instance = fleet.launch()

    status, body = fleet.post(fleet.report(instance), caller=session_of(instance["InstanceId"]))

    assert status == 403 and body["error"]["code"] == "HD_ERR_FLEET_CALLER_REJECTED"


@ONE_BACKEND
@pytest.mark.parametrize(
    "change",
    [{"host_id": "not-an-instance"}, {"fingerprint": "xyz"}, {"code_hash": "A" * 64},
     {"sent_at": "2026-11-23T12:00:00"}, {"org_id": ""}],
)
def test_a_malformed_report_is_a_422(fleet: Fleet, change: dict[str, str]) -> None:
    instance = fleet.launch()

    status, body = fleet.post(fleet.report(instance, **change), caller=session_of(instance["InstanceId"]))

    assert status == 422 and body["error"]["code"] == "HD_ERR_VALIDATION"


@ONE_BACKEND
def test_ec2_failing_answers_503_for_a_retry(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    instance = fleet.launch()
    client = boto3.client("ec2", region_name=REGION)
    stubber = Stubber(client)
    stubber.add_client_error("describe_instances", service_error_code="RequestLimitExceeded", http_status_code=503)
    monkeypatch.setattr(handler, "fleet_membership", lambda: Ec2FleetMembership(client))

    with stubber:
        status, body = fleet.post(fleet.report(instance), caller=session_of(instance["InstanceId"]))

    assert status == 503
    assert body["error"]["code"] == "HD_ERR_FLEET_LOOKUP_UNAVAILABLE"


@ONE_BACKEND
def test_the_route_is_served_by_the_local_dispatcher_and_refuses_callers_without_iam(fleet: Fleet) -> None:
    instance = fleet.launch()

    reply = fleet.control.call("POST", PATH, fleet.report(instance))  # an API key is no AWS identity

    assert reply.status == 401 and reply.json()["error"]["code"] == "HD_ERR_FLEET_IDENTITY_MISSING"


# --- the EC2 adapter ------------------------------------------------------------------------------


@ONE_BACKEND
def test_the_adapter_reports_ec2s_facts_about_an_instance(fleet: Fleet) -> None:
    launched = fleet.launch()

    found = Ec2FleetMembership(fleet.ec2).describe_instance(launched["InstanceId"])

    assert found is not None
    assert (found.instance_id, found.account_id, found.region, found.state, found.asg_name) == (
        launched["InstanceId"], ACCOUNT, REGION, "running", ASG)
    assert found.launch_time == launched["LaunchTime"] and found.launch_time.utcoffset() is not None


@ONE_BACKEND
def test_the_adapter_answers_none_for_an_unknown_instance(fleet: Fleet) -> None:
    assert Ec2FleetMembership(fleet.ec2).describe_instance("i-0123456789abcdef0") is None


def test_the_adapter_turns_an_ec2_error_into_lookup_unavailable(aws_credentials: None) -> None:
    client = boto3.client("ec2", region_name=REGION)
    stubber = Stubber(client)
    stubber.add_client_error("describe_instances", service_error_code="UnauthorizedOperation", http_status_code=403)

    with stubber, pytest.raises(FleetLookupUnavailable, match="UnauthorizedOperation"):
        Ec2FleetMembership(client).describe_instance("i-0123456789abcdef0")


def test_the_adapter_turns_an_unreachable_ec2_into_lookup_unavailable(aws_credentials: None) -> None:
    config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1, read_timeout=1)
    client = boto3.client("ec2", region_name=REGION, endpoint_url="http://127.0.0.1:9", config=config)

    with pytest.raises(FleetLookupUnavailable, match="DescribeInstances failed"):
        Ec2FleetMembership(client).describe_instance("i-0123456789abcdef0")
