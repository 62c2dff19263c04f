"""The app: cdk.json context and feature flags, fixed environment, parameters, offline synth, cfn-lint clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import aws_cdk
import pytest
from aws_cdk import Stack

from hd_cdk import constants
from tests.cdk.conftest import CDK_DIR, TEST_CONTEXT, load_app_module

app_module = load_app_module()


def _recommended_feature_flags() -> dict[str, Any]:
    """What `cdk init` writes into cdk.json for the installed aws-cdk-lib (shipped inside its jsii tarball)."""
    (tarball,) = (Path(aws_cdk.__file__).parent / "_jsii").glob("aws-cdk-lib@*.jsii.tgz")
    with tarfile.open(tarball) as archive:
        member = archive.extractfile("package/recommended-feature-flags.json")
        assert member is not None
        return dict(json.load(member))


def test_cdk_json_runs_the_app_and_carries_the_recommended_feature_flags() -> None:
    document = json.loads((CDK_DIR.parent / "cdk.json").read_text(encoding="utf-8"))
    assert document["app"] == "python3 cdk/app.py"
    recommended = _recommended_feature_flags()
    flags = {k: v for k, v in document["context"].items() if not k.startswith(("hd:", "availability-zones:"))}
    assert flags == recommended
    assert document["context"]["hd:bundling"] is True
    # The default (offline) account's zones, so the CLI never looks them up with credentials it lacks.
    assert document["context"]["availability-zones:account=123456789012:region=eu-west-1"] == [
        "eu-west-1a", "eu-west-1b", "eu-west-1c"]
    assert document["versionReporting"] is False


def test_build_app_reads_cdk_json_and_lets_the_caller_override(synthesized_app: Any) -> None:
    app = synthesized_app.app
    assert app.node.try_get_context("@aws-cdk/aws-s3:publicAccessBlockedByDefault") is True
    assert app.node.try_get_context("@aws-cdk/aws-ec2:restrictDefaultSecurityGroup") is True
    assert app.node.try_get_context(constants.CONTEXT_BUNDLING) is False  # the test's override wins


def test_stack_has_a_fixed_account_and_region_so_synth_is_offline(synthesized_app: Any) -> None:
    stack = synthesized_app.app.node.find_child(constants.STACK_NAME)
    assert isinstance(stack, Stack)
    assert (stack.account, stack.region) == (constants.DEFAULT_ACCOUNT, constants.DEFAULT_REGION)
    subnets = [r for r in synthesized_app.template()["Resources"].values() if r["Type"] == "AWS::EC2::Subnet"]
    assert sorted(s["Properties"]["AvailabilityZone"] for s in subnets) == ["eu-west-1a", "eu-west-1b"]


def test_deployment_parameters(synthesized_app: Any) -> None:
    parameters = synthesized_app.template()["Parameters"]
    assert parameters["TlsCertificateBundleArn"]["AllowedPattern"].startswith("^arn:aws[a-z-]*:secretsmanager:")
    assert parameters["OrganizationId"]["Type"] == "String"
    assert parameters["AllowedPrincipals"]["Type"] == "CommaDelimitedList"
    assert parameters["ApprovedCidrs"]["Default"] == ""
    assert parameters["Tier"]["AllowedValues"] == ["starter", "standard", "performance", "high_memory"]
    assert parameters["Tier"]["Default"] == "standard"
    assert (parameters["FleetMin"]["Type"], parameters["FleetMax"]["Type"]) == ("Number", "Number")
    assert parameters["DataKeyArn"]["Default"] == ""
    assert parameters["PrivateApi"]["AllowedValues"] == ["true", "false"]
    assert parameters["PrivateApi"]["Default"] == "true"  # the hosts' heartbeat reaches the API only privately


def test_region_without_a_known_prefix_list_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="hd:s3PrefixListId"):
        app_module.build_app(context={**TEST_CONTEXT, constants.CONTEXT_REGION: "ap-southeast-7"})


def test_world_open_approved_cidr_is_refused_at_synth() -> None:
    with pytest.raises(ValueError, match="every address"):
        app_module.build_app(context={**TEST_CONTEXT, constants.CONTEXT_APPROVED_CIDRS: "10.0.0.0/8,0.0.0.0/0"})


@pytest.mark.slow  # cfn-lint over the whole template: CI runs it (`pytest -m slow`)
def test_synthesized_template_has_no_cfn_lint_errors(synthesized_app: Any) -> None:
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(synthesized_app.template_path(), ManualArgs(regions=[constants.DEFAULT_REGION]))
    errors = [f"{m.rule.id} {m.message}" for m in matches if m.rule.id.startswith("E")]
    assert errors == []


def test_synth_time_and_template_size(synthesized_app: Any) -> None:
    size = synthesized_app.template_path().stat().st_size
    print(f"\nsynth (all four cdk-nag packs, bundling off): {synthesized_app.seconds:.1f} s; "
          f"template {size / 1024:.1f} KiB, {len(synthesized_app.template()['Resources'])} resources")
    assert size < 1_000_000  # CloudFormation's limit for a template uploaded through S3


def _allow_statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every Allow statement of every identity policy in the template (roles' inline, policies, managed)."""
    documents: list[tuple[str, dict[str, Any]]] = []
    for logical_id, resource in template["Resources"].items():
        properties = resource.get("Properties", {})
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            documents.append((logical_id, properties["PolicyDocument"]))
        elif resource["Type"] == "AWS::IAM::Role":
            documents += [(logical_id, p["PolicyDocument"]) for p in properties.get("Policies", [])]
    return [(logical_id, s) for logical_id, d in documents for s in d["Statement"] if s["Effect"] == "Allow"]


