"""ControlApi: Lambdas wired to every OpenAPI operation, least-privilege roles, a hardened stage, schedules.

One small stack of its own (VPC, table, keys, bucket) around ControlApi, synthesized once per module with
bundling off and cdk-nag's four packs on: the synth itself fails on any unacknowledged finding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import pytest
from aws_cdk import App, CfnCondition, CfnParameter, Fn, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Template

from functions.openapi import DOCUMENT_PATH, FUNCTION_MODULES
from hd_cdk import packaging
from hd_cdk.control_api import (
    FUNCTION_ACCESS,
    HEARTBEAT_PATH,
    TLS_SECURITY_POLICY,
    ControlApi,
    FunctionAccess,
    api_operations,
    draft4_schema,
)
from hd_cdk.nag import acknowledgments, acknowledgments_per_pack, apply_packs

FLEET_ROLE_ARN = "arn:aws:iam::123456789012:role/hd-engine-host"
ENV = {"account": "123456789012", "region": "eu-west-1"}


def build_test_app(private: str = "false", *, nag: bool = True, **overrides: Any) -> tuple[App, Stack, ControlApi]:
    """A stack with its own VPC, keys, table and bucket around ControlApi; `private`: false, true or condition."""
    app = App(context={"hd:bundling": False})
    if nag:
        apply_packs(app)
    stack = Stack(app, "ControlApiTest", env=ENV)
    vpc = ec2.Vpc(
        stack, "Vpc", availability_zones=["eu-west-1a", "eu-west-1b"], nat_gateways=0,
        create_internet_gateway=False, restrict_default_security_group=True,
        subnet_configuration=[ec2.SubnetConfiguration(name="Private", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)],
    )
    _acknowledge_test_scaffolding(vpc, "the test VPC only hosts the construct under test; the real network "
                                        "construct has flow logs and is tested on its own")
    lambda_sg = ec2.SecurityGroup(stack, "LambdaSg", vpc=vpc, allow_all_outbound=False)
    endpoint_sg = ec2.SecurityGroup(stack, "EndpointSg", vpc=vpc, allow_all_outbound=False)

    def key(name: str, **kwargs: Any) -> kms.Key:
        return kms.Key(stack, name, enable_key_rotation="key_spec" not in kwargs, **kwargs)

    signing = key("Signing", key_spec=kms.KeySpec.RSA_2048, key_usage=kms.KeyUsage.SIGN_VERIFY)
    checkpoint = key("Checkpoint", key_spec=kms.KeySpec.ECC_NIST_P256, key_usage=kms.KeyUsage.SIGN_VERIFY)
    for asymmetric in (signing, checkpoint):
        _acknowledge_test_scaffolding(asymmetric, "KMS does not rotate asymmetric keys")
    data, audit, control, logs_key, queue_key = (key(n) for n in ("Data", "Audit", "Control", "Logs", "Queues"))
    logs_key.add_to_resource_policy(iam.PolicyStatement(
        principals=[iam.ServicePrincipal("logs.eu-west-1.amazonaws.com")], resources=["*"],
        actions=["kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:GenerateDataKey",
                 "kms:DescribeKey"],
    ))
    table = dynamodb.Table(
        stack, "Table",
        partition_key=dynamodb.Attribute(name="PK", type=dynamodb.AttributeType.STRING),
        sort_key=dynamodb.Attribute(name="SK", type=dynamodb.AttributeType.STRING),
        encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED, encryption_key=control,
        billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
        point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
            point_in_time_recovery_enabled=True),
    )
    table.add_global_secondary_index(
        index_name="GSI1",
        partition_key=dynamodb.Attribute(name="GSI1PK", type=dynamodb.AttributeType.STRING),
        sort_key=dynamodb.Attribute(name="GSI1SK", type=dynamodb.AttributeType.STRING),
    )
    _acknowledge_test_scaffolding(table, "the real table is the storage construct's, tested on its own")
    bucket = s3.Bucket(
        stack, "AuditBucket", encryption=s3.BucketEncryption.KMS, encryption_key=audit, bucket_key_enabled=True,
        enforce_ssl=True, block_public_access=s3.BlockPublicAccess.BLOCK_ALL, versioned=True,
        object_lock_enabled=True,
    )
    _acknowledge_test_scaffolding(bucket, "the real audit bucket is the storage construct's, tested on its own")

    private_api: bool | CfnCondition
    if private == "condition":
        parameter = CfnParameter(stack, "PrivateApi", allowed_values=["true", "false"], default="false")
        private_api = CfnCondition(stack, "IsPrivateApi", expression=Fn.condition_equals(parameter, "true"))
    else:
        private_api = private == "true"
    api = ControlApi(
        stack, "ControlApi",
        vpc=vpc, subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
        lambda_sg=lambda_sg, endpoint_sg=endpoint_sg, table=table,
        signing_key=signing, checkpoint_key=checkpoint, data_key=data, audit_bucket=bucket,
        logs_key=logs_key, dead_letter_key=queue_key,
        code=packaging.function_code(stack),
        layers=[packaging.core_layer(stack, "CoreLayer"), packaging.dependency_layer(stack, "DependencyLayer")],
        fleet_role_arn=FLEET_ROLE_ARN, fleet_asg_name="hd-engines", org_id="org_test", private_api=private_api,
        **overrides,
    )
    return app, stack, api


def _acknowledge_test_scaffolding(construct: Any, why: str) -> None:
    """The test's own stand-ins for other constructs' resources are not what is under test here."""
    from aws_cdk import Acknowledgment, Validations

    for entry in _SCAFFOLDING_RULES:
        Validations.of(construct).acknowledge(Acknowledgment(id=entry, reason=f"Test scaffolding: {why}."))


_SCAFFOLDING_RULES = [
    f"{pack}::{pack}-{rule}"
    for pack, rules in {
        "AwsSolutions": ["VPC7", "S1", "S10", "KMS5", "DDB3"],
        "HIPAA.Security": ["VPCFlowLogsEnabled", "S3BucketLoggingEnabled", "S3BucketReplicationEnabled",
                           "S3DefaultEncryptionKMS", "KMSBackingKeyRotationEnabled", "DynamoDBInBackupPlan",
                           "DynamoDBPITREnabled", "S3BucketSSLRequestsOnly", "S3BucketVersioningEnabled"],
        "NIST.800.53.R5": ["VPCFlowLogsEnabled", "S3BucketLoggingEnabled", "S3BucketReplicationEnabled",
                           "S3DefaultEncryptionKMS", "KMSBackingKeyRotationEnabled", "DynamoDBInBackupPlan",
                           "DynamoDBPITREnabled", "S3BucketSSLRequestsOnly", "S3BucketVersioningEnabled",
                           "DynamoDBAutoScalingEnabled"],
        "PCI.DSS.321": ["VPCFlowLogsEnabled", "S3BucketLoggingEnabled", "S3BucketReplicationEnabled",
                        "S3DefaultEncryptionKMS", "KMSBackingKeyRotationEnabled", "DynamoDBPITREnabled",
                        "S3BucketSSLRequestsOnly", "S3BucketVersioningEnabled"],
    }.items()
    for rule in rules
]


@pytest.fixture(scope="module")
def synthesized() -> Iterator[tuple[Stack, ControlApi, Template]]:
    app, stack, api = build_test_app()
    app.synth()  # cdk-nag runs here: an unacknowledged finding raises
    yield stack, api, Template.from_stack(stack)


@pytest.fixture(scope="module")
def template(synthesized: tuple[Stack, ControlApi, Template]) -> dict[str, Any]:
    return dict(synthesized[2].to_json())


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def logical_id(stack: Stack, construct: Any) -> str:
    return stack.get_logical_id(construct.node.default_child)


def child_arn(stack: Stack, child: str) -> dict[str, Any]:
    """`Fn::GetAtt [<logical id>, Arn]` of one of the test stack's own resources."""
    return {"Fn::GetAtt": [logical_id(stack, stack.node.find_child(child)), "Arn"]}


