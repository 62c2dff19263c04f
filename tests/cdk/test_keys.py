"""Keys: customer-managed, rotating where KMS can rotate, retained, and no `kms:*` for anyone but the root."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk import App, Environment, Stack
from aws_cdk.assertions import Template

from hd_cdk.keys import Keys, validate_key_arn

ACCOUNT_ROOT = "arn:aws:iam::123456789012:root"
CUSTOMER_KEY = "arn:aws:kms:eu-west-1:999988887777:key/mrk-1234abcd12ab34cd56ef1234567890ab"


def _keys(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == "AWS::KMS::Key"}


def _key(template: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [r for k, r in _keys(template).items() if k.startswith(f"Keys{name}")]
    return found


def _keys_only(data_key_arn: str | None) -> tuple[Keys, dict[str, Any]]:
    app = App()
    stack = Stack(app, "KeysOnly", env=Environment(account="123456789012", region="eu-west-1"))
    keys = Keys(stack, "Keys", data_key_arn=data_key_arn)
    return keys, dict(Template.from_stack(stack).to_json())


def test_symmetric_keys_rotate_yearly(synthesized_app: Any) -> None:
    template = synthesized_app.template()
    for name in ("Data", "Audit", "Control", "Logs", "Notifications"):
        properties = _key(template, name)["Properties"]
        assert properties["EnableKeyRotation"] is True, name
        assert properties["RotationPeriodInDays"] == 365, name
        assert properties.get("KeySpec", "SYMMETRIC_DEFAULT") == "SYMMETRIC_DEFAULT", name


def test_signing_keys_are_asymmetric_sign_verify_and_cannot_rotate(synthesized_app: Any) -> None:
    template = synthesized_app.template()
    signing = _key(template, "Signing")["Properties"]
    checkpoint = _key(template, "Checkpoint")["Properties"]
    assert (signing["KeySpec"], signing["KeyUsage"]) == ("RSA_2048", "SIGN_VERIFY")
    assert (checkpoint["KeySpec"], checkpoint["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")
    assert signing["EnableKeyRotation"] is False and checkpoint["EnableKeyRotation"] is False


def test_keys_are_retained_with_the_longest_deletion_window(synthesized_app: Any) -> None:
    keys = _keys(synthesized_app.template())
    assert len(keys) >= 7
    for logical_id, key in keys.items():
        assert key["DeletionPolicy"] == "Retain", logical_id
        assert key["Properties"]["PendingWindowInDays"] == 30, logical_id


def test_only_the_account_root_holds_wildcard_key_actions(synthesized_app: Any) -> None:
    for logical_id, key in _keys(synthesized_app.template()).items():
        for statement in key["Properties"]["KeyPolicy"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if any("*" in action for action in actions) or "kms:ScheduleKeyDeletion" in actions:
                assert statement["Principal"] == {"AWS": ACCOUNT_ROOT}, (logical_id, statement)


def test_logs_key_lets_cloudwatch_logs_of_this_account_only(synthesized_app: Any) -> None:
    statements = _key(synthesized_app.template(), "Logs")["Properties"]["KeyPolicy"]["Statement"]
    (service,) = [s for s in statements if "Service" in s["Principal"]]
    assert service["Principal"] == {"Service": "logs.eu-west-1.amazonaws.com"}
    assert service["Condition"] == {
        "ArnLike": {"kms:EncryptionContext:aws:logs:arn": "arn:aws:logs:eu-west-1:123456789012:log-group:*"}
    }
    assert all("*" not in action for action in service["Action"])


def test_data_key_is_created_only_when_the_data_key_parameter_is_empty(synthesized_app: Any) -> None:
    template = synthesized_app.template()
    data_key_id, data_key = next((k, r) for k, r in _keys(template).items() if k.startswith("KeysData"))
    condition = data_key["Condition"]
    assert template["Conditions"][condition] == {"Fn::Equals": [{"Ref": "DataKeyArn"}, ""]}
    key_and_alias = [r for k, r in template["Resources"].items() if k.startswith("KeysData")]
    assert sorted(r["Type"] for r in key_and_alias) == ["AWS::KMS::Alias", "AWS::KMS::Key"]
    assert all(r["Condition"] == condition for r in key_and_alias)
    (bucket,) = [r for k, r in template["Resources"].items() if k.startswith("StorageData")
                 and r["Type"] == "AWS::S3::Bucket"]
    (sse,) = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse["ServerSideEncryptionByDefault"]["KMSMasterKeyID"] == {
        "Fn::If": [condition, {"Fn::GetAtt": [data_key_id, "Arn"]}, {"Ref": "DataKeyArn"}]
    }


def test_customer_supplied_data_key_replaces_ours() -> None:
    keys, template = _keys_only(CUSTOMER_KEY)
    assert keys.created_data_key is None
    assert keys.data.key_arn == CUSTOMER_KEY
    assert not [k for k in _keys(template) if k.startswith("KeysData")]
    assert len(_keys(template)) == 6  # audit, control, logs, notifications, signing, checkpoint


def test_without_a_customer_key_the_data_key_is_ours_unconditionally() -> None:
    keys, template = _keys_only(None)
    assert keys.created_data_key is not None and keys.data is keys.created_data_key
    data_key = _key(template, "Data")
    assert "Condition" not in data_key and data_key["Properties"]["EnableKeyRotation"] is True


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:kms:eu-west-1:123456789012:alias/hd-data",
        "arn:aws:s3:::some-bucket",
        "1234abcd-12ab-34cd-56ef-1234567890ab",
        "",
    ],
)
def test_data_key_arn_must_be_a_kms_key_arn(arn: str) -> None:
    with pytest.raises(ValueError, match="not a KMS key ARN"):
        validate_key_arn(arn)


def test_invalid_customer_key_fails_at_synth_not_at_deploy() -> None:
    with pytest.raises(ValueError, match="not a KMS key ARN"):
        _keys_only("alias/customer-data")
