"""WipeHook: the termination rule, the wipe Lambda and its least-privilege role, retries, DLQ and the alarms.

Uses the session's one synthesized fleet stack (tests/cdk/test_engine_fleet.py `fleet_synth`).
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack

from functions.shared.lambda_entry import METRICS_NAMESPACE
from hd_cdk import constants
from hd_cdk.wipe_hook import LIFECYCLE_DETAIL_TYPE, WIPE_ROLE_ACTIONS, _wipe_hook_code
from hd_core.adapters.aws_lifecycle import ERASE_DOCUMENT_DEVICE_PARAMETER, SHELL_DOCUMENT
from hd_core.control_settings import ControlApiSettings
from hd_core.wipe import DEVICE_PATTERN, TERMINATING_TRANSITION, parse_lifecycle_event
from tests.cdk.test_engine_fleet import (
    ACCOUNT,
    REGION,
    FleetSynth,
    actions_of,
    engine_config,
    fleet_synth,
    key_arn,
    ref,
    render,
    resources_for,
    role_statements,
)
from tests.integration.test_wipe_hook import ERASE_DOCUMENT, ERASE_DOCUMENT_NAME

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synth() -> FleetSynth:
    return fleet_synth()


def erase_document(synth: FleetSynth) -> tuple[str, dict[str, Any]]:
    name, resource = synth.one("AWS::SSM::Document", "WipeEraseDocument")
    props: dict[str, Any] = resource["Properties"]
    return name, props


def function(synth: FleetSynth) -> dict[str, Any]:
    _, resource = synth.one("AWS::Lambda::Function", "WipeFunction")
    props: dict[str, Any] = resource["Properties"]
    return props


def termination_event(asg_name: str, hook_name: str) -> dict[str, Any]:
    """An "EC2 Instance-terminate Lifecycle Action" event as EventBridge delivers it."""
    return {
        "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718", "detail-type": LIFECYCLE_DETAIL_TYPE,
        "source": "aws.autoscaling", "account": ACCOUNT, "time": "2026-11-23T10:00:00Z", "region": REGION,
        "resources": [f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:uuid:autoScalingGroupName/{asg_name}"],
        "detail": {
            "LifecycleActionToken": "87654321-4321-4321-4321-210987654321", "AutoScalingGroupName": asg_name,
            "LifecycleHookName": hook_name, "EC2InstanceId": "i-1234567890abcdef0",
            "LifecycleTransition": TERMINATING_TRANSITION, "NotificationMetadata": '{"heartbeat_timeout_seconds":300}',
        },
    }


def matches(pattern: dict[str, Any], event: dict[str, Any]) -> bool:
    """EventBridge matching for patterns of exact values (all this rule uses)."""
    for name, expected in pattern.items():
        if isinstance(expected, dict):
            if not isinstance(event.get(name), dict) or not matches(expected, event[name]):
                return False
        elif event.get(name) not in expected:
            return False
    return True


def rule_pattern(synth: FleetSynth, asg_name: str) -> dict[str, Any]:
    group_name, _ = synth.one("AWS::AutoScaling::AutoScalingGroup")
    _, rule = synth.one("AWS::Events::Rule", "WipeTerminationRule")
    resolved = json.loads(json.dumps(rule["Properties"]["EventPattern"]).replace(json.dumps(ref(group_name)),
                                                                                   json.dumps(asg_name)))
    assert isinstance(resolved, dict)
    return resolved


def test_rule_takes_termination_lifecycle_actions_of_the_fleet_hook_only(synth: FleetSynth) -> None:
    group_name, _ = synth.one("AWS::AutoScaling::AutoScalingGroup")
    _, rule = synth.one("AWS::Events::Rule", "WipeTerminationRule")
    assert rule["Properties"]["EventPattern"] == {
        "source": ["aws.autoscaling"],
        "detail-type": ["EC2 Instance-terminate Lifecycle Action"],
        "detail": {"AutoScalingGroupName": [ref(group_name)],
                   "LifecycleHookName": [constants.WIPE_LIFECYCLE_HOOK_NAME]},
    }


def test_a_termination_of_the_fleet_matches_the_rule_and_parses_for_the_wipe(synth: FleetSynth) -> None:
    pattern = rule_pattern(synth, "hd-fleet")
    event = termination_event("hd-fleet", constants.WIPE_LIFECYCLE_HOOK_NAME)
    assert matches(pattern, event)
    action = parse_lifecycle_event(event)
    assert (action.asg_name, action.hook_name, action.heartbeat_timeout_seconds) == (
        "hd-fleet", constants.WIPE_LIFECYCLE_HOOK_NAME, constants.WIPE_HEARTBEAT_TIMEOUT_SECONDS)


def test_other_groups_and_other_hooks_do_not_reach_the_wipe(synth: FleetSynth) -> None:
    pattern = rule_pattern(synth, "hd-fleet")
    assert not matches(pattern, termination_event("someone-elses-fleet", constants.WIPE_LIFECYCLE_HOOK_NAME))
    assert not matches(pattern, termination_event("hd-fleet", "another-hook"))
    launch = termination_event("hd-fleet", constants.WIPE_LIFECYCLE_HOOK_NAME) | {
        "detail-type": "EC2 Instance-launch Lifecycle Action"}
    assert not matches(pattern, launch)


def test_rule_target_retries_then_dead_letters_to_the_encrypted_queue(synth: FleetSynth) -> None:
    function_name, _ = synth.one("AWS::Lambda::Function", "WipeFunction")
    queue_name, queue = synth.one("AWS::SQS::Queue", "WipeDeadLetters")
    notification_key, _ = synth.one("AWS::KMS::Key", "NotificationKey")
    _, rule = synth.one("AWS::Events::Rule", "WipeTerminationRule")
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [function_name, "Arn"]}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] == constants.WIPE_RETRY_ATTEMPTS
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [queue_name, "Arn"]}}
    assert queue["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [notification_key, "Arn"]}


def test_failed_invocations_are_retried_and_kept_in_the_dead_letter_queue(synth: FleetSynth) -> None:
    queue_name, _ = synth.one("AWS::SQS::Queue", "WipeDeadLetters")
    assert function(synth)["DeadLetterConfig"] == {"TargetArn": {"Fn::GetAtt": [queue_name, "Arn"]}}
    _, invoke = synth.one("AWS::Lambda::EventInvokeConfig", "Wipe")
    assert invoke["Properties"]["MaximumRetryAttempts"] == constants.WIPE_RETRY_ATTEMPTS


def test_function_is_python_312_arm64_in_the_vpc_with_reserved_concurrency(synth: FleetSynth) -> None:
    props = function(synth)
    assert (props["Runtime"], props["Architectures"]) == ("python3.12", ["arm64"])
    assert props["VpcConfig"] == {"SecurityGroupIds": ["sg-0aaaabbbbccccdddd"],
                                  "SubnetIds": ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2"]}
    assert props["ReservedConcurrentExecutions"] > 0
    # The handler's longest path: the erase's command timeout plus SSM's reporting slack (hd_core.wipe).
    assert props["Timeout"] >= constants.WIPE_COMMAND_TIMEOUT_SECONDS + 60


def test_handler_names_the_wipe_hook_module_of_this_repository(synth: FleetSynth) -> None:
    module, _, entry = function(synth)["Handler"].rpartition(".")
    assert (REPO / (module.replace(".", "/") + ".py")).is_file()
    assert callable(getattr(importlib.import_module(module), entry))


def test_code_asset_is_the_functions_package_and_the_layer_puts_hd_core_on_the_lambda_path(tmp_path: Path) -> None:
    """Bundling on (the local copy into python/ needs no Docker); the assets as Lambda will unpack them."""
    stack = Stack(App(outdir=str(tmp_path)), "Assets")
    code, _ = _wipe_hook_code(stack)
    code.bind(stack)
    staged = {path.name: path for path in tmp_path.iterdir() if path.name.startswith("asset.")}
    roots = {name: sorted(child.name for child in path.iterdir()) for name, path in staged.items()}
    assert sorted(roots.values()) == [["functions"], ["python"]]
    function_asset = next(path for name, path in staged.items() if roots[name] == ["functions"])
    layer_asset = next(path for name, path in staged.items() if roots[name] == ["python"])
    assert (function_asset / "functions" / "wipe_hook" / "handler.py").is_file()
    assert (layer_asset / "python" / "hd_core" / "wipe.py").is_file()
    assert not [p for p in (*function_asset.rglob("__pycache__"), *layer_asset.rglob("__pycache__"))]


def test_environment_configures_the_aws_adapters_and_the_engines_cache_device(synth: FleetSynth) -> None:
    data_key_name, _ = synth.one("AWS::KMS::Key", "DataKey")
    document_name, _ = erase_document(synth)
    environment = {name: render(value, {f"{data_key_name}.Arn": key_arn("data"), document_name: ERASE_DOCUMENT_NAME})
                   for name, value in function(synth)["Environment"]["Variables"].items()}
    settings = ControlApiSettings.model_validate(
        {name.removeprefix("HD_").lower(): value for name, value in environment.items()
         if name.startswith("HD_") and not name.startswith("HD_WIPE_")})
    assert (settings.store, settings.keys, settings.audit) == ("dynamodb", "kms", "s3")
    assert (settings.dynamodb_table, settings.audit_bucket) == ("hd-control", "hd-audit-bucket")
    assert settings.kms_checkpoint_key_id == key_arn("checkpoint")
    assert settings.kms_jwt_key_ids == key_arn("signing")  # the key provider insists on one
    # The wipe erases exactly the device the engine encrypts.
    assert environment["HD_WIPE_DEVICE"] == engine_config(synth)["cache_device"] == constants.CACHE_DEVICE


def test_environment_names_the_erase_document_for_the_handler(synth: FleetSynth) -> None:
    document_name, _ = erase_document(synth)
    assert function(synth)["Environment"]["Variables"]["HD_WIPE_DOCUMENT"] == ref(document_name)


def test_wipe_settings_in_the_environment_are_accepted_by_the_handler(
        synth: FleetSynth, monkeypatch: pytest.MonkeyPatch) -> None:
    from functions.wipe_hook.handler import WipeHookSettings

    document_name, _ = erase_document(synth)
    for name, value in function(synth)["Environment"]["Variables"].items():
        if name.startswith("HD_WIPE_"):
            monkeypatch.setenv(name, render(value, {document_name: ERASE_DOCUMENT_NAME}))
    settings = WipeHookSettings()
    assert (settings.device, settings.command_timeout_seconds, settings.heartbeat_timeout_seconds) == (
        constants.CACHE_DEVICE, constants.WIPE_COMMAND_TIMEOUT_SECONDS, constants.WIPE_HEARTBEAT_TIMEOUT_SECONDS)
    assert settings.document == ERASE_DOCUMENT_NAME


# --- the erase document ----------------------------------------------------------------------------------


def test_erase_document_is_a_command_document_for_ec2_instances_with_the_content_the_runtime_is_tested_with(
        synth: FleetSynth) -> None:
    _, props = erase_document(synth)
    assert (props["DocumentType"], props["TargetType"]) == ("Command", "/AWS::EC2::Instance")
    # tests/integration/test_wipe_hook.py creates exactly this document in moto and sends the erase through it.
    assert props["Content"] == ERASE_DOCUMENT


def test_erase_document_runs_only_lukserase_on_its_one_device_parameter(synth: FleetSynth) -> None:
    _, props = erase_document(synth)
    content = props["Content"]
    assert content["schemaVersion"] == "2.2"
    assert list(content["parameters"]) == [ERASE_DOCUMENT_DEVICE_PARAMETER]
    (step,) = content["mainSteps"]
    assert step["action"] == "aws:runShellScript"
    # The engine's drain first (systemd waits for it), then the erase, which runs whatever the stop returned.
    assert step["inputs"]["runCommand"] == ["systemctl stop hd-engine.service || true",
                                            "cryptsetup luksErase --batch-mode {{ device }}"]
    assert constants.WIPE_COMMAND_TIMEOUT_SECONDS >= constants.ENGINE_STOP_TIMEOUT_SECONDS + 30
    # The step's execution timeout is the one the wipe waits for (its polling gives up after it).
    timeout = function(synth)["Environment"]["Variables"]["HD_WIPE_COMMAND_TIMEOUT_SECONDS"]
    assert step["inputs"]["timeoutSeconds"] == int(timeout)


def test_erase_document_device_pattern_is_the_domains_device_pattern(synth: FleetSynth) -> None:
    _, props = erase_document(synth)
    device = props["Content"]["parameters"][ERASE_DOCUMENT_DEVICE_PARAMETER]
    assert (device["type"], device["allowedPattern"]) == ("String", DEVICE_PATTERN)
    assert "default" not in device  # the caller always names the device


@pytest.mark.parametrize(
    "value", ["/dev/nvme1n1; reboot", "/dev/nvme1n1 --force", "/dev/$(curl x)", "/dev/`id`", "/dev/a|b", "/dev/a&b",
              "/dev/../etc/shadow", "/dev/'a'", '/dev/"a"', "/dev/a>b", "/dev/{{x}}", "nvme1n1", "/dev/"])
def test_erase_document_pattern_lets_no_shell_syntax_into_the_interpolated_line(synth: FleetSynth, value: str) -> None:
    _, props = erase_document(synth)
    pattern = props["Content"]["parameters"][ERASE_DOCUMENT_DEVICE_PARAMETER]["allowedPattern"]
    assert pattern.startswith("^") and pattern.endswith("$")  # anchored: the whole value must match
    assert re.search(pattern, value) is None
    assert re.search(pattern, constants.CACHE_DEVICE) is not None


# --- the role --------------------------------------------------------------------------------------------


def test_role_holds_exactly_the_wipe_actions(synth: FleetSynth) -> None:
    statements = role_statements(synth, "WipeRole")
    assert {a for s in statements for a in actions_of(s)} == WIPE_ROLE_ACTIONS
    _, role = synth.one("AWS::IAM::Role", "WipeRole")
    assert "ManagedPolicyArns" not in role["Properties"]  # no AWS-managed policy


def test_send_command_is_limited_to_the_erase_document_and_the_fleets_instances(synth: FleetSynth) -> None:
    group_name, _ = synth.one("AWS::AutoScaling::AutoScalingGroup")
    document_name, _ = erase_document(synth)
    statements = [s for s in role_statements(synth, "WipeRole") if actions_of(s) == ["ssm:SendCommand"]]
    document = [s for s in statements if "Condition" not in s]
    instances = [s for s in statements if "Condition" in s]
    # The erase document only: the role cannot run any other shell on an engine host.
    assert resources_for(document, "ssm:SendCommand") == [
        f"arn:aws:ssm:<AWS::Region>:<AWS::AccountId>:document/<{document_name}>"]
    every_resource = {r for s in role_statements(synth, "WipeRole")
                      for a in actions_of(s) for r in resources_for([s], a)}
    assert not [r for r in every_resource if SHELL_DOCUMENT in r or r.endswith(":document/*")]
    assert resources_for(instances, "ssm:SendCommand") == [
        "arn:aws:ec2:<AWS::Region>:<AWS::AccountId>:instance/*"]
    assert instances[0]["Condition"] == {
        "StringEquals": {"ssm:resourceTag/aws:autoscaling:groupName": ref(group_name)}}


def test_lifecycle_actions_only_on_the_fleet_group(synth: FleetSynth) -> None:
    statements = role_statements(synth, "WipeRole")
    group_name, _ = synth.one("AWS::AutoScaling::AutoScalingGroup")
    expected = ["arn:aws:autoscaling:<AWS::Region>:<AWS::AccountId>:autoScalingGroup:*:"
                f"autoScalingGroupName/<{group_name}>"]
    assert resources_for(statements, "autoscaling:CompleteLifecycleAction") == expected
    assert resources_for(statements, "autoscaling:RecordLifecycleActionHeartbeat") == expected


def test_audit_writes_reach_only_iam_checkpoints_and_the_checkpoint_key(synth: FleetSynth) -> None:
    statements = role_statements(synth, "WipeRole")
    checkpoints = "arn:aws:s3:::hd-audit-bucket/audit/iam-checkpoints/*"
    assert resources_for(statements, "s3:PutObject") == [checkpoints]
    assert resources_for(statements, "s3:GetObject") == [checkpoints]
    (listing,) = [s for s in statements if actions_of(s) == ["s3:ListBucket"]]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["audit/iam-checkpoints/*"]}}
    assert resources_for(statements, "kms:Sign") == [key_arn("checkpoint")]
    assert resources_for(statements, "dynamodb:PutItem") == [f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/hd-control"]
    signing_or_data = {key_arn("signing"), key_arn("data")}
    assert not signing_or_data & {r for s in statements for a in actions_of(s) for r in resources_for([s], a)}


# --- alarms ----------------------------------------------------------------------------------------------


def test_wipe_failed_alarm_fires_on_one_failure_in_five_minutes(synth: FleetSynth) -> None:
    from functions.wipe_hook.handler import SERVICE

    topic_name, _ = synth.one("AWS::SNS::Topic", "WipeAlarms")
    _, alarm = synth.one("AWS::CloudWatch::Alarm", "WipeWipeFailedAlarm")
    props = alarm["Properties"]
    assert (props["Namespace"], props["MetricName"], props["Dimensions"]) == (
        METRICS_NAMESPACE, "WipeFailed", [{"Name": "service", "Value": SERVICE}])
    assert (props["Statistic"], props["Period"], props["EvaluationPeriods"]) == ("Sum", 300, 1)
    assert (props["ComparisonOperator"], props["Threshold"]) == ("GreaterThanOrEqualToThreshold", 1)
    assert props["AlarmActions"] == [ref(topic_name)]


def test_an_exhausted_termination_event_alarms_too(synth: FleetSynth) -> None:
    queue_name, _ = synth.one("AWS::SQS::Queue", "WipeDeadLetters")
    topic_name, _ = synth.one("AWS::SNS::Topic", "WipeAlarms")
    _, alarm = synth.one("AWS::CloudWatch::Alarm", "WipeDeadLetterAlarm")
    props = alarm["Properties"]
    assert props["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue_name, "QueueName"]}}]
    assert (props["Threshold"], props["AlarmActions"]) == (1, [ref(topic_name)])


def test_alarm_topic_is_kms_encrypted_and_refuses_plain_http(synth: FleetSynth) -> None:
    notification_key, _ = synth.one("AWS::KMS::Key", "NotificationKey")
    _, topic = synth.one("AWS::SNS::Topic", "WipeAlarms")
    assert topic["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [notification_key, "Arn"]}
    _, policy = synth.one("AWS::SNS::TopicPolicy", "WipeAlarms")
    (deny,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert (deny["Effect"], deny["Condition"]) == ("Deny", {"Bool": {"aws:SecureTransport": "false"}})


def test_eventbridge_and_cloudwatch_may_use_the_notification_key_for_this_account_only(synth: FleetSynth) -> None:
    _, key = synth.one("AWS::KMS::Key", "NotificationKey")
    services = {}
    for statement in key["Properties"]["KeyPolicy"]["Statement"]:
        service = statement["Principal"].get("Service")
        if service:
            services[service] = statement
            assert sorted(actions_of(statement)) == ["kms:Decrypt", "kms:GenerateDataKey"]
            assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": ref("AWS::AccountId")}}
    assert set(services) == {"events.amazonaws.com", "cloudwatch.amazonaws.com"}
