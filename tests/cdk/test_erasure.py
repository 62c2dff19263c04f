"""CDK assertions for GDPR erasure (issue 20): the forget worker, its schedule, its data grants, the 72 h SLA alarm.

The construct is built on a test stack of its own around ControlApi (with every cdk-nag pack): the app's stack
is at CloudFormation's 500-resource limit, so `Erasure` is not composed into `HardenedDuckStack` yet.
"""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk.assertions import Template

from hd_cdk.erasure import PAST_SLA_METRIC, WORKER_SERVICE, Erasure
from tests.cdk.test_control_api import _acknowledge_test_scaffolding, build_test_app

WORKER_HANDLER = "functions.forget.worker.lambda_handler"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    app, stack, api = build_test_app()
    data_key = stack.node.find_child("Data")
    assert isinstance(data_key, kms.Key)
    bucket = s3.Bucket(stack, "StorageData", encryption=s3.BucketEncryption.KMS, encryption_key=data_key,
                       enforce_ssl=True, versioned=True, block_public_access=s3.BlockPublicAccess.BLOCK_ALL)
    _acknowledge_test_scaffolding(bucket, "the real data bucket is the storage construct's, tested on its own")
    topic = sns.Topic(stack, "Alarms", master_key=stack.node.find_child("Logs"))  # type: ignore[arg-type]
    _acknowledge_test_scaffolding(topic, "the real alarm topic is the wipe hook's, tested on its own")
    Erasure(stack, "Erasure", control_api=api, data_bucket=bucket, data_key=data_key,
            table=stack.node.find_child("Table"), alarm_topic=topic)  # type: ignore[arg-type]
    app.synth()  # cdk-nag runs here: an unacknowledged finding raises
    return dict(Template.from_stack(stack).to_json())


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
    assert not {a for a in actions if a.startswith("s3:") and a != "s3:GetBucketLocation"} - {
        "s3:PutObject", "s3:ListBucket", "s3:GetObject"}  # only the audit checkpoints every recorder writes
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
    data_key = next(n for n in _resources(template, "AWS::KMS::Key") if n.startswith("Data"))
    (via_s3,) = [s for s in statements if s["Resource"] == [{"Fn::GetAtt": [data_key, "Arn"]}]
                 or s["Resource"] == {"Fn::GetAtt": [data_key, "Arn"]}
                 if "kms:ViaService" in s.get("Condition", {}).get("StringEquals", {})]
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
