"""Shadow replay in the CDK app: the one definition, logging, IAM scoped to the prefix and the state machine,
the network paths, the alarm. Uses the session's one synthesized app (tests/cdk/conftest.py), whose context
places the comparison PostgreSQL at 10.30.0.0/24 port 6432."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aws_cdk import App
from aws_cdk.assertions import Match, Template

from functions.openapi import FUNCTION_MODULES
from hd_cdk import constants
from hd_cdk.packaging import SHADOW_REQUIREMENTS
from hd_cdk.shadow import REPLAY_FUNCTIONS, SHARED_FUNCTIONS, ComparisonNetwork, comparison_network
from hd_core.adapters.aws_shadow import SAMPLE_MASK_TABLE_ACCESS
from hd_core.shadow import state_machine
from tests.cdk.conftest import TEST_CONTEXT, SynthesizedApp

SECRET_PATTERN = f"arn:aws:secretsmanager:eu-west-1:123456789012:secret:{constants.SHADOW_SECRET_PREFIX}*"
COMPARISON_CIDR = TEST_CONTEXT[constants.CONTEXT_SHADOW_COMPARISON_CIDRS][0]
COMPARISON_PORT = TEST_CONTEXT[constants.CONTEXT_SHADOW_COMPARISON_PORT]


@pytest.fixture(scope="module")
def resources(synthesized_app: SynthesizedApp) -> dict[str, dict[str, Any]]:
    """The main stack's resources (logical id -> resource)."""
    resources: dict[str, dict[str, Any]] = synthesized_app.template()["Resources"]
    return resources


def of_type(resources: dict[str, dict[str, Any]], kind: str, prefix: str = "") -> dict[str, dict[str, Any]]:
    return {name: r for name, r in resources.items() if r["Type"] == kind and name.startswith(prefix)}


