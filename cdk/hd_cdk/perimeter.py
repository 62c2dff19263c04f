"""The data perimeter: the buckets, the control table and the data-protecting keys answer only through the VPC.

Security decisions visible here (issue 21, item 4): stolen credentials of any role in this stack must not work
from outside the deployment's network.
- Every bucket denies object reads, writes and listings that do not arrive through the deployment's S3 gateway
  endpoint (`aws:SourceVpce`). Exempt: the break-glass role (created here, no permissions of its own, assumable
  only with MFA: in an emergency the security team attaches what is needed, itself a CloudTrail event), the
  principals listed in context `hd:perimeterExemptPrincipals` (e.g. a data-loading role), and AWS services
  delivering to a bucket as themselves (S3 server access logs, NLB access logs). Bucket configuration actions are
  not denied: CloudFormation's role manages the buckets from outside the VPC.
- The DynamoDB gateway endpoint's policy admits only item and query actions on this deployment's control table
  and its indexes: the VPC cannot be used to reach another table (or another account's).
- The data, audit and control keys deny cryptographic use unless the call comes from inside the VPC
  (`aws:SourceVpc`, the KMS interface endpoint) or through the AWS services that encrypt our data at rest for us
  (`kms:ViaService`: S3, DynamoDB, EC2 for EBS, Secrets Manager for the TLS secret), or from an exempt principal
  (the break-glass role, context exemptions), or with an exempt encryption-context purpose (the webhook
  delivery Lambda runs outside the VPC by design and seals webhook secrets with the data key under
  `purpose=webhook-secret`). S3 and DynamoDB themselves then enforce the endpoint rules above.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from aws_cdk import Aws, Duration, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

# Object-level and listing actions: what stolen credentials would use to read or plant data. Bucket configuration
# (policy, versioning, lifecycle) stays manageable by CloudFormation's role, which calls from outside the VPC.
BUCKET_DATA_ACTIONS: Final[tuple[str, ...]] = (
    "s3:GetObject*",
    "s3:PutObject*",
    "s3:ListBucket*",
    "s3:ListMultipartUploadParts",
    "s3:AbortMultipartUpload",
    "s3:DeleteObject*",
    "s3:RestoreObject",
    "s3:BypassGovernanceRetention",
)
# Item and query actions through the DynamoDB gateway endpoint (no table management, no other table).
TABLE_ENDPOINT_ACTIONS: Final[tuple[str, ...]] = (
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",
    "dynamodb:Query",
    "dynamodb:Scan",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:ConditionCheckItem",
    "dynamodb:TransactGetItems",
    "dynamodb:TransactWriteItems",
    "dynamodb:DescribeTable",
)
# Spelled out, not `kms:GenerateDataKey*`: wildcards in key policies are the account root's alone (test_keys).
KEY_CRYPTO_ACTIONS: Final[tuple[str, ...]] = (
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPairWithoutPlaintext",
)
# Services that use our keys on our behalf for data at rest; each enforces its own network rules (above).
KEY_VIA_SERVICES: Final[tuple[str, ...]] = ("s3", "dynamodb", "ec2", "secretsmanager")
BREAK_GLASS_ROLE_SUFFIX: Final = "break-glass"
CONTEXT_EXEMPT_PRINCIPALS: Final = "hd:perimeterExemptPrincipals"
_BREAK_GLASS_SESSION: Final = Duration.hours(1)


def exempt_principals_from_context(scope: Construct) -> list[str]:
    """IAM role/user ARNs from context `hd:perimeterExemptPrincipals` (a list or one comma-separated string).

    Allow list: each must be an IAM principal ARN of this partition shape; anything else fails the synth.
    """
    raw = scope.node.try_get_context(CONTEXT_EXEMPT_PRINCIPALS) or []
    values = [part.strip() for part in raw.split(",")] if isinstance(raw, str) else [str(v).strip() for v in raw]
    arns = [value for value in values if value]
    for arn in arns:
        parts = arn.split(":")
        if len(parts) != 6 or parts[0] != "arn" or parts[2] != "iam" or not parts[4].isdigit() or not (
                parts[5].startswith("role/") or parts[5].startswith("user/")):
            raise ValueError(f"context {CONTEXT_EXEMPT_PRINCIPALS}: {arn!r} is not an IAM role or user ARN")
        if "*" in arn or "?" in arn:
            raise ValueError(f"context {CONTEXT_EXEMPT_PRINCIPALS}: {arn!r} has a wildcard; name each principal")
    return arns


class Perimeter(Construct):
    """The break-glass role and the endpoint-only rules for buckets, the control table's endpoint and keys.

    Attributes: `break_glass_role`, `exempt_principal_arns` (break-glass first, then context exemptions).
    """

    def __init__(self, scope: Construct, construct_id: str, *, vpc: ec2.IVpc, s3_endpoint: ec2.IGatewayVpcEndpoint,
                 dynamodb_endpoint: ec2.GatewayVpcEndpoint, extra_exempt_principal_arns: Sequence[str] = ()) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self._vpc = vpc
        self._s3_endpoint = s3_endpoint
        self._dynamodb_endpoint = dynamodb_endpoint
        self.break_glass_role = iam.Role(
            self, "BreakGlass",
            role_name=f"{stack.stack_name}-{BREAK_GLASS_ROLE_SUFFIX}",
            # Humans of this account, with MFA, for an hour; no policy: permissions are attached when needed.
            assumed_by=iam.AccountRootPrincipal().with_conditions({"Bool": {"aws:MultiFactorAuthPresent": "true"}}),
            max_session_duration=_BREAK_GLASS_SESSION,
            description="Hardened Duck break-glass: exempt from the VPC-endpoint-only data perimeter; no permissions "
                        "until the security team attaches some (README, data perimeter)",
        )
        self.exempt_principal_arns: list[str] = [
            self.break_glass_role.role_arn, *exempt_principals_from_context(self), *extra_exempt_principal_arns]

    def restrict_bucket(self, bucket: s3.IBucket) -> None:
        """Deny data access to `bucket` unless through the S3 gateway endpoint, by an exempt principal or service."""
        bucket.add_to_resource_policy(iam.PolicyStatement(
            sid="DenyDataAccessOutsideTheVpcEndpoint",
            effect=iam.Effect.DENY,
            principals=[iam.AnyPrincipal()],
            actions=list(BUCKET_DATA_ACTIONS),
            resources=[bucket.bucket_arn, bucket.arn_for_objects("*")],
            conditions={
                "StringNotEquals": {"aws:SourceVpce": self._s3_endpoint.vpc_endpoint_id},
                "ArnNotEquals": {"aws:PrincipalArn": self.exempt_principal_arns},
                # Log deliveries (logging.s3 / delivery.logs) are AWS services calling as themselves.
                "BoolIfExists": {"aws:PrincipalIsAWSService": "false"},
            },
        ))

    def restrict_table_endpoint(self, table: dynamodb.ITable) -> None:
        """The DynamoDB gateway endpoint admits item and query actions on `table` and its indexes, nothing else."""
        self._dynamodb_endpoint.add_to_policy(iam.PolicyStatement(
            sid="ControlTableOnly",
            principals=[iam.AnyPrincipal()],
            actions=list(TABLE_ENDPOINT_ACTIONS),
            resources=[table.table_arn, f"{table.table_arn}/index/*"],
            # Only principals of this account: the endpoint cannot carry another account's credentials either.
            conditions={"StringEquals": {"aws:PrincipalAccount": Aws.ACCOUNT_ID}},
        ))

    def restrict_key(self, key: kms.Key, *, exempt_purposes: Sequence[str] = ()) -> None:
        """Deny cryptographic use of `key` outside the VPC, except through the at-rest services or by exemption.

        `exempt_purposes` are values of the `purpose` encryption context a function outside the VPC seals with (the
        webhook delivery Lambda's `webhook-secret`): named by context rather than by role, because the key policy
        naming that role would close a dependency cycle (role -> its policy -> this key -> role).
        """
        region = Stack.of(self).region
        not_equals: dict[str, object] = {
            "aws:SourceVpc": self._vpc.vpc_id,
            "kms:ViaService": [f"{service}.{region}.amazonaws.com" for service in KEY_VIA_SERVICES],
        }
        if exempt_purposes:
            not_equals["kms:EncryptionContext:purpose"] = list(exempt_purposes)
        key.add_to_resource_policy(iam.PolicyStatement(
            sid="DenyUseOutsideTheVpc",
            effect=iam.Effect.DENY,
            principals=[iam.AnyPrincipal()],
            actions=list(KEY_CRYPTO_ACTIONS),
            resources=["*"],  # in a key policy, "*" is this key
            conditions={
                # Every listed key must differ for the deny to apply: inside the VPC, via a service, or an exempt
                # purpose each lets the call through (a key absent from the request counts as differing).
                "StringNotEquals": not_equals,
                "ArnNotEquals": {"aws:PrincipalArn": self.exempt_principal_arns},
                "BoolIfExists": {"aws:PrincipalIsAWSService": "false"},
            },
        ))