def method_paths(template: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """`METHOD /path` -> (method logical id, properties), rebuilding paths from the Resource tree."""
    api_resources = resources(template, "AWS::ApiGateway::Resource")

    def path_of(reference: Any) -> str:
        if isinstance(reference, dict) and "Ref" in reference and reference["Ref"] in api_resources:
            props = api_resources[reference["Ref"]]["Properties"]
            return f"{path_of(props['ParentId'])}/{props['PathPart']}"
        return ""  # the root resource (GetAtt RootResourceId)

    return {
        f"{props['HttpMethod']} {path_of(props['ResourceId']) or '/'}": (name, props)
        for name, resource in resources(template, "AWS::ApiGateway::Method").items()
        for props in [resource["Properties"]]
    }


def integration_function(method: dict[str, Any]) -> str:
    """The logical id of the Lambda a proxy integration invokes."""
    parts = method["Integration"]["Uri"]["Fn::Join"][1]
    return next(part["Fn::GetAtt"][0] for part in parts if isinstance(part, dict) and "Fn::GetAtt" in part)


def function_policy(template: dict[str, Any], stack: Stack, api: ControlApi, name: str) -> list[dict[str, Any]]:
    """The statements of the one managed policy attached to the function's role."""
    role_id = template["Resources"][logical_id(stack, api.functions[name])]["Properties"]["Role"]["Fn::GetAtt"][0]
    role = template["Resources"][role_id]["Properties"]
    assert "Policies" not in role, "roles carry no inline policies"
    (policy_ref,) = role["ManagedPolicyArns"]
    statements: list[dict[str, Any]] = template["Resources"][policy_ref["Ref"]]["Properties"]["PolicyDocument"][
        "Statement"]
    return statements


def actions_of(statements: list[dict[str, Any]]) -> set[str]:
    found: set[str] = set()
    for statement in statements:
        action = statement.get("Action", [])
        found.update([action] if isinstance(action, str) else action)
    return found


def statements_with(statements: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [s for s in statements if action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]


def every_policy_statement(node: Any) -> Iterator[dict[str, Any]]:
    """Every IAM statement anywhere in the template (roles, policies, key/bucket/queue/API resource policies)."""
    if isinstance(node, dict):
        if "Effect" in node and ("Action" in node or "NotAction" in node):
            yield node
        for value in node.values():
            yield from every_policy_statement(value)
    elif isinstance(node, list):
        for value in node:
            yield from every_policy_statement(value)


# --- routes ---------------------------------------------------------------------------------------------

def test_functions_are_exactly_the_openapi_function_modules(synthesized: tuple[Stack, ControlApi, Template]) -> None:
    _, api, _ = synthesized
    assert set(api.functions) == set(FUNCTION_MODULES) == set(FUNCTION_ACCESS)


def test_every_openapi_operation_has_a_method_wired_to_its_function(
    synthesized: tuple[Stack, ControlApi, Template], template: dict[str, Any]
) -> None:
    stack, api, _ = synthesized
    document = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    expected = {
        f"{method.upper()} {path}": operation["x-hd-function"]
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    function_of_logical_id = {logical_id(stack, fn): name for name, fn in api.functions.items()}
    methods = method_paths(template)
    assert set(methods) == set(expected)
    for route, function in expected.items():
        assert function_of_logical_id[integration_function(methods[route][1])] == function, route
        assert methods[route][1]["Integration"]["Type"] == "AWS_PROXY"


def test_iam_authorization_is_on_the_heartbeat_and_nowhere_else(template: dict[str, Any]) -> None:
    authorization = {route: props["AuthorizationType"] for route, (_, props) in method_paths(template).items()}
    assert {route for route, kind in authorization.items() if kind == "AWS_IAM"} == {f"POST {HEARTBEAT_PATH}"}
    assert set(authorization.values()) == {"AWS_IAM", "NONE"}


def test_heartbeat_path_arn_is_post_heartbeat_on_the_stage(synthesized: tuple[Stack, ControlApi, Template]) -> None:
    stack, api, _ = synthesized
    parts = stack.resolve(api.heartbeat_path_arn)["Fn::Join"][1]
    assert parts[-1] == f"/prod/POST{HEARTBEAT_PATH}"
    assert ":execute-api:" in "".join(p for p in parts if isinstance(p, str))


def test_url_names_the_stage_but_depends_only_on_the_rest_api(synthesized: tuple[Stack, ControlApi, Template]) -> None:
    """No reference to the stage: the fleet's configuration holds the URL, and the stage depends on every function."""
    stack, api, _ = synthesized
    assert stack.resolve(api.url) == {"Fn::Join": ["", [
        "https://", {"Ref": logical_id(stack, api.api)}, ".execute-api.eu-west-1.", {"Ref": "AWS::URLSuffix"}, "/prod/",
    ]]}


def test_resource_policy_lets_only_the_fleet_role_call_the_heartbeat(template: dict[str, Any]) -> None:
    (api,) = resources(template, "AWS::ApiGateway::RestApi").values()
    denies = [s for s in api["Properties"]["Policy"]["Statement"] if s["Effect"] == "Deny"]
    assert denies == [{
        "Action": "execute-api:Invoke", "Effect": "Deny", "Principal": {"AWS": "*"},
        "Resource": f"execute-api:/*/POST{HEARTBEAT_PATH}",
        "Condition": {"ArnNotEquals": {"aws:PrincipalArn": FLEET_ROLE_ARN}},
    }]
    assert api["Properties"]["EndpointConfiguration"]["Types"] == ["REGIONAL"]
    assert not resources(template, "AWS::EC2::VPCEndpoint")


# --- functions ------------------------------------------------------------------------------------------

def test_every_function_is_arm64_python312_in_the_vpc_traced_with_reserved_concurrency(
    synthesized: tuple[Stack, ControlApi, Template], template: dict[str, Any]
) -> None:
    stack, api, _ = synthesized
    queue_id = logical_id(stack, api.dead_letter_queue)
    for name, function in api.functions.items():
        props = template["Resources"][logical_id(stack, function)]["Properties"]
        assert props["Architectures"] == ["arm64"], name
        assert props["Runtime"] == "python3.12", name
        assert props["Handler"] == f"functions.{name}.handler.lambda_handler"
        assert len(props["VpcConfig"]["SubnetIds"]) == 2 and len(props["VpcConfig"]["SecurityGroupIds"]) == 1
        assert props["ReservedConcurrentExecutions"] >= 1, name
        assert props["TracingConfig"] == {"Mode": "Active"}, name
        assert props["DeadLetterConfig"] == {"TargetArn": {"Fn::GetAtt": [queue_id, "Arn"]}}, name
        assert len(props["Layers"]) == 2, name
        environment = props["Environment"]["Variables"]
        assert (environment["HD_STORE"], environment["HD_KEYS"], environment["HD_AUDIT"]) == ("dynamodb", "kms", "s3")
        assert ("HD_FLEET_ROLE_ARN" in environment) == (name == "fleet")


def test_every_function_logs_to_its_own_encrypted_log_group_kept_a_year(
    synthesized: tuple[Stack, ControlApi, Template], template: dict[str, Any]
) -> None:
    stack, api, _ = synthesized
    groups = set()
    for function in api.functions.values():
        props = template["Resources"][logical_id(stack, function)]["Properties"]
        group = template["Resources"][props["LoggingConfig"]["LogGroup"]["Ref"]]["Properties"]
        assert group["RetentionInDays"] == 365 and "KmsKeyId" in group
        groups.add(props["LoggingConfig"]["LogGroup"]["Ref"])
    assert len(groups) == len(api.functions)


def test_dead_letter_queue_is_kms_encrypted_and_tls_only(
    synthesized: tuple[Stack, ControlApi, Template], template: dict[str, Any]
) -> None:
    stack, api, _ = synthesized
    queue = template["Resources"][logical_id(stack, api.dead_letter_queue)]["Properties"]
    assert queue["KmsMasterKeyId"] == child_arn(stack, "Queues")
    (policy,) = resources(template, "AWS::SQS::QueuePolicy").values()
    assert any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
               for s in policy["Properties"]["PolicyDocument"]["Statement"])


def test_no_statement_anywhere_has_wildcard_actions_s3_delete_or_key_deletion(template: dict[str, Any]) -> None:
    statements = list(every_policy_statement(template))
    assert len(statements) > 50
    for statement in statements:
        assert "NotAction" not in statement
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in actions:
            if statement["Effect"] == "Deny":
                continue
            assert "*" not in action or (action == "kms:*" and _is_key_admin(statement)), action
            assert action.lower() not in ("s3:deleteobject", "s3:deleteobjectversion", "kms:schedulekeydeletion")


def _is_key_admin(statement: dict[str, Any]) -> bool:
    """CDK's default key policy: the account root administers its own test keys (not a role grant)."""
    return statement.get("Principal") == {"AWS": {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"},
                                                                      ":iam::123456789012:root"]]}}


