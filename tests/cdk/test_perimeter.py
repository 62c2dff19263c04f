"""Data perimeter (issue 21, item 4): buckets only through the S3 gateway endpoint, the DynamoDB endpoint only to the
control table, the data-protecting keys only from inside the VPC or through the at-rest services."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Match, Template

from hd_cdk.perimeter import (
    BUCKET_DATA_ACTIONS,
    CONTEXT_EXEMPT_PRINCIPALS,
    KEY_CRYPTO_ACTIONS,
    Perimeter,
    exempt_principals_from_context,
)


def _one(template: dict[str, Any], type_: str, prefix: str) -> tuple[str, dict[str, Any]]:
    (found,) = [(k, r) for k, r in template["Resources"].items() if r["Type"] == type_ and k.startswith(prefix)]
    return found


def _statement(statements: list[dict[str, Any]], sid: str) -> dict[str, Any]:
    (found,) = [s for s in statements if s.get("Sid") == sid]
    return found


def _break_glass(template: dict[str, Any]) -> dict[str, Any]:
    name, _ = _one(template, "AWS::IAM::Role", "PerimeterBreakGlass")
    return {"Fn::GetAtt": [name, "Arn"]}


def test_every_bucket_denies_data_access_not_through_the_s3_gateway_endpoint(synthesized_app: Any) -> None:
    template = synthesized_app.template()
    endpoint, _ = _one(template, "AWS::EC2::VPCEndpoint", "NetworkVpcS3")
    buckets = [k for k, r in template["Resources"].items() if r["Type"] == "AWS::S3::Bucket"]
    policies = {r["Properties"]["Bucket"]["Ref"]: r["Properties"]["PolicyDocument"]["Statement"]
                for r in template["Resources"].values() if r["Type"] == "AWS::S3::BucketPolicy"}
    assert len(buckets) >= 3 and set(buckets) <= set(policies)
    for bucket in buckets:
        deny = _statement(policies[bucket], "DenyDataAccessOutsideTheVpcEndpoint")
        assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": "*"}
        assert sorted(deny["Action"]) == sorted(BUCKET_DATA_ACTIONS)
        assert deny["Resource"] == [{"Fn::GetAtt": [bucket, "Arn"]},
                                    {"Fn::Join": ["", [{"Fn::GetAtt": [bucket, "Arn"]}, "/*"]]}]
        assert deny["Condition"] == {
            "StringNotEquals": {"aws:SourceVpce": {"Ref": endpoint}},
            "ArnNotEquals": {"aws:PrincipalArn": [_break_glass(template)]},
            "BoolIfExists": {"aws:PrincipalIsAWSService": "false"},
        }


def test_the_deny_covers_reading_writing_listing_and_deleting_objects() -> None:
    """The wildcards really match the data actions stolen credentials would use."""
    import fnmatch

    for action in ("s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:PutObjectRetention", "s3:ListBucket",
                   "s3:ListBucketVersions", "s3:DeleteObject", "s3:DeleteObjectVersion"):
        assert any(fnmatch.fnmatchcase(action, pattern) for pattern in BUCKET_DATA_ACTIONS), action
    # Bucket configuration stays CloudFormation's: denying it outside the VPC would break every stack update.
    assert not any(fnmatch.fnmatchcase("s3:PutBucketPolicy", pattern) for pattern in BUCKET_DATA_ACTIONS)


def test_the_dynamodb_endpoint_admits_only_the_control_table_and_its_indexes(synthesized_app: Any) -> None:
    template = synthesized_app.template()
    _, endpoint = _one(template, "AWS::EC2::VPCEndpoint", "NetworkVpcDynamoDb")
    table, _ = _one(template, "AWS::DynamoDB::Table", "StorageControl")
    (statement,) = endpoint["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Resource"] == [{"Fn::GetAtt": [table, "Arn"]},
                                     {"Fn::Join": ["", [{"Fn::GetAtt": [table, "Arn"]}, "/index/*"]]}]
    assert all(action.startswith("dynamodb:") and "*" not in action for action in statement["Action"])
    assert not {"dynamodb:DeleteTable", "dynamodb:CreateTable", "dynamodb:UpdateTable"} & set(statement["Action"])
    assert statement["Condition"] == {"StringEquals": {"aws:PrincipalAccount": {"Ref": "AWS::AccountId"}}}


@pytest.mark.parametrize("name", ["Data", "Audit", "Control"])
def test_data_protecting_keys_deny_use_outside_the_vpc_except_through_at_rest_services(
        synthesized_app: Any, name: str) -> None:
    template = synthesized_app.template()
    vpc, _ = _one(template, "AWS::EC2::VPC", "NetworkVpc")
    _, key = _one(template, "AWS::KMS::Key", f"Keys{name}")
    deny = _statement(key["Properties"]["KeyPolicy"]["Statement"], "DenyUseOutsideTheVpc")
    assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": "*"} and deny["Resource"] == "*"
    assert sorted(deny["Action"]) == sorted(KEY_CRYPTO_ACTIONS)
    not_equals = deny["Condition"]["StringNotEquals"]
    assert not_equals["aws:SourceVpc"] == {"Ref": vpc}
    assert sorted(not_equals["kms:ViaService"]) == sorted(
        f"{s}.eu-west-1.amazonaws.com" for s in ("s3", "dynamodb", "ec2", "secretsmanager"))
    # Only the data key carries the webhook delivery Lambda's purpose (it runs outside the VPC by design).
    assert not_equals.get("kms:EncryptionContext:purpose") == (["webhook-secret"] if name == "Data" else None)
    assert deny["Condition"]["ArnNotEquals"] == {"aws:PrincipalArn": [_break_glass(template)]}


@pytest.mark.parametrize("name", ["Logs", "Notifications"])
def test_service_keys_are_not_restricted_to_the_vpc(synthesized_app: Any, name: str) -> None:
    """CloudWatch Logs, SNS and SQS use these as themselves, from outside any VPC."""
    _, key = _one(synthesized_app.template(), "AWS::KMS::Key", f"Keys{name}")
    assert not [s for s in key["Properties"]["KeyPolicy"]["Statement"] if s.get("Sid") == "DenyUseOutsideTheVpc"]


def test_break_glass_role_needs_mfa_lasts_an_hour_and_holds_no_permissions(synthesized_app: Any) -> None:
    template = synthesized_app.template()
    name, role = _one(template, "AWS::IAM::Role", "PerimeterBreakGlass")
    properties = role["Properties"]
    assert properties["RoleName"] == "HardenedDuck-break-glass"
    assert properties["MaxSessionDuration"] == 3600
    (trust,) = properties["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Condition"] == {"Bool": {"aws:MultiFactorAuthPresent": "true"}}
    assert "ManagedPolicyArns" not in properties and "Policies" not in properties
    for resource in template["Resources"].values():
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            assert {"Ref": name} not in resource["Properties"].get("Roles", [])


def _perimeter_stack(context: dict[str, Any]) -> Template:
    app = App(context=context)
    stack = Stack(app, "PerimeterTest")
    vpc = ec2.Vpc(stack, "Vpc", nat_gateways=0, subnet_configuration=[
        ec2.SubnetConfiguration(name="Private", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)])
    perimeter = Perimeter(stack, "Perimeter", vpc=vpc,
                          s3_endpoint=vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3),
                          dynamodb_endpoint=vpc.add_gateway_endpoint(
                              "Ddb", service=ec2.GatewayVpcEndpointAwsService.DYNAMODB))
    perimeter.restrict_bucket(s3.Bucket(stack, "Bucket"))
    perimeter.restrict_key(kms.Key(stack, "Key"))
    return Template.from_stack(stack)


def test_context_exemptions_join_the_break_glass_role_on_buckets_and_keys() -> None:
    loader = "arn:aws:iam::123456789012:role/data-loader"
    template = _perimeter_stack({CONTEXT_EXEMPT_PRINCIPALS: loader})
    exempt = {"aws:PrincipalArn": [Match.any_value(), loader]}
    template.has_resource_properties("AWS::S3::BucketPolicy", {"PolicyDocument": {"Statement": Match.array_with([
        Match.object_like({"Sid": "DenyDataAccessOutsideTheVpcEndpoint",
                           "Condition": Match.object_like({"ArnNotEquals": exempt})})])}})
    template.has_resource_properties("AWS::KMS::Key", {"KeyPolicy": {"Statement": Match.array_with([
        Match.object_like({"Sid": "DenyUseOutsideTheVpc", "Condition": Match.object_like({"ArnNotEquals": exempt})})
    ])}})


@pytest.mark.parametrize("value", [
    "arn:aws:iam::123456789012:role/*", "arn:aws:s3:::bucket", "data-loader", "arn:aws:iam::acct:role/x",
    "arn:aws:iam::123456789012:group/admins",
])
def test_context_exemptions_must_name_iam_roles_or_users(value: str) -> None:
    app = App(context={CONTEXT_EXEMPT_PRINCIPALS: [value]})
    with pytest.raises(ValueError, match=CONTEXT_EXEMPT_PRINCIPALS):
        exempt_principals_from_context(app)


def test_no_context_means_no_exemption_beyond_break_glass() -> None:
    assert exempt_principals_from_context(App()) == []
    assert exempt_principals_from_context(App(context={CONTEXT_EXEMPT_PRINCIPALS: " , "})) == []
