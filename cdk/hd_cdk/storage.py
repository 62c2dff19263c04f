"""Buckets and the control table.

Security decisions visible here:
- every bucket: public access blocked, TLS 1.2+ only (bucket policy denies `aws:SecureTransport=false`),
  versioned, owner-enforced (no ACLs), retained when the stack is deleted;
- data bucket: SSE-KMS with the data key and an S3 bucket key; server access logs to the access-log bucket;
- audit bucket: its own key, Object Lock in GOVERNANCE mode with a 7-year default retention, lifecycle to
  Glacier at 90 days and Deep Archive at 365 days; nobody gets `s3:DeleteObject` on it (or anywhere);
- access-log bucket: SSE-S3, because S3 server access logging cannot deliver to SSE-KMS buckets;
- control table: the one key schema of `hd_core.adapters.dynamodb_schema`, CMEK, PITR, deletion protection.
"""

from __future__ import annotations

from typing import Any, cast

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from hd_cdk import constants
from hd_cdk.nag import acknowledge
from hd_core.adapters.dynamodb_schema import TTL_ATTRIBUTE, create_table_kwargs

_ATTRIBUTE_TYPES = {
    "S": dynamodb.AttributeType.STRING,
    "N": dynamodb.AttributeType.NUMBER,
    "B": dynamodb.AttributeType.BINARY,
}
_BILLING_MODES = {
    "PAY_PER_REQUEST": dynamodb.BillingMode.PAY_PER_REQUEST,
    "PROVISIONED": dynamodb.BillingMode.PROVISIONED,
}
_PROJECTIONS = {
    "ALL": dynamodb.ProjectionType.ALL,
    "KEYS_ONLY": dynamodb.ProjectionType.KEYS_ONLY,
    "INCLUDE": dynamodb.ProjectionType.INCLUDE,
}

_REPLICATION_REASON = (
    "Single-Region by design: seed 003 data residency keeps customer data in the deployment Region; durability "
    "comes from S3 (11 nines) plus versioning, and customers needing a second Region add replication to their "
    "own destination bucket and key."
)
_REPLICATION_RULES = (
    "HIPAA.Security-S3BucketReplicationEnabled",
    "NIST.800.53.R5-S3BucketReplicationEnabled",
    "PCI.DSS.321-S3BucketReplicationEnabled",
)


def _key_schema(
    elements: list[dict[str, str]], types: dict[str, str]
) -> tuple[dynamodb.Attribute, dynamodb.Attribute | None]:
    """`KeySchema` elements as the CDK (partition key, sort key) pair."""
    keys = {
        element["KeyType"]: dynamodb.Attribute(
            name=element["AttributeName"], type=_ATTRIBUTE_TYPES[types[element["AttributeName"]]]
        )
        for element in elements
    }
    return keys["HASH"], keys.get("RANGE")