def one(found: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    assert len(found) == 1, sorted(found)
    return next(iter(found.items()))


@pytest.fixture(scope="module")
def functions(resources: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Logical name of the definition -> logical id of its Lambda, found by handler."""
    by_handler = {r["Properties"]["Handler"]: name for name, r in of_type(resources, "AWS::Lambda::Function").items()}
    return {name: by_handler[spec.handler] for name, spec in REPLAY_FUNCTIONS.items()}


@pytest.fixture(scope="module")
def machine(resources: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return one(of_type(resources, "AWS::StepFunctions::StateMachine"))


def statements(resources: dict[str, dict[str, Any]], policy_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = resources[policy_id]["Properties"]["PolicyDocument"]["Statement"]
    return found


def role_policies(resources: dict[str, dict[str, Any]], role_id: str) -> list[str]:
    """The managed policies (logical ids) attached to a role, from either side of the attachment."""
    attached = [ref["Ref"] for ref in resources[role_id]["Properties"].get("ManagedPolicyArns", []) if "Ref" in ref]
    attached += [name for name, r in of_type(resources, "AWS::IAM::ManagedPolicy").items()
                 if {"Ref": role_id} in r["Properties"].get("Roles", [])]
    return attached


def function_statements(resources: dict[str, dict[str, Any]], function_id: str) -> list[dict[str, Any]]:
    role_id = resources[function_id]["Properties"]["Role"]["Fn::GetAtt"][0]
    assert not of_type(resources, "AWS::IAM::Policy") or not any(
        {"Ref": role_id} in r["Properties"].get("Roles", []) for r in of_type(resources, "AWS::IAM::Policy").values()
    ), "no inline policy may reach a shadow role"
    return [s for policy in role_policies(resources, role_id) for s in statements(resources, policy)]


def listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def actions_on(found: list[dict[str, Any]], action: str) -> list[Any]:
    """Every resource `action` is allowed on in these statements."""
    return [resource for s in found if s["Effect"] == "Allow" and action in listed(s["Action"])
            for resource in listed(s["Resource"])]


def rendered(node: Any) -> str:
    """A Fn::Join'ed string with each GetAtt/Ref written as <LogicalId[.Attr]> (to compare documents)."""
    if isinstance(node, str):
        return node
    if "Fn::Join" in node:
        separator, parts = node["Fn::Join"]
        return str(separator).join(rendered(part) for part in parts)
    if "Fn::GetAtt" in node:
        return "<{}.{}>".format(*node["Fn::GetAtt"])
    if "Ref" in node:
        return f"<{node['Ref']}>"
    return json.dumps(node, sort_keys=True)  # other intrinsics (Fn::If): compared as they are


def iter_statements(resources: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every IAM statement of every policy in the template, with its policy's logical id."""
    for name, resource in resources.items():
        if resource["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
            for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
                yield name, statement
        if resource["Type"] == "AWS::IAM::Role":
            for policy in resource["Properties"].get("Policies", []):
                for statement in policy["PolicyDocument"]["Statement"]:
                    yield name, statement


# --- the state machine --------------------------------------------------------------------------------


def test_state_machine_runs_the_one_definition_with_the_lambda_arns(
    machine: tuple[str, dict[str, Any]], functions: dict[str, str]
) -> None:
    _, resource = machine
    document = json.loads(rendered(resource["Properties"]["DefinitionString"]))
    # EndReplay runs in WriteReport's Lambda (the same grants; the handler tells the events apart).
    assert SHARED_FUNCTIONS == {state_machine.END_REPLAY: state_machine.WRITE_REPORT}
    arns = {name: f"<{functions[SHARED_FUNCTIONS.get(name, name)]}.Arn>" for name in state_machine.FUNCTIONS}
    assert document == state_machine.definition(arns)


def test_state_machine_logs_every_event_but_never_execution_data_to_an_encrypted_group(
    stack_template: Template, machine: tuple[str, dict[str, Any]], resources: dict[str, dict[str, Any]]
) -> None:
    _, resource = machine
    stack_template.has_resource_properties("AWS::StepFunctions::StateMachine", {
        "StateMachineType": "STANDARD",
        "TracingConfiguration": {"Enabled": True},
        "LoggingConfiguration": {
            "Level": "ALL",
            "IncludeExecutionData": False,
            "Destinations": [{"CloudWatchLogsLogGroup": {"LogGroupArn": {"Fn::GetAtt": [Match.any_value(), "Arn"]}}}],
        },
    })
    destination = resource["Properties"]["LoggingConfiguration"]["Destinations"][0]
    group = resources[destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]]["Properties"]
    assert group["KmsKeyId"] == {"Fn::GetAtt": [_logs_key(resources), "Arn"]}
    assert group["LogGroupName"].startswith("/aws/vendedlogs/states/")
    assert group["RetentionInDays"] == 365


def test_state_machine_role_invokes_the_three_lambdas_and_nothing_else(
    resources: dict[str, dict[str, Any]], machine: tuple[str, dict[str, Any]], functions: dict[str, str]
) -> None:
    role_id = machine[1]["Properties"]["RoleArn"]["Fn::GetAtt"][0]
    trust = resources[role_id]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "states.amazonaws.com"}]
    found = [s for p in role_policies(resources, role_id) for s in statements(resources, p)]
    invoked = actions_on(found, "lambda:InvokeFunction")
    assert sorted(map(rendered, invoked)) == sorted(f"<{lid}.Arn>" for lid in functions.values())
    for statement in found:  # '*' only for what has no resource-level permissions
        if "*" in listed(statement["Resource"]):
            assert all(a.startswith(("logs:", "xray:")) for a in listed(statement["Action"])), statement
            assert not any(a.startswith(("logs:PutLogEvents", "lambda:")) for a in listed(statement["Action"]))


def test_failed_or_timed_out_executions_alarm_to_the_notifications_topic(
    resources: dict[str, dict[str, Any]], machine: tuple[str, dict[str, Any]], functions: dict[str, str]
) -> None:
    _, alarm = one(of_type(resources, "AWS::CloudWatch::Alarm", "ShadowReplayExecutionsFailed"))
    props = alarm["Properties"]
    watched = {m["MetricStat"]["Metric"]["MetricName"]: m["MetricStat"]["Metric"]
               for m in props["Metrics"] if "MetricStat" in m}
    assert set(watched) == {"ExecutionsFailed", "ExecutionsTimedOut", "Errors"}
    for name, metric in watched.items():
        if name == "Errors":  # WriteReport's: a report or a replay's end (EndReplay, also from the rule) failed
            assert metric["Namespace"] == "AWS/Lambda"
            assert metric["Dimensions"] == [{"Name": "FunctionName",
                                             "Value": {"Ref": functions[state_machine.WRITE_REPORT]}}]
            continue
        assert metric["Namespace"] == "AWS/States"
        assert metric["Dimensions"] == [{"Name": "StateMachineArn", "Value": {"Ref": machine[0]}}]
    assert (props["Threshold"], props["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    (topic,) = props["AlarmActions"]
    assert resources[topic["Ref"]]["Type"] == "AWS::SNS::Topic"
    assert resources[topic["Ref"]]["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [_notifications_key(resources),
                                                                                     "Arn"]}


# --- the Lambdas ---------------------------------------------------------------------------------------


def test_lambdas_run_in_the_isolated_subnets_traced_with_encrypted_logs(
    resources: dict[str, dict[str, Any]], functions: dict[str, str]
) -> None:
    isolated = sorted(name for name, r in of_type(resources, "AWS::EC2::Subnet").items()
                      if not r["Properties"].get("MapPublicIpOnLaunch", False))
    lambda_sg = _security_group(resources, "NetworkLambdaSg")
    replay_sg = _security_group(resources, "ShadowReplayReplaySg")
    layer = one(of_type(resources, "AWS::Lambda::LayerVersion", "ShadowReplayDependencyLayer"))[0]
    for name, lid in functions.items():
        props = resources[lid]["Properties"]
        vpc = props["VpcConfig"]
        assert sorted(s["Ref"] for s in vpc["SubnetIds"]) == isolated, name
        groups = [g["Fn::GetAtt"][0] for g in vpc["SecurityGroupIds"]]
        expected = [lambda_sg, replay_sg] if REPLAY_FUNCTIONS[name].reaches_databases else [lambda_sg]
        assert groups == expected, name
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert props["ReservedConcurrentExecutions"] == REPLAY_FUNCTIONS[name].reserved_concurrency
        assert {"Ref": layer} in props["Layers"]
        log_group = resources[props["LoggingConfig"]["LogGroup"]["Ref"]]["Properties"]
        assert log_group["KmsKeyId"] == {"Fn::GetAtt": [_logs_key(resources), "Arn"]}
    assert REPLAY_FUNCTIONS[state_machine.REPLAY_BATCH].reaches_databases
    # As many batches may run at once as the API lets a replay ask for.
    assert REPLAY_FUNCTIONS[state_machine.REPLAY_BATCH].reserved_concurrency == state_machine.MAX_CONCURRENCY


def test_replay_batch_reaches_the_engine_nlb_and_the_comparison_database_only(
    resources: dict[str, dict[str, Any]]
) -> None:
    replay_sg = _security_group(resources, "ShadowReplayReplaySg")
    nlb_sg = _security_group(resources, "EngineFleetNlbSecurityGroup")
    group = resources[replay_sg]["Properties"]
    inline = [(r.get("CidrIp"), r.get("DestinationSecurityGroupId"), r["FromPort"], r["ToPort"])
              for r in group.get("SecurityGroupEgress", []) if r.get("CidrIp") != "255.255.255.255/32"]
    separate = [(r["Properties"].get("CidrIp"), r["Properties"].get("DestinationSecurityGroupId"),
                 r["Properties"]["FromPort"], r["Properties"]["ToPort"])
                for r in of_type(resources, "AWS::EC2::SecurityGroupEgress").values()
                if r["Properties"]["GroupId"] == {"Fn::GetAtt": [replay_sg, "GroupId"]}]
    pgwire = constants.PGWIRE_PORT
    assert sorted(inline + separate, key=str) == sorted([
        (COMPARISON_CIDR, None, COMPARISON_PORT, COMPARISON_PORT),
        (None, {"Fn::GetAtt": [nlb_sg, "GroupId"]}, pgwire, pgwire),
    ], key=str)
    ingress = [r["Properties"] for r in of_type(resources, "AWS::EC2::SecurityGroupIngress").values()
               if r["Properties"].get("SourceSecurityGroupId") == {"Fn::GetAtt": [replay_sg, "GroupId"]}]
    assert [(i["GroupId"], i["FromPort"], i["ToPort"]) for i in ingress] == [
        ({"Fn::GetAtt": [nlb_sg, "GroupId"]}, pgwire, pgwire)]


def test_replay_batch_is_told_where_the_engine_is(
    resources: dict[str, dict[str, Any]], functions: dict[str, str]
) -> None:
    """functions/shadow/wiring.py ShadowSettings: the bucket and the engine NLB (each task builds the services)."""
    nlb = one(of_type(resources, "AWS::ElasticLoadBalancingV2::LoadBalancer"))[0]
    bucket = one(of_type(resources, "AWS::S3::Bucket", "StorageData"))[0]
    for name, lid in functions.items():
        variables = resources[lid]["Properties"]["Environment"]["Variables"]
        assert variables["HD_SHADOW_ENGINE_HOST"] == {"Fn::GetAtt": [nlb, "DNSName"]}, name
        assert variables["HD_SHADOW_ENGINE_PORT"] == str(constants.PGWIRE_PORT)
        assert variables["HD_SHADOW_BUCKET"] == {"Ref": bucket}
        # The roots that verify the engine's certificate, from context (verify-full is the replay's default).
        assert variables["HD_SHADOW_ENGINE_CA_FILE"] == TEST_CONTEXT[constants.CONTEXT_SHADOW_ENGINE_CA_FILE]
        assert "HD_SHADOW_STATE_MACHINE_ARN" not in variables  # only the API starts executions


# --- IAM: secrets and data --------------------------------------------------------------------------------


def test_only_replay_batch_reads_shadow_secrets_and_only_write_report_deletes_them(
    resources: dict[str, dict[str, Any]], functions: dict[str, str]
) -> None:
    for name, lid in functions.items():
        found = function_statements(resources, lid)
        readable = actions_on(found, "secretsmanager:GetSecretValue")
        if name == state_machine.REPLAY_BATCH:
            assert list(map(rendered, readable)) == [SECRET_PATTERN]
            (decrypt,) = [s for s in found if "kms:Decrypt" in listed(s["Action"])
                          and "kms:ViaService" in json.dumps(s.get("Condition", {}))
                          and "secretsmanager" in json.dumps(s["Condition"])]
            assert decrypt["Condition"]["StringLike"] == {"kms:EncryptionContext:SecretARN": SECRET_PATTERN}
            assert decrypt["Resource"] == _data_key_arn(resources)
        else:
            assert readable == [], name
        # WriteReport deletes the replay's own secrets when it ends: under the prefix, a 7-day window only.
        deletable = [s for s in found if "secretsmanager:DeleteSecret" in listed(s["Action"])]
        if name == state_machine.WRITE_REPORT:
            (delete,) = deletable
            assert listed(delete["Action"]) == ["secretsmanager:DeleteSecret"]
            assert list(map(rendered, listed(delete["Resource"]))) == [SECRET_PATTERN]
            assert delete["Condition"] == {"NumericEquals": {"secretsmanager:RecoveryWindowInDays": 7}}
        else:
            assert deletable == [], name
        assert not any(a.startswith("secretsmanager:") and a not in ("secretsmanager:GetSecretValue",
                                                                     "secretsmanager:DeleteSecret")
                       for s in found for a in listed(s["Action"])), name
    readers = {policy for policy, s in iter_statements(resources)
               if any(rendered(r) == SECRET_PATTERN for r in listed(s["Resource"]))}
    allowed = {p for lid in functions.values()
               for p in role_policies(resources, resources[lid]["Properties"]["Role"]["Fn::GetAtt"][0])}
    assert readers <= allowed | _api_policies(resources)


def test_every_lambda_may_describe_the_data_key_its_region_pin_asks_about(
    resources: dict[str, dict[str, Any]], functions: dict[str, str]
) -> None:
    # A customer's multi-region (`mrk-`) data key is placed by DescribeKey; without it the pin fails closed.
    data_key = _data_key_arn(resources)
    for name, lid in functions.items():
        described = [s for s in function_statements(resources, lid)
                     if "kms:DescribeKey" in listed(s["Action"]) and data_key in listed(s["Resource"])]
        assert described and all("Condition" not in s for s in described), name


def test_lambdas_touch_the_data_bucket_only_under_the_shadow_prefix_and_never_delete_objects(
    resources: dict[str, dict[str, Any]], functions: dict[str, str]
) -> None:
    bucket = one(of_type(resources, "AWS::S3::Bucket", "StorageData"))[0]
    for name, lid in functions.items():
        found = function_statements(resources, lid)
        if name == state_machine.WRITE_REPORT:  # the key's revocation, asserted statement by statement below
            found = [s for s in found if _normalised(s) not in _revocation_statements(resources)]
        if name == state_machine.REPLAY_BATCH:  # the mask rules' reads, asserted statement by statement below
            found = [s for s in found if _normalised(s) not in _sample_mask_statements(resources)]
        s3_resources = {rendered(r) for s in found if any(a.startswith("s3:") for a in listed(s["Action"]))
                        for r in listed(s["Resource"])}
        assert s3_resources == {f"<{bucket}.Arn>", f"<{bucket}.Arn>/{constants.SHADOW_DATA_PREFIX}*"}, name
        (listing,) = [s for s in found if "s3:ListBucket" in listed(s["Action"])]
        assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{constants.SHADOW_DATA_PREFIX}*"]}}
        actions = {a for s in found for a in listed(s["Action"])}
        if name == state_machine.WRITE_REPORT:  # the replay's own secrets, when it ends (asserted above)
            actions.discard("secretsmanager:DeleteSecret")
        assert not {a for a in actions if a.endswith("*")
                    or (a.startswith(("s3:", "secretsmanager:", "kms:")) and ("Delete" in a or "Schedule" in a))}, name
        assert not any(a.startswith(("dynamodb:", "states:", "lambda:")) for a in actions), name


def _normalised(statement: dict[str, Any]) -> dict[str, Any]:
    """A statement with its actions and resources as sorted lists (CDK sorts, unwraps and, minimizing policies,
    merges them as it likes)."""
    return {**statement, "Action": sorted(listed(statement["Action"])),
            "Resource": sorted(listed(statement["Resource"]), key=json.dumps)}


def _revocation_statements(resources: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """WriteReport's grants for revoking the replay's key (and placing what it touches), as `ShadowReplay` must
    write them."""
    table = one(of_type(resources, "AWS::DynamoDB::Table", "StorageControl"))[0]
    audit = one(of_type(resources, "AWS::S3::Bucket", "StorageAudit"))[0]
    data = one(of_type(resources, "AWS::S3::Bucket", "StorageData"))[0]
    control_key = one(of_type(resources, "AWS::KMS::Key", "KeysControl"))[0]
    checkpoint_key = one(of_type(resources, "AWS::KMS::Key", "KeysCheckpoint"))[0]
    audit_key = one(of_type(resources, "AWS::KMS::Key", "KeysAudit"))[0]
    table_arn = {"Fn::GetAtt": [table, "Arn"]}

    def leading(*patterns: str) -> dict[str, Any]:
        return {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": list(patterns)}}

    def allow(actions: list[str], resource: Any, condition: dict[str, Any] | None = None) -> dict[str, Any]:
        return _normalised({"Action": actions, "Effect": "Allow", "Resource": resource,
                            **({"Condition": condition} if condition else {})})

    via = {"dynamodb": {"StringEquals": {"kms:ViaService": "dynamodb.eu-west-1.amazonaws.com"}},
           "s3": {"StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}}}
    # Its region pin places the control table and the audit bucket its control settings name (no data access);
    # minimizing policies merges the bucket's statement into the data bucket's, which every shadow function has.
    bucket_locations = allow(["s3:GetBucketLocation", "s3:GetReplicationConfiguration"],
                             [{"Fn::GetAtt": [data, "Arn"]}, {"Fn::GetAtt": [audit, "Arn"]}])
    return [
        bucket_locations,
        allow(["dynamodb:GetItem", "dynamodb:UpdateItem"], table_arn, leading("APIKEY#*")),
        allow(["dynamodb:Query", "dynamodb:PutItem"], table_arn, leading("CHAIN#*")),
        allow(["dynamodb:Query"], {"Fn::Join": ["", [table_arn, "/index/GSI1"]]}, leading("WEBHOOKS#*")),
        allow(["dynamodb:PutItem"], table_arn, leading("WHDELIVERY#*")),
        allow(["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"],
              {"Fn::GetAtt": [control_key, "Arn"]}, via["dynamodb"]),
        allow(["kms:Sign"], {"Fn::GetAtt": [checkpoint_key, "Arn"]}),
        allow(["s3:PutObject"], {"Fn::Join": ["", [{"Fn::GetAtt": [audit, "Arn"]},
                                                   f"/{constants.AUDIT_IAM_CHECKPOINTS_PREFIX}*"]]}),
        allow(["kms:GenerateDataKey"], {"Fn::GetAtt": [audit_key, "Arn"]}, via["s3"]),
        allow(["dynamodb:DescribeTable"], table_arn),
    ]


def test_only_write_report_may_revoke_the_replays_key_through_key_items_chains_and_checkpoints(
    resources: dict[str, dict[str, Any]], functions: dict[str, str]
) -> None:
    expected = _revocation_statements(resources)
    for name, lid in functions.items():
        found = [_normalised(s) for s in function_statements(resources, lid)]
        touching = [s for s in found if any(a.startswith("dynamodb:") or a == "kms:Sign" for a in listed(s["Action"]))
                    or "audit" in json.dumps(s["Resource"]).lower()]
        if name == state_machine.WRITE_REPORT:
            assert [s for s in found if s in expected] == expected
            assert touching == [s for s in expected if s in touching]  # nothing else of the control plane
        elif name == state_machine.REPLAY_BATCH:  # reads for masking a mismatch's rows (asserted below), no more
            masking = _sample_mask_statements(resources)
            assert touching == [s for s in masking if s in touching] and touching
        else:
            assert touching == [], name
    environment = resources[functions[state_machine.WRITE_REPORT]]["Properties"]["Environment"]["Variables"]
    assert environment["HD_SHADOW_REVOKE_KEYS"] == "true"
    assert (environment["HD_STORE"], environment["HD_KEYS"], environment["HD_AUDIT"]) == ("dynamodb", "kms", "s3")
    table = one(of_type(resources, "AWS::DynamoDB::Table", "StorageControl"))[0]
    assert environment["HD_DYNAMODB_TABLE"] == {"Ref": table}
    variables = resources[functions[state_machine.PREPARE]]["Properties"]["Environment"]["Variables"]
    assert not {"HD_SHADOW_REVOKE_KEYS", "HD_DYNAMODB_TABLE", "HD_KMS_CHECKPOINT_KEY_ID"} & set(variables)
    variables = resources[functions[state_machine.REPLAY_BATCH]]["Properties"]["Environment"]["Variables"]
    assert "HD_SHADOW_REVOKE_KEYS" not in variables and "HD_AUDIT_BUCKET" not in variables
    # The token signing key is only named (the key provider wants one): no shadow role may use it.
    signing = one(of_type(resources, "AWS::KMS::Key", "KeysSigning"))[0]
    for lid in functions.values():
        assert not [s for s in function_statements(resources, lid) if signing in json.dumps(s["Resource"])]


def test_an_execution_that_did_not_finish_invokes_end_replay_through_an_eventbridge_rule_of_this_machine(
    resources: dict[str, dict[str, Any]], machine: tuple[str, dict[str, Any]], functions: dict[str, str]
) -> None:
    _, rule = one(of_type(resources, "AWS::Events::Rule", "ShadowReplayExecutionEnded"))
    props = rule["Properties"]
    assert props["EventPattern"] == {
        "source": ["aws.states"], "detail-type": ["Step Functions Execution Status Change"],
        "detail": {"stateMachineArn": [{"Ref": machine[0]}], "status": ["FAILED", "TIMED_OUT", "ABORTED"]}}
    (target,) = props["Targets"]
    end_replay = functions[SHARED_FUNCTIONS[state_machine.END_REPLAY]]  # WriteReport's Lambda
    assert target["Arn"] == {"Fn::GetAtt": [end_replay, "Arn"]}
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 185, "MaximumEventAgeInSeconds": 86_400}
    rule_id = one(of_type(resources, "AWS::Events::Rule", "ShadowReplayExecutionEnded"))[0]
    # Only this rule may invoke it (besides the state machine's role): no other resource policy.
    permissions = [r["Properties"] for r in of_type(resources, "AWS::Lambda::Permission").values()
                   if r["Properties"]["FunctionName"] == {"Fn::GetAtt": [end_replay, "Arn"]}]
    assert [(p["Principal"], p["SourceArn"]) for p in permissions] == [
        ("events.amazonaws.com", {"Fn::GetAtt": [rule_id, "Arn"]})]


def _sample_mask_statements(resources: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """ReplayBatch's reads for masking a mismatch's rows, as `ShadowReplay` must write them."""
    table = one(of_type(resources, "AWS::DynamoDB::Table", "StorageControl"))[0]
    control_key = one(of_type(resources, "AWS::KMS::Key", "KeysControl"))[0]
    table_arn = {"Fn::GetAtt": [table, "Arn"]}

    def allow(actions: list[str], resource: Any, condition: dict[str, Any] | None = None) -> dict[str, Any]:
        return _normalised({"Action": actions, "Effect": "Allow", "Resource": resource,
                            **({"Condition": condition} if condition else {})})

    return [
        *(allow(list(actions), table_arn, {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [partition]}})
          for actions, _, partition in SAMPLE_MASK_TABLE_ACCESS),
        allow(["kms:Decrypt", "kms:DescribeKey"], {"Fn::GetAtt": [control_key, "Arn"]},
              {"StringEquals": {"kms:ViaService": "dynamodb.eu-west-1.amazonaws.com"}}),
        allow(["kms:Decrypt"], _data_key_arn(resources), {"StringEquals": {"kms:EncryptionContext:purpose":
                                                                             "hd-mask-hash"}}),
        allow(["dynamodb:DescribeTable"], table_arn),
    ]


def test_replay_batch_only_reads_the_mask_rules_catalog_and_mask_keys_to_mask_a_mismatchs_rows(
    resources: dict[str, dict[str, Any]], functions: dict[str, str]
) -> None:
    found = [_normalised(s) for s in function_statements(resources, functions[state_machine.REPLAY_BATCH])]
    expected = _sample_mask_statements(resources)
    assert [s for s in found if s in expected] == expected
    assert not [a for s in found for a in listed(s["Action"])
                if a.startswith("dynamodb:") and a not in ("dynamodb:GetItem", "dynamodb:Query",
                                                           "dynamodb:DescribeTable")]
    # Every other use of the data key by ReplayBatch is through S3 or Secrets Manager, never direct; describing
    # it (the region pin's question for a multi-region key) is metadata, not a use.
    data_key = _data_key_arn(resources)
    for statement in found:
        if statement["Resource"] in (data_key, [data_key]) and statement not in expected:
            if statement["Action"] in ("kms:DescribeKey", ["kms:DescribeKey"]):
                continue
            assert "kms:ViaService" in statement["Condition"]["StringEquals"], statement
    variables = resources[functions[state_machine.REPLAY_BATCH]]["Properties"]["Environment"]["Variables"]
    assert variables["HD_SHADOW_SAMPLE_MASKS"] == "true" and variables["HD_KMS_DATA_KEY_ID"] == data_key
    for name in (state_machine.PREPARE, state_machine.WRITE_REPORT):
        assert "HD_SHADOW_SAMPLE_MASKS" not in resources[functions[name]]["Properties"]["Environment"]["Variables"]


def test_no_role_outside_shadow_mode_may_start_the_state_machine(
    resources: dict[str, dict[str, Any]], machine: tuple[str, dict[str, Any]]
) -> None:
    starters = {policy for policy, s in iter_statements(resources) if s["Effect"] == "Allow"
                and any(a in ("states:StartExecution", "states:*", "*") for a in listed(s["Action"]))}
    assert starters <= _api_policies(resources)
    for _, statement in iter_statements(resources):
        if "states:StartExecution" in listed(statement["Action"]):
            assert listed(statement["Resource"]) == [{"Ref": machine[0]}]


# --- the control API's shadow function ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_statements(resources: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return statements(resources, _api_policy(resources))


def test_api_function_starts_only_this_state_machine_and_reads_only_its_executions(
    resources: dict[str, dict[str, Any]], api_statements: list[dict[str, Any]], machine: tuple[str, dict[str, Any]]
) -> None:
    assert actions_on(api_statements, "states:StartExecution") == [{"Ref": machine[0]}]
    name = machine[1]["Properties"]["StateMachineName"]
    assert list(map(rendered, actions_on(api_statements, "states:DescribeExecution"))) == [
        f"arn:aws:states:eu-west-1:123456789012:execution:{name}:*"]
    props = resources[_api_function(resources)]["Properties"]
    assert props["Environment"]["Variables"]["HD_SHADOW_STATE_MACHINE_ARN"] == {"Ref": machine[0]}
    assert props["Environment"]["Variables"]["HD_SHADOW_ENGINE_HOST"]  # ShadowSettings refuses to start without it
    layer = one(of_type(resources, "AWS::Lambda::LayerVersion", "ShadowReplayDependencyLayer"))[0]
    assert {"Ref": layer} in props["Layers"]  # the upload parses statements with sqlglot


def test_api_function_creates_secrets_only_under_the_prefix_and_with_the_data_key(
    resources: dict[str, dict[str, Any]], api_statements: list[dict[str, Any]]
) -> None:
    data_key = _data_key_arn(resources)
    (create,) = [s for s in api_statements if "secretsmanager:CreateSecret" in listed(s["Action"])]
    assert rendered(create["Resource"]) == SECRET_PATTERN
    assert create["Condition"] == {"StringEquals": {"secretsmanager:KmsKeyArn": data_key}}
    assert actions_on(api_statements, "secretsmanager:GetSecretValue") == []
    (key,) = [s for s in api_statements if "kms:GenerateDataKey" in listed(s["Action"])
              and "secretsmanager" in json.dumps(s["Condition"])]
    assert key["Condition"]["StringLike"] == {"kms:EncryptionContext:SecretARN": SECRET_PATTERN}
    variables = resources[_api_function(resources)]["Properties"]["Environment"]["Variables"]
    assert variables["HD_SHADOW_SECRETS_KMS_KEY_ID"] == data_key
    (tagging,) = [s for s in api_statements if "secretsmanager:TagResource" in listed(s["Action"])]
    assert rendered(tagging["Resource"]) == SECRET_PATTERN
    assert tagging["Condition"] == {"StringEquals": {"aws:RequestTag/hd:purpose": "shadow-replay"},
                                    "ForAllValues:StringEquals": {"aws:TagKeys": ["hd:purpose"]}}


def test_step_functions_endpoint_serves_this_state_machine_only(
    resources: dict[str, dict[str, Any]], machine: tuple[str, dict[str, Any]]
) -> None:
    _, endpoint = one(of_type(resources, "AWS::EC2::VPCEndpoint", "ShadowReplay"))
    props = endpoint["Properties"]
    assert props["PrivateDnsEnabled"] is True
    granted = {(a, rendered(r)) for s in props["PolicyDocument"]["Statement"] for a in listed(s["Action"])
               for r in listed(s["Resource"])}
    name = machine[1]["Properties"]["StateMachineName"]
    assert granted == {("states:StartExecution", f"<{machine[0]}>"),
                       ("states:DescribeExecution",
                        f"arn:aws:states:eu-west-1:123456789012:execution:{name}:*")}


# --- context and packaging ---------------------------------------------------------------------------------


def test_comparison_network_comes_from_context_and_refuses_the_world() -> None:
    def network(**context: Any) -> ComparisonNetwork:
        return comparison_network(App(context=context))

    assert network() == ComparisonNetwork(cidrs=(), port=5432)
    assert network(**{constants.CONTEXT_SHADOW_COMPARISON_CIDRS: "10.1.0.0/16, 192.168.4.0/24"}) == ComparisonNetwork(
        cidrs=("10.1.0.0/16", "192.168.4.0/24"), port=5432)
    assert network(**{constants.CONTEXT_SHADOW_COMPARISON_CIDRS: ["10.1.0.0/16"],
                      constants.CONTEXT_SHADOW_COMPARISON_PORT: "6432"}).port == 6432
    with pytest.raises(ValueError, match="every address"):
        network(**{constants.CONTEXT_SHADOW_COMPARISON_CIDRS: ["0.0.0.0/0"]})
    with pytest.raises(ValueError, match="not a valid network"):
        network(**{constants.CONTEXT_SHADOW_COMPARISON_CIDRS: ["10.1.0.1/16"]})
    with pytest.raises(ValueError, match="TCP port"):
        network(**{constants.CONTEXT_SHADOW_COMPARISON_PORT: 70000})


def test_shadow_layer_carries_sql_parsing_and_the_postgres_driver() -> None:
    assert {requirement.split("[")[0] for requirement in SHADOW_REQUIREMENTS} == {"sqlglot", "psycopg"}
    assert "psycopg[binary]" in SHADOW_REQUIREMENTS  # no libpq on Lambda: the driver brings its own


# --- helpers -------------------------------------------------------------------------------------------------


def _security_group(resources: dict[str, dict[str, Any]], prefix: str) -> str:
    return one(of_type(resources, "AWS::EC2::SecurityGroup", prefix))[0]


def _logs_key(resources: dict[str, dict[str, Any]]) -> str:
    return one(of_type(resources, "AWS::KMS::Key", "KeysLogs"))[0]


def _notifications_key(resources: dict[str, dict[str, Any]]) -> str:
    return one(of_type(resources, "AWS::KMS::Key", "KeysNotifications"))[0]


def _data_key_arn(resources: dict[str, dict[str, Any]]) -> Any:
    """The data key's ARN as the stack writes it (ours, or the customer's when the parameter names one)."""
    bucket = one(of_type(resources, "AWS::S3::Bucket", "StorageData"))[1]
    rule = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    return rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"]


def _api_policy(resources: dict[str, dict[str, Any]]) -> str:
    return one(of_type(resources, "AWS::IAM::ManagedPolicy", "ShadowReplayApiPolicy"))[0]


def _api_policies(resources: dict[str, dict[str, Any]]) -> set[str]:
    """The shadow API function's extra policy, when the control API serves shadow mode."""
    return set(of_type(resources, "AWS::IAM::ManagedPolicy", "ShadowReplayApiPolicy"))


def _api_function(resources: dict[str, dict[str, Any]]) -> str:
    assert "shadow" in FUNCTION_MODULES, "the control API serves shadow mode (functions/shadow)"
    return one(of_type(resources, "AWS::Lambda::Function", "ControlApiShadow"))[0]
