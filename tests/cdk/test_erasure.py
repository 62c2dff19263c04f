"""CDK assertions for GDPR erasure (issue 20) on the real app: the forget worker, its schedule, its data grants,
its pyarrow layer, the 72 h SLA alarm."""

from __future__ import annotations

from typing import Any

import pytest

from hd_cdk.erasure import PAST_SLA_METRIC, WORKER_SERVICE
from hd_cdk.nag import acknowledgments
from tests.cdk.conftest import SynthesizedApp

WORKER_HANDLER = "functions.forget.worker.lambda_handler"


@pytest.fixture(scope="module")
def template(synthesized_app: SynthesizedApp) -> dict[str, Any]:
    """The app's own stack (the shared session synth, with every cdk-nag pack), where Erasure is composed."""
    return synthesized_app.template()


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def _worker(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    (found,) = [(name, r) for name, r in _resources(template, "AWS::Lambda::Function").items()
                if r["Properties"].get("Handler") == WORKER_HANDLER]
    return found


def _statements_of_role(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """Every statement of the managed policies attached to `role` (by the policy's Roles or the role's list)."""
    attached = {arn["Ref"] for arn in template["Resources"][role]["Properties"].get("ManagedPolicyArns", [])
                if isinstance(arn, dict) and "Ref" in arn}
    return [statement for name, policy in _resources(template, "AWS::IAM::ManagedPolicy").items()
            if name in attached or {"Ref": role} in policy["Properties"].get("Roles", [])
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]]


def _created_data_key_condition(template: dict[str, Any]) -> str:
    (name,) = [n for n in template["Conditions"] if n.startswith("KeysCreateDataKey")]
    return name


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return actions if isinstance(actions, list) else [actions]


def test_the_worker_sweeps_pending_requests_every_five_minutes_in_the_vpc_one_at_a_time(
        template: dict[str, Any]) -> None:
    name, worker = _worker(template)
    rules = [r for r in _resources(template, "AWS::Events::Rule").values()
             if any(t["Arn"] == {"Fn::GetAtt": [name, "Arn"]} for t in r["Properties"]["Targets"])]
    assert [r["Properties"]["ScheduleExpression"] for r in rules] == ["rate(5 minutes)"]
    properties = worker["Properties"]
    assert properties["VpcConfig"]["SubnetIds"]
    assert properties["ReservedConcurrentExecutions"] == 1
    assert properties["TracingConfig"] == {"Mode": "Active"}
    variables = properties["Environment"]["Variables"]
    data_bucket = next(n for n in _resources(template, "AWS::S3::Bucket") if n.startswith("StorageData"))
    assert variables["HD_ERASURE_DATA_URL"] == {"Fn::Join": ["", ["s3://", {"Ref": data_bucket}, "/"]]}
    assert variables["HD_ERASURE_VERSION_RETENTION_HOURS"] == "0"


def test_the_api_function_gets_the_same_data_location_but_no_data_access(template: dict[str, Any]) -> None:
    (api,) = [r for r in _resources(template, "AWS::Lambda::Function").values()
              if r["Properties"].get("Handler") == "functions.forget.handler.lambda_handler"]
    assert "HD_ERASURE_DATA_URL" in api["Properties"]["Environment"]["Variables"]
    role = api["Properties"]["Role"]["Fn::GetAtt"][0]
    actions = {action for statement in _statements_of_role(template, role) for action in _actions(statement)}
    # Only the audit checkpoints every recorder writes, and the replication check of region pinning (every
    # control-plane role reads the buckets' replication configuration to refuse cross-region copies).
    assert {a for a in actions if a.startswith("s3:") and a != "s3:GetBucketLocation"} == {
        "s3:PutObject", "s3:ListBucket", "s3:GetObject", "s3:GetReplicationConfiguration"}
    assert "s3:DeleteObjectVersion" not in actions and "lambda:InvokeFunction" not in actions


def test_only_the_worker_may_delete_object_versions_and_only_of_the_data_bucket(template: dict[str, Any]) -> None:
    _, worker = _worker(template)
    role = worker["Properties"]["Role"]["Fn::GetAtt"][0]
    statements = _statements_of_role(template, role)
    data_bucket = next(n for n in _resources(template, "AWS::S3::Bucket") if n.startswith("StorageData"))
    (deleting,) = [s for s in statements if "s3:DeleteObjectVersion" in _actions(s)]
    assert sorted(_actions(deleting)) == ["s3:DeleteObjectVersion", "s3:GetObject", "s3:PutObject"]
    assert deleting["Resource"] == {"Fn::Join": ["", [{"Fn::GetAtt": [data_bucket, "Arn"]}, "/*"]]}
    assert not any("s3:DeleteObject" in _actions(s) for s in statements)
    # The data key is the one the stack creates, or the customer's (parameter DataKeyArn) when given.
    data_key = next(n for n in _resources(template, "AWS::KMS::Key") if n.startswith("KeysData"))
    created_or_given = {"Fn::If": [_created_data_key_condition(template), {"Fn::GetAtt": [data_key, "Arn"]},
                                   {"Ref": "DataKeyArn"}]}
    # CDK merges it with the audit key's statement of the same actions and condition (in the role's one policy).
    (via_s3,) = [s for s in statements if "kms:ViaService" in s.get("Condition", {}).get("StringEquals", {})
                 and created_or_given in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])]
    assert sorted(_actions(via_s3)) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert str(via_s3["Condition"]["StringEquals"]["kms:ViaService"]).startswith("s3.")
    sealing = [s for s in statements if s.get("Condition", {}).get("StringEquals", {}).get(
        "kms:EncryptionContext:purpose") == "forget-subject"]
    assert sealing, "the worker opens sealed subject ids under their own encryption context only"