def test_roles_have_no_inline_or_default_policies(template: dict[str, Any]) -> None:
    assert not resources(template, "AWS::IAM::Policy")


def test_only_auth_signs_tokens_and_opens_sealed_secrets_under_their_encryption_context(
    synthesized: tuple[Stack, ControlApi, Template], template: dict[str, Any]
) -> None:
    stack, api, _ = synthesized
    signing, data = child_arn(stack, "Signing"), child_arn(stack, "Data")
    for name in api.functions:
        statements = function_policy(template, stack, api, name)
        signs_jwts = [s for s in statements_with(statements, "kms:Sign") if s["Resource"] == signing]
        data_key = [s for s in statements if s["Resource"] == data and s["Action"] != "kms:DescribeKey"]
        assert bool(signs_jwts) == (name == "auth"), name
        assert bool(data_key) == (name in ("auth", "webhooks", "forget")), name
        # Every function pins its region, which describes a multi-region data key: metadata, unconditioned.
        (describe,) = [s for s in statements if s["Resource"] == data and s["Action"] == "kms:DescribeKey"]
        assert "Condition" not in describe, name
    for name, purpose in (("auth", "totp-secret"), ("webhooks", "webhook-secret"), ("forget", "forget-subject")):
        (sealing,) = [s for s in function_policy(template, stack, api, name)
                      if s["Resource"] == data and s["Action"] != "kms:DescribeKey"]
        assert sorted(sealing["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]
        assert sealing["Condition"] == {"StringEquals": {"kms:EncryptionContext:purpose": purpose}}


def test_audit_bucket_access_is_scoped_to_prefixes_and_only_trail_writers_put(
    synthesized: tuple[Stack, ControlApi, Template], template: dict[str, Any]
) -> None:
    stack, api, _ = synthesized
    bucket_id = logical_id(stack, stack.node.find_child("AuditBucket"))
    for name in api.functions:
        statements = function_policy(template, stack, api, name)
        # The region pin asks every function's container where the audit bucket is and replicates to, nothing more.
        location = statements_with(statements, "s3:GetBucketLocation")
        assert [(actions_of([s]), s["Resource"]) for s in location] == [
            ({"s3:GetBucketLocation", "s3:GetReplicationConfiguration"}, {"Fn::GetAtt": [bucket_id, "Arn"]})]
        s3_statements = [s for s in statements if any(a.startswith("s3:") for a in actions_of([s]))
                         and s not in location]
        object_prefixes = set()
        for statement in s3_statements:
            if "s3:ListBucket" in actions_of([statement]):
                assert statement["Resource"] == {"Fn::GetAtt": [bucket_id, "Arn"]}
                assert set(statement["Condition"]["StringLike"]["s3:prefix"]) <= {
                    "audit/iam-checkpoints/*", "audit/queries/*", "audit/query-checkpoints/*", "audit/exports/*"}
                continue
            join = statement["Resource"]["Fn::Join"][1]
            assert join[0] == {"Fn::GetAtt": [bucket_id, "Arn"]}
            object_prefixes.add(join[1])
        writes = {join["Resource"]["Fn::Join"][1][1] for join in statements_with(statements, "s3:PutObject")}
        if name == "fleet":
            assert not s3_statements
        elif name == "audit":
            assert object_prefixes == {"/audit/iam-checkpoints/*", "/audit/queries/*", "/audit/query-checkpoints/*",
                                       "/audit/exports/*"}
            # The schedule signs the query chain heads hosts that stopped left owed (and nothing else of the trail)
            assert writes == {"/audit/iam-checkpoints/*", "/audit/query-checkpoints/*", "/audit/exports/*"}
            # verify-chain reads every version of every checkpoint (both trails): a delete marker must not hide one
            versioned = {join["Resource"]["Fn::Join"][1][1]
                         for join in statements_with(statements, "s3:GetObjectVersion")}
            assert versioned == {"/audit/iam-checkpoints/*", "/audit/query-checkpoints/*"}
            listings = statements_with(statements, "s3:ListBucketVersions")
            assert sorted(s["Condition"]["StringLike"]["s3:prefix"][0] for s in listings) == [
                "audit/iam-checkpoints/*", "audit/query-checkpoints/*"]
        else:
            assert object_prefixes == writes == {"/audit/iam-checkpoints/*"}, name


def test_signing_owed_query_checkpoints_is_only_granted_with_reading_and_verifying_the_chain() -> None:
    """The job verifies a chain before it signs the head: a role that could sign without reading is refused."""
    for access in ({}, {"reads_query_audit": True}, {"verifies_checkpoints": True}):
        with pytest.raises(ValueError, match="reads_query_audit"):
            FunctionAccess(signs_owed_query_checkpoints=True, **access)
    assert FUNCTION_ACCESS["audit"].signs_owed_query_checkpoints
    assert [name for name, access in FUNCTION_ACCESS.items() if access.signs_owed_query_checkpoints] == ["audit"]


def test_fleet_reads_the_table_writes_only_the_pepper_and_describes_instances(
    synthesized: tuple[Stack, ControlApi, Template], template: dict[str, Any]
) -> None:
    stack, api, _ = synthesized
    statements = function_policy(template, stack, api, "fleet")
    assert "ec2:DescribeInstances" in actions_of(statements)
    assert not actions_of(statements) & {"dynamodb:UpdateItem", "dynamodb:DeleteItem", "kms:Sign", "s3:PutObject"}
    (put,) = statements_with(statements, "dynamodb:PutItem")
    assert put["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["SETTING#api_key_cache_pepper"]}}
    for name in set(api.functions) - {"fleet"}:
        assert "ec2:DescribeInstances" not in actions_of(function_policy(template, stack, api, name)), name


def test_table_access_is_item_level_on_the_table_and_its_index(
    synthesized: tuple[Stack, ControlApi, Template], template: dict[str, Any]
) -> None:
    stack, api, _ = synthesized
    table = child_arn(stack, "Table")
    for name in api.functions:
        dynamo = {a for a in actions_of(function_policy(template, stack, api, name)) if a.startswith("dynamodb:")}
        assert dynamo <= {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem", "dynamodb:UpdateItem",
                          "dynamodb:DeleteItem", "dynamodb:ConditionCheckItem", "dynamodb:DescribeTable"}, name
        (reads,) = statements_with(function_policy(template, stack, api, name), "dynamodb:Query")
        assert reads["Resource"] == [table, {"Fn::Join": ["", [table, "/index/GSI1"]]}]
        # The region pin reads the table's ARN and replicas: on the table itself, alone in its statement.
        (describe,) = statements_with(function_policy(template, stack, api, name), "dynamodb:DescribeTable")
        assert (describe["Action"], describe["Resource"]) == ("dynamodb:DescribeTable", table)


# --- stage ----------------------------------------------------------------------------------------------

def test_stage_logs_access_to_an_encrypted_group_and_throttles(template: dict[str, Any]) -> None:
    (stage,) = resources(template, "AWS::ApiGateway::Stage").values()
    props = stage["Properties"]
    log_group = template["Resources"][props["AccessLogSetting"]["DestinationArn"]["Fn::GetAtt"][0]]["Properties"]
    assert "KmsKeyId" in log_group and log_group["RetentionInDays"] == 365
    assert "$context.tlsVersion" in props["AccessLogSetting"]["Format"]
    assert props["TracingEnabled"] is True
    settings = {(s["ResourcePath"], s["HttpMethod"]): s for s in props["MethodSettings"]}
    everything = settings[("/*", "*")]
    assert (everything["ThrottlingRateLimit"], everything["ThrottlingBurstLimit"]) == (100, 200)
    assert everything["LoggingLevel"] == "INFO" and everything["DataTraceEnabled"] is False
    login = settings[("/~1v1~1auth~1login", "POST")]
    assert login["ThrottlingRateLimit"] < everything["ThrottlingRateLimit"]


def test_api_accepts_tls13_only_with_strict_endpoint_access(template: dict[str, Any]) -> None:
    (api,) = resources(template, "AWS::ApiGateway::RestApi").values()
    assert api["Properties"]["SecurityPolicy"] == TLS_SECURITY_POLICY == "SecurityPolicy_TLS13_1_3_2025_09"
    assert api["Properties"]["EndpointAccessMode"] == "STRICT"


def test_request_validator_checks_bodies_and_parameters_on_every_method(template: dict[str, Any]) -> None:
    (validator_id, validator), = resources(template, "AWS::ApiGateway::RequestValidator").items()
    assert validator["Properties"]["ValidateRequestBody"] and validator["Properties"]["ValidateRequestParameters"]
    models = resources(template, "AWS::ApiGateway::Model")
    for route, (_, props) in method_paths(template).items():
        assert props["RequestValidatorId"] == {"Ref": validator_id}, route
    methods = method_paths(template)
    _, create_key = methods["POST /v1/organizations/{org_id}/api-keys"]
    assert create_key["RequestParameters"] == {"method.request.path.org_id": True}
    model = models[create_key["RequestModels"]["application/json"]["Ref"]]["Properties"]
    assert model["Name"] == "KeyIn" and model["Schema"]["properties"]["env"] == {
        "$ref": "#/definitions/KeyEnv", "default": "live"}
    _, unlink = methods["DELETE /v1/organizations/{org_id}/users/{user_id}/identities"]
    assert unlink["RequestParameters"]["method.request.querystring.external_id"] is True


def test_gateway_refusals_use_the_control_api_error_shape(template: dict[str, Any]) -> None:
    responses = {r["Properties"]["ResponseType"]: r["Properties"]
                 for r in resources(template, "AWS::ApiGateway::GatewayResponse").values()}
    assert set(responses) == {"BAD_REQUEST_BODY", "BAD_REQUEST_PARAMETERS", "THROTTLED", "DEFAULT_4XX", "DEFAULT_5XX"}
    for response_type, props in responses.items():
        # As API Gateway fills it in: messageString comes quoted, requestId bare.
        body = props["ResponseTemplates"]["application/json"].replace(
            "$context.error.messageString", '"Invalid request body"').replace("$context.requestId", "req-1")
        error = json.loads(body)["error"]
        assert error["code"].startswith("HD_ERR_") and error["request_id"] == "req-1", response_type
        assert error["message"] == "Invalid request body"
    assert "HD_ERR_INVALID_REQUEST" in responses["BAD_REQUEST_BODY"]["ResponseTemplates"]["application/json"]


# --- schedules ------------------------------------------------------------------------------------------

def test_schedules_sweep_expired_keys_hourly_and_checkpoint_every_15_minutes(
    synthesized: tuple[Stack, ControlApi, Template], template: dict[str, Any]
) -> None:
    stack, api, _ = synthesized
    schedules = {
        rule["Properties"]["ScheduleExpression"]: rule["Properties"]["Targets"][0]["Arn"]["Fn::GetAtt"][0]
        for rule in resources(template, "AWS::Events::Rule").values()
    }
    assert schedules == {
        "rate(1 hour)": logical_id(stack, api.functions["api_keys"]),
        "rate(15 minutes)": logical_id(stack, api.functions["audit"]),
    }


# --- cdk-nag --------------------------------------------------------------------------------------------

def test_nag_packs_pass_with_acknowledgments_next_to_the_resources(
    synthesized: tuple[Stack, ControlApi, Template],
) -> None:
    """The module fixture's synth ran all four packs; what they found is acknowledged where it applies."""
    _, api, _ = synthesized
    counts = acknowledgments_per_pack(api)
    print(f"ControlApi cdk-nag acknowledgments per pack: {dict(counts)}")
    found = acknowledgments(api)
    assert all(len(ack.reason) >= 40 for ack in found)
    by_path: dict[str, set[str]] = {}
    for ack in found:
        by_path.setdefault(ack.path.removeprefix("ControlApiTest/ControlApi/"), set()).add(ack.rule_id)
    for name in api.functions:
        construct_id = "".join(part.capitalize() for part in name.split("_"))
        assert "AwsSolutions-L1" in by_path[construct_id]
        assert "AwsSolutions-IAM5[Resource::*]" in by_path[f"{construct_id}Policy"]
    # The compliance packs' remaining findings are all about the stage (WAF, cache, backend certificate).
    compliance = {ack.path for ack in found if ack.pack != "AwsSolutions"}
    assert compliance == {"ControlApiTest/ControlApi/Api/DeploymentStage.prod"}


# --- private API ----------------------------------------------------------------------------------------

def test_private_api_condition_switches_endpoint_type_policy_and_vpc_endpoint() -> None:
    _, stack, _ = build_test_app(private="condition", nag=False)
    template = dict(Template.from_stack(stack).to_json())
    (api,) = resources(template, "AWS::ApiGateway::RestApi").values()
    assert api["Properties"]["EndpointConfiguration"]["Types"] == [{"Fn::If": ["IsPrivateApi", "PRIVATE", "REGIONAL"]}]
    private_policy, regional_policy = api["Properties"]["Policy"]["Fn::If"][1:]
    (endpoint_id, endpoint), = resources(template, "AWS::EC2::VPCEndpoint").items()
    assert endpoint["Condition"] == "IsPrivateApi" and endpoint["Properties"]["PrivateDnsEnabled"] is True
    assert {"StringNotEquals": {"aws:SourceVpce": {"Ref": endpoint_id}}} in [
        s.get("Condition") for s in private_policy["Statement"] if s["Effect"] == "Deny"]
    assert "aws:SourceVpce" not in json.dumps(regional_policy)


def test_private_api_is_private_and_reachable_only_through_its_endpoint() -> None:
    _, stack, api = build_test_app(private="true", nag=False)
    template = dict(Template.from_stack(stack).to_json())
    (rest_api,) = resources(template, "AWS::ApiGateway::RestApi").values()
    assert rest_api["Properties"]["EndpointConfiguration"]["Types"] == ["PRIVATE"]
    assert api.api_endpoint is not None
    endpoint = template["Resources"][logical_id(stack, api.api_endpoint)]["Properties"]
    assert endpoint["ServiceName"] == "com.amazonaws.eu-west-1.execute-api"
    assert endpoint["PolicyDocument"]["Statement"] == [{
        "Action": "execute-api:Invoke", "Effect": "Allow", "Principal": {"AWS": "*"},
        "Resource": {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":execute-api:eu-west-1:123456789012:*"]]},
    }]
    assert {"StringNotEquals": {"aws:SourceVpce": {"Ref": logical_id(stack, api.api_endpoint)}}} in [
        s.get("Condition") for s in rest_api["Properties"]["Policy"]["Statement"]]


# --- bad input ------------------------------------------------------------------------------------------

def test_a_route_to_a_function_without_an_access_entry_is_refused() -> None:
    document = {"paths": {"/v1/reports": {"get": {"x-hd-function": "reports"}}}}
    with pytest.raises(ValueError, match=r"without an access entry: \['reports'\]"):
        build_test_app(nag=False, openapi_document=document)


def test_sign_in_throttling_must_name_routes_the_document_serves() -> None:
    document = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    del document["paths"]["/v1/auth/login"]
    with pytest.raises(ValueError, match=r"routes the document lacks: \['/v1/auth/login/POST'\]"):
        build_test_app(nag=False, openapi_document=document)


def test_reserved_concurrency_must_name_a_function_and_be_positive() -> None:
    with pytest.raises(ValueError, match="reserved concurrency auth=0"):
        build_test_app(nag=False, reserved_concurrency={"auth": 0})
    with pytest.raises(ValueError, match="reserved concurrency reports=5"):
        build_test_app(nag=False, reserved_concurrency={"reports": 5})


# --- pure helpers ---------------------------------------------------------------------------------------

def test_draft4_schema_carries_referenced_definitions_and_converts_exclusive_bounds() -> None:
    schemas = {
        "QuotaIn": {"type": "object", "properties": {"credits": {"type": "number", "exclusiveMinimum": 0},
                                                     "env": {"$ref": "#/components/schemas/KeyEnv"}}},
        "KeyEnv": {"type": "string", "enum": ["live", "test"]},
        "Unused": {"type": "string"},
    }
    schema = draft4_schema("QuotaIn", schemas)
    assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    assert schema["properties"]["credits"] == {"type": "number", "minimum": 0, "exclusiveMinimum": True}
    assert schema["properties"]["env"] == {"$ref": "#/definitions/KeyEnv"}
    assert schema["definitions"] == {"KeyEnv": {"type": "string", "enum": ["live", "test"]}}


def test_draft4_schema_refuses_a_dangling_reference() -> None:
    with pytest.raises(ValueError, match="Missing"):
        draft4_schema("A", {"A": {"$ref": "#/components/schemas/Missing"}})


def test_api_operations_refuse_an_operation_without_a_function() -> None:
    with pytest.raises(ValueError, match="GET /v1/x has no x-hd-function"):
        api_operations({"paths": {"/v1/x": {"get": {}}}})


def test_every_checked_in_operation_names_a_function_with_an_access_entry() -> None:
    document = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    assert {operation.function for operation in api_operations(document)} == set(FUNCTION_ACCESS)