def test_no_role_may_use_wildcard_actions_delete_objects_or_schedule_key_deletion_but_to_retire_jwt_keys(
    synthesized_app: Any,
) -> None:
    statements = _allow_statements(synthesized_app.template())
    assert statements, "expected at least the flow-log delivery policy"
    for logical_id, statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in actions:
            assert "*" not in action, (logical_id, action)
            if action.startswith("s3:DeleteObject"):
                # One exception (issue 20): the GDPR forget worker deletes the replaced versions of the data bucket's
                # table files, which still hold the erased rows, by version id; never a delete marker.
                assert action == "s3:DeleteObjectVersion", (logical_id, action)
                assert logical_id.startswith("ControlApiForgetWorkerPolicy"), (logical_id, action)
                assert "StorageData" in json.dumps(statement["Resource"]), (logical_id, statement)
            if action == "kms:ScheduleKeyDeletion":
                # One exception (issue 19): the lifecycle job retires JWT signing keys, only those (the stack's
                # first by ARN, rotated ones by their tags), only with KMS's longest pending window.
                assert logical_id.startswith("LifecycleSigningKeyRotationPolicy"), (logical_id, action)
                assert statement["Resource"] != "*", (logical_id, statement)
                assert statement["Condition"]["NumericEquals"] == {"kms:ScheduleKeyDeletionPendingWindowInDays": 30}
                if isinstance(statement["Resource"], str):
                    assert statement["Condition"]["StringEquals"]["aws:ResourceTag/hd:purpose"] == "jwt-signing"


def test_outputs_name_what_the_next_steps_need(synthesized_app: Any) -> None:
    outputs = synthesized_app.template()["Outputs"]
    assert {"ControlTableName", "ControlApiUrl", "DataBucketName", "AuditBucketName", "EndpointServiceName",
            "EngineConfigParameter"} <= set(outputs)
    service = outputs["EndpointServiceName"]["Value"]["Fn::Join"][1]
    assert service[0] == "com.amazonaws.vpce.eu-west-1." and "Ref" in service[1]


def test_run_by_a_python_without_the_cdk_it_says_which_install_to_use(tmp_path: Path) -> None:
    shadow = tmp_path / "aws_cdk"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('not installed for this interpreter')\n")
    result = subprocess.run([sys.executable, str(CDK_DIR / "app.py")], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"cdk/app.py: the AWS CDK libraries are not installed for {sys.executable}: run "
        "`.venv/bin/pip install -e '.[cdk]'`, then `.venv/bin/python cdk/app.py`"]
