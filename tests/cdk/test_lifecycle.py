"""Issue 19 in the synthesized app: the daily key lifecycle rule, the webhook queue, its consumer and alarms, IAM."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match

from hd_cdk.lifecycle import (
    BATCH_SIZE,
    DELIVERY_TIMEOUT_SECONDS,
    MAX_RECEIVE_COUNT,
    QUEUE_URL_VARIABLE,
)

LIFECYCLE_HANDLER = "functions.key_lifecycle.handler.lambda_handler"
DELIVERY_HANDLER = "functions.webhooks.delivery.lambda_handler"
FEDERATION_REFRESH_HANDLER = "functions.federation_keys.handler.lambda_handler"
CERTIFICATE_HANDLER = "functions.cert_rotation.handler.lambda_handler"
# Every function whose code emits webhook events or re-enqueues deliveries, read from the code (not from
# lifecycle.py): hd_core.webhook_events is called by policy_admin (policies), directory (users), jit, key_admin
# (api_keys) and key_lifecycle (api_keys on demand, the scheduled job); the wipe hook announces instance.wiped.
WIPE_HANDLER = "functions.wipe_hook.handler.lambda_handler"
EMITTING_HANDLERS = {
    *(f"functions.{name}.handler.lambda_handler" for name in ("policies", "users", "jit", "api_keys", "audit")),
    LIFECYCLE_HANDLER, DELIVERY_HANDLER, WIPE_HANDLER,
}


@pytest.fixture(scope="module")
def template(synthesized_app: Any) -> dict[str, Any]:
    result: dict[str, Any] = synthesized_app.template()
    return result


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def _function_by_handler(template: dict[str, Any], handler: str) -> tuple[str, dict[str, Any]]:
    found = [(name, r) for name, r in _resources(template, "AWS::Lambda::Function").items()
             if r["Properties"].get("Handler") == handler]
    assert len(found) == 1, f"{handler}: {[name for name, _ in found]}"
    return found[0]


def _role_of(function: dict[str, Any]) -> str:
    role: str = function["Properties"]["Role"]["Fn::GetAtt"][0]
    return role


def _queue(template: dict[str, Any], *, dead_letter: bool) -> str:
    found = [name for name in _resources(template, "AWS::SQS::Queue")
             if name.startswith("LifecycleWebhook") and ("DeadLetter" in name) == dead_letter]
    assert len(found) == 1, found
    return found[0]


def _key(template: dict[str, Any], prefix: str) -> str:
    found = [name for name in _resources(template, "AWS::KMS::Key") if name.startswith(prefix)]
    assert len(found) == 1, found
    return found[0]


def _statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def _roles_granted(template: dict[str, Any], action: str) -> dict[str, list[Any]]:
    """Role logical id -> resources of every statement that allows `action` (managed and inline policies)."""
    granted: dict[str, list[Any]] = {}
    for kind in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
        for policy in _resources(template, kind).values():
            for statement in _statements(policy):
                if statement["Effect"] == "Allow" and action in _actions(statement):
                    for role in policy["Properties"].get("Roles", []):
                        granted.setdefault(role["Ref"], []).append(statement["Resource"])
    for name, role in _resources(template, "AWS::IAM::Role").items():
        for reference in role["Properties"].get("ManagedPolicyArns", []):
            policy = template["Resources"].get(reference.get("Ref", "") if isinstance(reference, dict) else "")
            for statement in _statements(policy) if policy else []:
                if statement["Effect"] == "Allow" and action in _actions(statement):
                    granted.setdefault(name, []).append(statement["Resource"])
    return granted


def test_the_key_lifecycle_runs_daily_on_its_own_function(template: dict[str, Any], stack_template: Any) -> None:
    function_name, function = _function_by_handler(template, LIFECYCLE_HANDLER)
    rules = [r for r in _resources(template, "AWS::Events::Rule").values()
             if any(t["Arn"] == {"Fn::GetAtt": [function_name, "Arn"]} for t in r["Properties"]["Targets"])]
    assert len(rules) == 1
    assert rules[0]["Properties"]["ScheduleExpression"] == "rate(1 day)"
    assert rules[0]["Properties"]["State"] == "ENABLED"
    target = rules[0]["Properties"]["Targets"][0]
    assert target["RetryPolicy"]["MaximumRetryAttempts"] == 2
    # EventBridge may invoke it, from this rule only.
    stack_template.has_resource_properties("AWS::Lambda::Permission", {
        "Action": "lambda:InvokeFunction", "Principal": "events.amazonaws.com",
        "FunctionName": {"Fn::GetAtt": [function_name, "Arn"]},
        "SourceArn": {"Fn::GetAtt": [Match.string_like_regexp("^LifecycleKeyLifecycleDaily"), "Arn"]},
    })
    properties = function["Properties"]
    # Like every control-plane function: isolated subnets, X-Ray, an encrypted log group, one run at a time.
    assert properties["VpcConfig"]["SubnetIds"], "the lifecycle Lambda runs in the VPC"
    assert properties["TracingConfig"] == {"Mode": "Active"}
    assert properties["ReservedConcurrentExecutions"] == 1
    log_group = template["Resources"][properties["LoggingConfig"]["LogGroup"]["Ref"]]
    assert log_group["Properties"]["KmsKeyId"] == {"Fn::GetAtt": [_key(template, "KeysLogs"), "Arn"]}
    assert properties["Environment"]["Variables"]["HD_STORE"] == "dynamodb"


def test_the_webhook_queue_is_encrypted_tls_only_and_redrives_to_its_dead_letter_queue(
        template: dict[str, Any]) -> None:
    queue, dead_letters = _queue(template, dead_letter=False), _queue(template, dead_letter=True)
    notifications = {"Fn::GetAtt": [_key(template, "KeysNotifications"), "Arn"]}
    for name in (queue, dead_letters):
        assert template["Resources"][name]["Properties"]["KmsMasterKeyId"] == notifications
        policies = [p for p in _resources(template, "AWS::SQS::QueuePolicy").values()
                    if p["Properties"]["Queues"] == [{"Ref": name}]]
        assert len(policies) == 1
        assert {"Effect": "Deny", "Action": "sqs:*", "Principal": {"AWS": "*"},
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                "Resource": {"Fn::GetAtt": [name, "Arn"]}} in _statements(policies[0])
    properties = template["Resources"][queue]["Properties"]
    assert properties["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": [dead_letters, "Arn"]}, "maxReceiveCount": MAX_RECEIVE_COUNT}
    assert MAX_RECEIVE_COUNT == 5
    # A message is never visible to a second consumer while a batch can still be working on it.
    assert properties["VisibilityTimeout"] >= 6 * DELIVERY_TIMEOUT_SECONDS
    assert template["Resources"][dead_letters]["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600


def test_the_delivery_lambda_consumes_the_queue_with_partial_batch_failures(template: dict[str, Any]) -> None:
    function_name, function = _function_by_handler(template, DELIVERY_HANDLER)
    queue = _queue(template, dead_letter=False)
    mappings = [m for m in _resources(template, "AWS::Lambda::EventSourceMapping").values()
                if m["Properties"]["FunctionName"] == {"Ref": function_name}]
    assert len(mappings) == 1
    mapping = mappings[0]
    assert mapping["Properties"]["EventSourceArn"] == {"Fn::GetAtt": [queue, "Arn"]}
    assert mapping["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["Properties"]["BatchSize"] == BATCH_SIZE
    assert function["Properties"]["Timeout"] == DELIVERY_TIMEOUT_SECONDS
    # The mapping is created only after the role may read the queue (Lambda checks it at creation).
    consume = [p for p in mapping["DependsOn"] if "sqs:ReceiveMessage" in str(template["Resources"][p])]
    assert len(consume) == 1
    policy = template["Resources"][consume[0]]
    assert policy["Properties"]["Roles"] == [{"Ref": _role_of(function)}]
    receive = [s for s in _statements(policy) if "sqs:ReceiveMessage" in _actions(s)]
    assert receive == [{"Effect": "Allow", "Resource": {"Fn::GetAtt": [queue, "Arn"]}, "Action": [
        "sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"]}]
    # The sweep: every five minutes, the same function without records.
    sweeps = [r for r in _resources(template, "AWS::Events::Rule").values()
              if any(t["Arn"] == {"Fn::GetAtt": [function_name, "Arn"]} for t in r["Properties"]["Targets"])]
    assert [r["Properties"]["ScheduleExpression"] for r in sweeps] == ["rate(5 minutes)"]


def test_the_delivery_lambda_runs_outside_the_vpc_and_the_others_inside(template: dict[str, Any]) -> None:
    """The isolated subnets have no internet route: the functions that must reach public HTTPS (webhook delivery,
    and the federation key refresh, tested in test_federation.py) are outside, with no network-interface grants;
    every other control-plane Lambda stays in the VPC."""
    assert not _resources(template, "AWS::EC2::NatGateway"), "the design has no NAT: revisit lifecycle.py if so"
    delivery_name, delivery = _function_by_handler(template, DELIVERY_HANDLER)
    assert "VpcConfig" not in delivery["Properties"]
    assert _role_of(delivery) not in _roles_granted(template, "ec2:CreateNetworkInterface")
    for name, function in _resources(template, "AWS::Lambda::Function").items():
        handler = function["Properties"].get("Handler", "")
        if name != delivery_name and handler.startswith("functions.") and handler != FEDERATION_REFRESH_HANDLER:
            assert function["Properties"].get("VpcConfig", {}).get("SubnetIds"), f"{handler} left the VPC"


def test_every_emitting_function_and_only_those_get_the_queue_and_may_send(template: dict[str, Any]) -> None:
    queue = _queue(template, dead_letter=False)
    senders = {_role_of(f) for f in _resources(template, "AWS::Lambda::Function").values()
               if f["Properties"].get("Handler") in EMITTING_HANDLERS}
    assert len(senders) == len(EMITTING_HANDLERS)
    with_url = set()
    for function in _resources(template, "AWS::Lambda::Function").values():
        variables = function["Properties"].get("Environment", {}).get("Variables", {})
        if QUEUE_URL_VARIABLE in variables:
            assert variables[QUEUE_URL_VARIABLE] == {"Ref": queue}
            with_url.add(function["Properties"]["Handler"])
    assert with_url == EMITTING_HANDLERS
    granted = _roles_granted(template, "sqs:SendMessage")
    named = {role: [r for resource in resources for r in (resource if isinstance(resource, list) else [resource])]
             for role, resources in granted.items()}
    to_queue = {role for role, resources in named.items() if {"Fn::GetAtt": [queue, "Arn"]} in resources}
    assert to_queue == senders
    # Nobody may send anywhere else than a queue named by ARN (no wildcard), and the webhooks API sends nothing.
    assert all(isinstance(r, dict) for resources in named.values() for r in resources)
    _, webhooks_api = _function_by_handler(template, "functions.webhooks.handler.lambda_handler")
    assert _role_of(webhooks_api) not in to_queue


def test_successor_secrets_only_under_the_key_prefix_for_the_lifecycle_and_api_keys_functions(
        template: dict[str, Any]) -> None:
    granted = _roles_granted(template, "secretsmanager:PutSecretValue")
    lifecycle = _role_of(_function_by_handler(template, LIFECYCLE_HANDLER)[1])
    api_keys = _role_of(_function_by_handler(template, "functions.api_keys.handler.lambda_handler")[1])
    # The certificate rotation (context hd:privateCaArn) writes the TLS bundle's secret only, nothing under hd/keys/.
    assert granted.pop(_role_of(_function_by_handler(template, CERTIFICATE_HANDLER)[1])) == [
        {"Ref": "TlsCertificateBundleArn"}]
    assert set(granted) == {lifecycle, api_keys}
    for resources in granted.values():
        assert resources == ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:hd/keys/*"]
    # No create, read, describe or delete of those secrets for either role.
    for action in ("secretsmanager:CreateSecret", "secretsmanager:GetSecretValue", "secretsmanager:DeleteSecret",
                   "secretsmanager:*"):
        assert not set(_roles_granted(template, action)) & {lifecycle, api_keys}, action
    # The secret's KMS key only through Secrets Manager, for a secret under the prefix.
    kms_statements = [s for p in _resources(template, "AWS::IAM::ManagedPolicy").values()
                      if lifecycle in [r["Ref"] for r in p["Properties"].get("Roles", [])]
                      for s in _statements(p) if s["Resource"] == "*" and "kms:GenerateDataKey" in _actions(s)]
    assert kms_statements == [{
        "Effect": "Allow", "Action": "kms:GenerateDataKey", "Resource": "*",
        "Condition": {
            "StringEquals": {"kms:ViaService": "secretsmanager.eu-west-1.amazonaws.com"},
            "StringLike": {"kms:EncryptionContext:SecretARN":
                           "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hd/keys/*"},
        },
    }]


def test_dead_letters_and_lifecycle_errors_alarm_to_the_notifications_topic(template: dict[str, Any]) -> None:
    alarms = _resources(template, "AWS::CloudWatch::Alarm")
    topics = [name for name in _resources(template, "AWS::SNS::Topic")]
    assert len(topics) == 1
    dead_letters = _queue(template, dead_letter=True)
    lifecycle_name, _ = _function_by_handler(template, LIFECYCLE_HANDLER)

    def alarm_on(metric: str, dimension: dict[str, Any]) -> dict[str, Any]:
        found = [a["Properties"] for a in alarms.values()
                 if a["Properties"].get("MetricName") == metric and dimension in a["Properties"].get("Dimensions", [])]
        assert len(found) == 1, (metric, dimension)
        return found[0]

    depth = alarm_on("ApproximateNumberOfMessagesVisible",
                     {"Name": "QueueName", "Value": {"Fn::GetAtt": [dead_letters, "QueueName"]}})
    errors = alarm_on("Errors", {"Name": "FunctionName", "Value": {"Ref": lifecycle_name}})
    for alarm in (depth, errors):
        # One message or one error is enough: > 0.
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
        assert alarm["EvaluationPeriods"] == 1
        assert alarm["AlarmActions"] == [{"Ref": topics[0]}]
    assert depth["Namespace"] == "AWS/SQS" and depth["Statistic"] == "Maximum"


# --- JWT signing-key rotation, KMS rotation checks, the job's failure alarms ---------------------------------

TAGGED_KEYS = "arn:aws:kms:eu-west-1:123456789012:key/*"  # this account's keys in this region, by tag only


def _tag_conditions(prefix: str, stack_name: str) -> dict[str, str]:
    return {f"{prefix}/hd:purpose": "jwt-signing", f"{prefix}/hd:deployment": stack_name}


def _policy_granting(template: dict[str, Any], action: str, resource: Any) -> list[dict[str, Any]]:
    """Every (statement, roles) of a managed policy that allows `action` on exactly `resource`."""
    found = []
    for policy in _resources(template, "AWS::IAM::ManagedPolicy").values():
        for statement in _statements(policy):
            if statement["Effect"] == "Allow" and action in _actions(statement) and statement["Resource"] == resource:
                found.append({"statement": statement, "roles": policy["Properties"].get("Roles", [])})
    return found


def test_only_the_lifecycle_job_creates_tagged_jwt_keys_and_retires_only_tagged_ones(
    template: dict[str, Any], synthesized_app: Any,
) -> None:
    lifecycle_name, lifecycle = _function_by_handler(template, LIFECYCLE_HANDLER)
    role = {"Ref": _role_of(lifecycle)}
    stack_name = lifecycle["Properties"]["Environment"]["Variables"]["HD_KMS_KEY_DEPLOYMENT_TAG"]
    assert isinstance(stack_name, str) and stack_name
    [create] = [g for g in _policy_granting(template, "kms:CreateKey", "*")
                if g["statement"]["Condition"]["StringEquals"]["kms:KeySpec"] == "RSA_2048"]
    assert create["roles"] == [role]
    assert create["statement"]["Condition"] == {
        "StringEquals": {**_tag_conditions("aws:RequestTag", stack_name), "kms:KeySpec": "RSA_2048",
                         "kms:KeyUsage": "SIGN_VERIFY", "kms:KeyOrigin": "AWS_KMS"},
        "Bool": {"kms:BypassPolicyLockoutSafetyCheck": "false"},
        "ForAllValues:StringEquals": {"aws:TagKeys": ["hd:purpose", "hd:deployment"]},
    }
    for action in ("kms:TagResource", "kms:DisableKey", "kms:ScheduleKeyDeletion"):
        grants = [g for g in _policy_granting(template, action, TAGGED_KEYS)
                  if "jwt-signing" in json.dumps(g["statement"]["Condition"])]
        assert [g["roles"] for g in grants] == [[role]], action
        conditions = grants[0]["statement"]["Condition"]
        prefix = "aws:RequestTag" if action == "kms:TagResource" else "aws:ResourceTag"
        assert conditions["StringEquals"] == _tag_conditions(prefix, stack_name), action
    [schedule] = _policy_granting(template, "kms:ScheduleKeyDeletion", TAGGED_KEYS)
    assert schedule["statement"]["Condition"]["NumericEquals"] == {"kms:ScheduleKeyDeletionPendingWindowInDays": 30}
    # The stack's first signing key is retired by ARN, with the same 30-day window.
    signing = {"Fn::GetAtt": [_key(template, "KeysSigning"), "Arn"]}
    [first] = _policy_granting(template, "kms:ScheduleKeyDeletion", signing)
    assert first["roles"] == [role]
    # Nobody else may create, disable or delete a key in the whole template.
    for action in ("kms:CreateKey", "kms:DisableKey", "kms:ScheduleKeyDeletion"):
        assert set(_roles_granted(template, action)) == {_role_of(lifecycle)}, action
    assert lifecycle_name


def test_verifiers_and_the_engine_hosts_read_tagged_keys_and_only_signers_sign_with_them(
    template: dict[str, Any],
) -> None:
    _, lifecycle = _function_by_handler(template, LIFECYCLE_HANDLER)
    stack_name = lifecycle["Properties"]["Environment"]["Variables"]["HD_KMS_KEY_DEPLOYMENT_TAG"]
    [verify] = [g for g in _policy_granting(template, "kms:GetPublicKey", TAGGED_KEYS)
                if g["statement"]["Action"] == "kms:GetPublicKey" and "jwt-signing" in json.dumps(g["statement"])]
    assert verify["statement"]["Condition"] == {"StringEquals": _tag_conditions("aws:ResourceTag", stack_name)}
    verifiers = {role["Ref"] for role in verify["roles"]}
    _, auth = _function_by_handler(template, "functions.auth.handler.lambda_handler")
    _, users = _function_by_handler(template, "functions.users.handler.lambda_handler")
    fleet_roles = [name for name, r in _resources(template, "AWS::IAM::Role").items() if name.startswith("EngineFleet")
                   and "ec2.amazonaws.com" in json.dumps(r["Properties"]["AssumeRolePolicyDocument"])]
    assert {_role_of(auth), _role_of(users), *fleet_roles} <= verifiers
    assert _role_of(lifecycle) not in verifiers  # it checks new keys through its own policy
    [sign] = [g for g in _policy_granting(template, "kms:Sign", TAGGED_KEYS)
              if "jwt-signing" in json.dumps(g["statement"]["Condition"])]
    assert [role["Ref"] for role in sign["roles"]] == [_role_of(auth)]
    assert sign["statement"]["Condition"] == {"StringEquals": _tag_conditions("aws:ResourceTag", stack_name)}


def test_the_daily_run_checks_the_rotation_of_the_symmetric_keys_and_alarms_on_failures(
    template: dict[str, Any],
) -> None:
    lifecycle_name, lifecycle = _function_by_handler(template, LIFECYCLE_HANDLER)
    variables = lifecycle["Properties"]["Environment"]["Variables"]
    checked = json.dumps(variables["HD_LIFECYCLE_KMS_ROTATION_KEY_IDS"])
    for key in ("KeysAudit", "KeysControl", "KeysLogs", "KeysNotifications"):
        assert _key(template, key) in checked, key
    assert _key(template, "KeysSigning") not in checked  # asymmetric: rotated by the job itself
    granted = _roles_granted(template, "kms:GetKeyRotationStatus")
    assert set(granted) == {_role_of(lifecycle)}
    alarms = _resources(template, "AWS::CloudWatch::Alarm").values()
    topics = list(_resources(template, "AWS::SNS::Topic"))
    for metric in ("KeyLifecycleFailures", "KmsKeysWithoutRotation"):
        [alarm] = [a["Properties"] for a in alarms if a["Properties"].get("MetricName") == metric]
        assert alarm["Namespace"] == "HardenedDuck"
        assert alarm["Dimensions"] == [{"Name": "service", "Value": "hd-key-lifecycle"}]
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
        assert alarm["AlarmActions"] == [{"Ref": topics[0]}]
    assert lifecycle_name


def test_checkpoint_keys_are_created_tagged_by_the_job_and_signed_with_by_every_iam_recorder(
    template: dict[str, Any],
) -> None:
    _, lifecycle = _function_by_handler(template, LIFECYCLE_HANDLER)
    stack_name = lifecycle["Properties"]["Environment"]["Variables"]["HD_KMS_KEY_DEPLOYMENT_TAG"]
    tags = {"aws:ResourceTag/hd:purpose": "checkpoint-signing", "aws:ResourceTag/hd:deployment": stack_name}
    [create] = [g for g in _policy_granting(template, "kms:CreateKey", "*")
                if g["statement"]["Condition"]["StringEquals"]["kms:KeySpec"] == "ECC_NIST_P256"]
    assert create["roles"] == [{"Ref": _role_of(lifecycle)}]
    assert create["statement"]["Condition"]["StringEquals"]["aws:RequestTag/hd:purpose"] == "checkpoint-signing"
    [sign] = [g for g in _policy_granting(template, "kms:Sign", TAGGED_KEYS)
              if "checkpoint-signing" in json.dumps(g["statement"]["Condition"])]
    assert sign["statement"]["Condition"] == {"StringEquals": tags}
    signers = {role["Ref"] for role in sign["roles"]}
    # Every role that may sign with the stack's first checkpoint key may sign with the rotated ones too, but
    # the shadow replay's, whose trail (functions/shadow/wiring.py) signs with the first key, trusted forever.
    checkpoint_key = {"Fn::GetAtt": [_key(template, "KeysCheckpoint"), "Arn"]}
    first = {role for role, resources in _roles_granted(template, "kms:Sign").items()
             if checkpoint_key in [r for resource in resources
                                   for r in (resource if isinstance(resource, list) else [resource])]}
    assert {role for role in first - signers if not role.startswith("ShadowReplay")} == set()
    assert _role_of(lifecycle) in signers and any(role.startswith("EngineFleet") for role in signers)
    # Nobody may disable or delete a checkpoint key: no grant names that purpose with those actions.
    for action in ("kms:DisableKey", "kms:ScheduleKeyDeletion"):
        assert not [g for g in _policy_granting(template, action, TAGGED_KEYS)
                    if "checkpoint-signing" in json.dumps(g["statement"].get("Condition", {}))]


def test_the_cdk_spells_the_signing_key_tags_as_the_rotation_writes_them() -> None:
    from hd_cdk import lifecycle
    from hd_core import signing_keys
    from hd_core.adapters import kms_keys

    assert (lifecycle.PURPOSE_TAG, lifecycle.JWT_KEY_PURPOSE, lifecycle.DEPLOYMENT_TAG) == (
        signing_keys.PURPOSE_TAG, signing_keys.JWT_KEY_PURPOSE, signing_keys.DEPLOYMENT_TAG)
    assert lifecycle.DELETION_PENDING_DAYS == signing_keys.DEFAULT_PENDING_DAYS
    assert (lifecycle.PURPOSE_TAG, lifecycle.CHECKPOINT_KEY_PURPOSE) == (kms_keys.PURPOSE_TAG,
                                                                       kms_keys.CHECKPOINT_KEY_PURPOSE)
    assert lifecycle.LIFECYCLE_SERVICE == "hd-key-lifecycle"


def test_the_synthesized_daily_rule_deploys_to_eventbridge_as_written(
    template: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rule's schedule and target, as synthesized, accepted by EventBridge (moto) and read back unchanged."""
    import boto3
    from moto import mock_aws

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "eu-west-1")):
        monkeypatch.setenv(name, value)
    function_name, _ = _function_by_handler(template, LIFECYCLE_HANDLER)
    [rule] = [r["Properties"] for r in _resources(template, "AWS::Events::Rule").values()
              if any(t["Arn"] == {"Fn::GetAtt": [function_name, "Arn"]} for t in r["Properties"]["Targets"])]
    [target] = rule["Targets"]
    function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:hd-key-lifecycle"
    with mock_aws():
        events = boto3.client("events")
        events.put_rule(Name="KeyLifecycleDaily", ScheduleExpression=rule["ScheduleExpression"],
                        State=rule["State"], Description=rule["Description"])
        events.put_targets(Rule="KeyLifecycleDaily", Targets=[{
            "Id": target["Id"], "Arn": function_arn,
            "RetryPolicy": {"MaximumRetryAttempts": target["RetryPolicy"]["MaximumRetryAttempts"],
                            "MaximumEventAgeInSeconds": target["RetryPolicy"]["MaximumEventAgeInSeconds"]},
        }])
        described = events.describe_rule(Name="KeyLifecycleDaily")
        assert (described["ScheduleExpression"], described["State"]) == ("rate(1 day)", "ENABLED")
        [deployed] = events.list_targets_by_rule(Rule="KeyLifecycleDaily")["Targets"]
        assert deployed["Arn"] == function_arn
        assert deployed["RetryPolicy"] == {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 6 * 3600}
        with pytest.raises(events.exceptions.ClientError):  # a malformed schedule would have been refused
            events.put_rule(Name="Broken", ScheduleExpression="rate(1 days and a bit)")