def test_a_request_past_its_72_hour_sla_alarms_to_the_notifications_topic(template: dict[str, Any]) -> None:
    alarms = [a["Properties"] for a in _resources(template, "AWS::CloudWatch::Alarm").values()
              if a["Properties"].get("MetricName") == PAST_SLA_METRIC]
    assert len(alarms) == 1
    (alarm,) = alarms
    assert alarm["Namespace"] == "HardenedDuck"
    assert alarm["Dimensions"] == [{"Name": "service", "Value": WORKER_SERVICE}]
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    assert alarm["TreatMissingData"] == "notBreaching"
    assert len(alarm["AlarmActions"]) == 1
    topic = alarm["AlarmActions"][0]["Ref"]
    assert template["Resources"][topic]["Type"] == "AWS::SNS::Topic"


def test_only_the_worker_carries_the_pyarrow_layer(template: dict[str, Any]) -> None:
    layers = {name: r["Properties"] for name, r in _resources(template, "AWS::Lambda::LayerVersion").items()}
    (arrow,) = [name for name, layer in layers.items() if layer.get("Description", "").startswith("pyarrow")]
    carrying = [r["Properties"].get("Handler") for r in _resources(template, "AWS::Lambda::Function").values()
                if {"Ref": arrow} in r["Properties"].get("Layers", [])]
    assert carrying == [WORKER_HANDLER]
    _, worker = _worker(template)
    assert len(worker["Properties"]["Layers"]) == 3  # hd_core, the control plane's dependencies, pyarrow


def test_the_fleet_function_may_write_only_the_registry_of_hosts_whose_heartbeats_it_accepts(
        template: dict[str, Any]) -> None:
    """GDPR erasure of writable tables waits for every live host: the fleet function records them (`HOST#<id>`
    items), and writes no other entity of the control table (beyond the pepper every read-only function may make)."""
    (fleet,) = [r for r in _resources(template, "AWS::Lambda::Function").values()
                if r["Properties"].get("Handler") == "functions.fleet.handler.lambda_handler"]
    role = fleet["Properties"]["Role"]["Fn::GetAtt"][0]
    statements = _statements_of_role(template, role)
    writes = [s for s in statements if {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                                        "dynamodb:BatchWriteItem"} & set(_actions(s))]
    # Every write is fenced by its partition keys: the pepper setting (read-only functions) and the host registry.
    assert all("dynamodb:LeadingKeys" in next(iter(s["Condition"].values())) for s in writes)
    (registry,) = [s for s in writes if "HOST#*" in str(s["Condition"])]
    assert _actions(registry) == ["dynamodb:PutItem"]
    assert registry["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["HOST#*"]}}
    table = next(n for n in _resources(template, "AWS::DynamoDB::Table") if n.startswith("StorageControl"))
    assert registry["Resource"] == {"Fn::GetAtt": [table, "Arn"]}


def test_the_worker_may_describe_instances_to_know_a_silent_fleet_host_gone(
        template: dict[str, Any], synthesized_app: SynthesizedApp) -> None:
    """A forget request waits for a host that stopped heartbeating until EC2 says its instance is gone."""
    _, worker = _worker(template)
    role = worker["Properties"]["Role"]["Fn::GetAtt"][0]
    (describe,) = [s for s in _statements_of_role(template, role) if "ec2:DescribeInstances" in _actions(s)]
    # CDK merges it with the other actions that have no resource-level permissions (X-Ray, the VPC's ENIs).
    assert describe["Resource"] == "*" and "Condition" not in describe
    reasons = [ack.reason for ack in acknowledgments(synthesized_app.app)
               if ack.path.endswith("ForgetWorkerPolicy") and ack.rule_id == "AwsSolutions-IAM5[Resource::*]"]
    assert reasons and all("ec2:DescribeInstances" in reason and "forget worker" in reason for reason in reasons)