class Storage(Construct):
    """Data, audit and access-log buckets, and the DynamoDB control table.

    Attributes: `data_bucket`, `audit_bucket`, `access_log_bucket`, `table`.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        data_key: kms.IKey,
        audit_key: kms.IKey,
        table_key: kms.IKey,
    ) -> None:
        super().__init__(scope, id)
        self.access_log_bucket = self._access_log_bucket()
        self.data_bucket = s3.Bucket(
            self,
            "Data",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=data_key,
            bucket_key_enabled=True,  # one KMS call per bucket key, not per object
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix="data/",
            **self._baseline(),
        )
        for rule_id in _REPLICATION_RULES:
            acknowledge(self.data_bucket, rule_id, _REPLICATION_REASON)
        self.audit_bucket = self._audit_bucket(audit_key)
        self.table = self._control_table(table_key)

    @staticmethod
    def _baseline() -> dict[str, Any]:
        """What every bucket has."""
        return {
            "block_public_access": s3.BlockPublicAccess.BLOCK_ALL,
            "enforce_ssl": True,
            "minimum_tls_version": 1.2,
            "versioned": True,
            "object_ownership": s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            "removal_policy": RemovalPolicy.RETAIN,
        }

    def _access_log_bucket(self) -> s3.Bucket:
        # Not logged into itself (that would log its own deliveries); cdk-nag exempts log-destination buckets.
        bucket = s3.Bucket(self, "AccessLogs", encryption=s3.BucketEncryption.S3_MANAGED, **self._baseline())
        sse_s3_reason = (
            "S3 server access logging delivers only to buckets encrypted with SSE-S3 (AES256), not SSE-KMS; "
            "this bucket holds only access logs of our buckets, no customer data."
        )
        for rule_id in ("HIPAA.Security-S3DefaultEncryptionKMS", "NIST.800.53.R5-S3DefaultEncryptionKMS",
                        "PCI.DSS.321-S3DefaultEncryptionKMS"):
            acknowledge(bucket, rule_id, sse_s3_reason)
        for rule_id in _REPLICATION_RULES:
            acknowledge(bucket, rule_id, _REPLICATION_REASON)
        return bucket

    def _audit_bucket(self, key: kms.IKey) -> s3.Bucket:
        bucket = s3.Bucket(
            self,
            "Audit",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=key,
            bucket_key_enabled=True,
            object_lock_enabled=True,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ArchiveAuditRecords",
                    transitions=[
                        s3.Transition(
                            storage_class=s3.StorageClass.GLACIER,
                            transition_after=Duration.days(constants.AUDIT_GLACIER_AFTER_DAYS),
                        ),
                        s3.Transition(
                            storage_class=s3.StorageClass.DEEP_ARCHIVE,
                            transition_after=Duration.days(constants.AUDIT_DEEP_ARCHIVE_AFTER_DAYS),
                        ),
                    ],
                )
            ],
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix="audit/",
            **self._baseline(),
        )
        # GOVERNANCE, not COMPLIANCE: a named break-glass role can still correct a mistaken write, and every
        # such bypass is itself recorded by CloudTrail. In years, not days: 7 * 365 days falls short of
        # 7 calendar years by the leap days (the CDK L2 only takes a Duration, rendered as days).
        cfn_bucket = cast(s3.CfnBucket, bucket.node.default_child)
        cfn_bucket.add_property_override(
            "ObjectLockConfiguration",
            {
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Years": constants.AUDIT_RETENTION_YEARS}},
            },
        )
        for rule_id in _REPLICATION_RULES:
            acknowledge(bucket, rule_id, _REPLICATION_REASON)
        return bucket

    def _control_table(self, key: kms.IKey) -> dynamodb.Table:
        # The same definition the adapter and the moto tests create; the name is CloudFormation's choice.
        schema = create_table_kwargs(table_name="unused-cloudformation-names-the-table")
        types = {d["AttributeName"]: d["AttributeType"] for d in schema["AttributeDefinitions"]}
        partition_key, sort_key = _key_schema(schema["KeySchema"], types)
        table = dynamodb.Table(
            self,
            "Control",
            partition_key=partition_key,
            sort_key=sort_key,
            billing_mode=_BILLING_MODES[schema["BillingMode"]],
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=key,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            deletion_protection=True,
            removal_policy=RemovalPolicy.RETAIN,
            # Brute-force failure records (of names nobody holds too) are deleted once they expire.
            time_to_live_attribute=TTL_ATTRIBUTE,
        )
        backup_reason = (
            "Point-in-time recovery is on (continuous backups, any second of the last 35 days) and deletion "
            "protection blocks table deletion; scheduled AWS Backup plans are set organisation-wide by the "
            "customer's backup policy, which a per-stack plan would duplicate."
        )
        for rule_id in ("HIPAA.Security-DynamoDBInBackupPlan", "NIST.800.53.R5-DynamoDBInBackupPlan"):
            acknowledge(table, rule_id, backup_reason)
        for index in schema.get("GlobalSecondaryIndexes", []):
            projection = index["Projection"]
            index_partition_key, index_sort_key = _key_schema(index["KeySchema"], types)
            table.add_global_secondary_index(
                index_name=index["IndexName"],
                partition_key=index_partition_key,
                sort_key=index_sort_key,
                projection_type=_PROJECTIONS[projection["ProjectionType"]],
                non_key_attributes=projection.get("NonKeyAttributes"),
            )
        return table
