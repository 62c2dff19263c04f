"""Storage: buckets (CMEK, TLS-only, Object Lock, lifecycle) and the control table built from the one schema."""

from __future__ import annotations

from typing import Any

from aws_cdk.assertions import Match

from hd_cdk import constants
from hd_core.adapters.dynamodb_schema import TTL_ATTRIBUTE, create_table_kwargs


def _resource(template: dict[str, Any], prefix: str, type_: str) -> tuple[str, dict[str, Any]]:
    (found,) = [(k, r) for k, r in template["Resources"].items() if r["Type"] == type_ and k.startswith(prefix)]
    return found


def _bucket(template: dict[str, Any], name: str) -> dict[str, Any]:
    return _resource(template, f"Storage{name}", "AWS::S3::Bucket")[1]


def _key_arn(template: dict[str, Any], name: str) -> dict[str, Any]:
    logical_id, _ = _resource(template, f"Keys{name}", "AWS::KMS::Key")
    return {"Fn::GetAtt": [logical_id, "Arn"]}


def test_data_bucket_uses_the_data_key_with_a_bucket_key_and_access_logs(synthesized_app: Any) -> None:
    template = synthesized_app.template()
    properties = _bucket(template, "Data")["Properties"]
    (sse,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse["BucketKeyEnabled"] is True
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    access_logs, _ = _resource(template, "StorageAccessLogs", "AWS::S3::Bucket")
    assert properties["LoggingConfiguration"] == {
        "DestinationBucketName": {"Ref": access_logs},
        "LogFilePrefix": "data/",
    }


def test_audit_bucket_is_object_locked_in_governance_mode_for_seven_years(synthesized_app: Any) -> None:
    properties = _bucket(synthesized_app.template(), "Audit")["Properties"]
    assert properties["ObjectLockEnabled"] is True
    assert properties["ObjectLockConfiguration"] == {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Years": 7}},
    }


def test_audit_bucket_moves_to_glacier_at_90_days_and_deep_archive_at_365(synthesized_app: Any) -> None:
    properties = _bucket(synthesized_app.template(), "Audit")["Properties"]
    (rule,) = properties["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled"
    assert rule["Transitions"] == [
        {"StorageClass": "GLACIER", "TransitionInDays": 90},
        {"StorageClass": "DEEP_ARCHIVE", "TransitionInDays": 365},
    ]
    assert "ExpirationInDays" not in rule  # audit records are never expired by lifecycle


def test_audit_bucket_has_its_own_key(synthesized_app: Any) -> None:
    template = synthesized_app.template()
    (sse,) = _bucket(template, "Audit")["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse["ServerSideEncryptionByDefault"] == {"KMSMasterKeyID": _key_arn(template, "Audit"),
                                                    "SSEAlgorithm": "aws:kms"}


def test_every_bucket_blocks_public_access_is_versioned_owner_enforced_and_retained(synthesized_app: Any) -> None:
    buckets = {k: r for k, r in synthesized_app.template()["Resources"].items() if r["Type"] == "AWS::S3::Bucket"}
    assert len(buckets) >= 3
    for logical_id, bucket in buckets.items():
        properties = bucket["Properties"]
        assert properties["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
        }, logical_id
        assert properties["VersioningConfiguration"] == {"Status": "Enabled"}, logical_id
        assert properties["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}, logical_id
        assert bucket["DeletionPolicy"] == "Retain", logical_id


def test_every_bucket_policy_denies_plain_http_and_old_tls(synthesized_app: Any, stack_template: Any) -> None:
    template = synthesized_app.template()
    buckets = [k for k, r in template["Resources"].items() if r["Type"] == "AWS::S3::Bucket"]
    for bucket in buckets:
        resources = Match.array_with([{"Fn::GetAtt": [bucket, "Arn"]}])
        stack_template.has_resource_properties(
            "AWS::S3::BucketPolicy",
            {"Bucket": {"Ref": bucket}, "PolicyDocument": {"Statement": Match.array_with([
                Match.object_like({"Effect": "Deny", "Action": "s3:*", "Principal": {"AWS": "*"},
                                   "Condition": {"Bool": {"aws:SecureTransport": "false"}}, "Resource": resources}),
                Match.object_like({"Effect": "Deny", "Action": "s3:*", "Principal": {"AWS": "*"},
                                   "Condition": {"NumericLessThan": {"s3:TlsVersion": 1.2}}, "Resource": resources}),
            ])}},
        )


def test_no_aws_managed_keys_anywhere(synthesized_app: Any) -> None:
    """Every encryption setting names a customer-managed key; SSE-S3 only on the access-log bucket."""
    template = synthesized_app.template()
    access_logs, _ = _resource(template, "StorageAccessLogs", "AWS::S3::Bucket")
    assert "alias/aws/" not in str(template)
    for logical_id, resource in template["Resources"].items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::S3::Bucket":
            (sse,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
            default = sse["ServerSideEncryptionByDefault"]
            if logical_id == access_logs:  # server access logging only delivers to SSE-S3 buckets
                assert default == {"SSEAlgorithm": "AES256"}
            else:
                assert default["SSEAlgorithm"] == "aws:kms" and default["KMSMasterKeyID"], logical_id
        elif resource["Type"] == "AWS::DynamoDB::Table":
            assert properties["SSESpecification"]["SSEEnabled"] is True, logical_id
            assert properties["SSESpecification"]["SSEType"] == "KMS", logical_id
            assert properties["SSESpecification"]["KMSMasterKeyId"], logical_id
        elif resource["Type"] == "AWS::Logs::LogGroup":
            assert properties["KmsKeyId"], logical_id


def test_control_table_has_cmek_pitr_deletion_protection_and_is_retained(synthesized_app: Any) -> None:
    template = synthesized_app.template()
    _, table = _resource(template, "StorageControl", "AWS::DynamoDB::Table")
    properties = table["Properties"]
    assert properties["SSESpecification"]["KMSMasterKeyId"] == _key_arn(template, "Control")
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["DeletionProtectionEnabled"] is True
    assert table["DeletionPolicy"] == "Retain" and table["UpdateReplacePolicy"] == "Retain"


def test_control_table_schema_equals_the_adapters_create_table_kwargs(synthesized_app: Any) -> None:
    """Read back from the synthesized template, so the moto tests and the deployment cannot drift."""
    _, table = _resource(synthesized_app.template(), "StorageControl", "AWS::DynamoDB::Table")
    deployed = table["Properties"]
    expected = create_table_kwargs("any")

    def by_name(items: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
        return sorted(items, key=lambda item: item[key])

    assert deployed["KeySchema"] == expected["KeySchema"]
    assert by_name(deployed["AttributeDefinitions"], "AttributeName") == by_name(
        expected["AttributeDefinitions"], "AttributeName"
    )
    assert by_name(deployed["GlobalSecondaryIndexes"], "IndexName") == by_name(
        expected["GlobalSecondaryIndexes"], "IndexName"
    )
    assert deployed["BillingMode"] == expected["BillingMode"]


def test_control_table_expires_items_by_the_adapters_ttl_attribute(synthesized_app: Any) -> None:
    """Auth failure records carry it; without the table setting they would pile up forever."""
    _, table = _resource(synthesized_app.template(), "StorageControl", "AWS::DynamoDB::Table")
    assert table["Properties"]["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}


def test_audit_prefixes_are_the_documented_ones() -> None:
    assert (constants.AUDIT_QUERIES_PREFIX, constants.AUDIT_IAM_CHECKPOINTS_PREFIX) == (
        "audit/queries/", "audit/iam-checkpoints/",
    )
