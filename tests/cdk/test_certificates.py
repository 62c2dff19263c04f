"""Certificate rotation in CDK (issue 21, item 6): the function, its grants, endpoint and schedule, cdk-nag clean."""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, CfnParameter, Environment, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_

from hd_cdk import constants
from hd_cdk.certificates import (
    CONTEXT_PRIVATE_CA_ARN,
    END_ENTITY_TEMPLATE,
    ROTATE_AFTER_DAYS,
    CertificateRotation,
    private_ca_arn,
)
from hd_cdk.nag import apply_packs

CA_ARN = "arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/12345678-1234-1234-1234-123456789012"
REPO = Path(__file__).resolve().parents[2]


@lru_cache(maxsize=1)
def synth() -> tuple[dict[str, Any], dict[str, Any]]:
    app = App(context={constants.CONTEXT_BUNDLING: "false"}, outdir=tempfile.mkdtemp(prefix="hd-cert-cdk-"))
    apply_packs(app)
    stack = Stack(app, "CertTest", env=Environment(account="123456789012", region="eu-west-1"))
    vpc = ec2.Vpc.from_vpc_attributes(
        stack, "Vpc", vpc_id="vpc-0123456789abcdef0", availability_zones=["eu-west-1a", "eu-west-1b"],
        isolated_subnet_ids=["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2"], vpc_cidr_block="10.42.0.0/16")
    secret = CfnParameter(stack, "TlsCertificateBundleArn")
    lambda_sg = ec2.SecurityGroup.from_security_group_id(stack, "LambdaSg", "sg-0aaaabbbbccccdddd")
    endpoint_sg = ec2.SecurityGroup.from_security_group_id(stack, "EndpointSg", "sg-0123456789abcdef0")
    CertificateRotation(
        stack, "Certificates", secret_arn=secret.value_as_string, ca_arn=CA_ARN,
        data_key=kms.Key.from_key_arn(stack, "DataKey", "arn:aws:kms:eu-west-1:123456789012:key/abcd"),
        vpc=vpc, subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED), lambda_sg=lambda_sg,
        endpoint_sg=endpoint_sg,
        logs_key=kms.Key.from_key_arn(stack, "LogsKey", "arn:aws:kms:eu-west-1:123456789012:key/logs"),
        code=lambda_.Code.from_asset(str(REPO / "functions")), layers=[])
    try:
        assembly = app.synth()
    except RuntimeError as failure:  # cdk-nag's ValidationFailed, with the report
        pytest.fail(f"synth failed:\n{failure}")
    report = json.loads((Path(assembly.directory) / "validation-report.json").read_text(encoding="utf-8"))
    return assembly.get_stack_by_name("CertTest").template, report


def _of(template: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for r in template["Resources"].values() if r["Type"] == kind]


def test_the_secret_rotates_every_60_days_through_the_function() -> None:
    template, _ = synth()
    (schedule,) = _of(template, "AWS::SecretsManager::RotationSchedule")
    assert schedule["Properties"]["SecretId"] == {"Ref": "TlsCertificateBundleArn"}
    assert schedule["Properties"]["RotationRules"] == {"AutomaticallyAfterDays": ROTATE_AFTER_DAYS}
    (function,) = _of(template, "AWS::Lambda::Function")
    assert function["Properties"]["Handler"] == "functions.cert_rotation.handler.lambda_handler"
    assert function["Properties"]["Environment"]["Variables"]["HD_CERT_CA_ARN"] == CA_ARN
    assert "VpcConfig" in function["Properties"]
    (permission,) = _of(template, "AWS::Lambda::Permission")
    assert permission["Properties"]["Principal"] == "secretsmanager.amazonaws.com"
    assert permission["Properties"]["SourceAccount"] == {"Ref": "AWS::AccountId"}


def test_the_role_reaches_the_one_secret_the_one_ca_and_the_data_key_through_secrets_manager() -> None:
    template, _ = synth()
    (policy,) = _of(template, "AWS::IAM::ManagedPolicy")
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    by_action = {a: s for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert by_action["secretsmanager:PutSecretValue"]["Resource"] == {"Ref": "TlsCertificateBundleArn"}
    assert by_action["acm-pca:IssueCertificate"]["Resource"] == CA_ARN
    assert by_action["acm-pca:IssueCertificate"]["Condition"] == {
        "StringEquals": {"acm-pca:TemplateArn": END_ENTITY_TEMPLATE}}
    assert by_action["kms:Decrypt"]["Condition"]["StringEquals"]["kms:ViaService"] == {
        "Fn::Join": ["", ["secretsmanager.", {"Ref": "AWS::Region"}, ".amazonaws.com"]]}
    assert not [a for a in by_action if a.endswith("*") or a.startswith("secretsmanager:Delete")]


def test_acm_pca_is_reached_through_an_interface_endpoint_of_the_endpoint_group() -> None:
    template, _ = synth()
    (endpoint,) = [e for e in _of(template, "AWS::EC2::VPCEndpoint") if "acm-pca" in json.dumps(e)]
    assert endpoint["Properties"]["VpcEndpointType"] == "Interface"
    assert endpoint["Properties"]["PrivateDnsEnabled"] is True


def test_cdk_nag_packs_pass_with_reasons() -> None:
    _, report = synth()
    unacknowledged = [v for plugin in report.get("pluginReports", []) for v in plugin.get("violations", [])
                      if not v.get("acknowledged")]
    assert [v for v in unacknowledged if v.get("severity") != "warning"] == []


@pytest.mark.parametrize("value", ["arn:aws:acm:eu-west-1:123456789012:certificate/x", "ca", "arn:aws:s3:::b"])
def test_a_context_ca_arn_must_be_a_private_ca(value: str) -> None:
    with pytest.raises(ValueError, match=CONTEXT_PRIVATE_CA_ARN):
        private_ca_arn(App(context={CONTEXT_PRIVATE_CA_ARN: value}))


def test_no_context_means_no_rotation_function() -> None:
    assert private_ca_arn(App()) is None
    assert private_ca_arn(App(context={CONTEXT_PRIVATE_CA_ARN: CA_ARN})) == CA_ARN


def test_the_app_with_a_private_ca_synthesizes_with_the_rotation_cdk_nag_clean(synthesized_app: Any) -> None:
    """The whole app with context hd:privateCaArn (the shared session synth has one): the stack wires the rotation,
    and every pack still passes."""
    template = synthesized_app.template()  # fails the test with the synth's error (cdk-nag) when it failed
    (schedule,) = _of(template, "AWS::SecretsManager::RotationSchedule")
    assert schedule["Properties"]["SecretId"] == {"Ref": "TlsCertificateBundleArn"}
