"""Customer-managed KMS keys: data, audit, control state, JWT and IAM-checkpoint signing, logs, notifications.

Security decisions visible here:
- every key is customer-managed (seed 002: CMEK required, no AWS-managed keys anywhere);
- symmetric keys rotate yearly; the two asymmetric signing keys cannot (KMS does not rotate asymmetric
  keys): rotating them means a new key and a verifier that accepts both during the overlap (the JWT key is
  replaced on a schedule by the lifecycle job, lifecycle.py: this one is its first);
- key policies are CDK's default: the account root holds `kms:*` on its own key, as AWS recommends, so the
  key can never become unmanageable; every role gets key use through IAM grants on the key ARN, so no role
  is ever given `kms:*`, nor `kms:ScheduleKeyDeletion` except the lifecycle job for retired JWT signing keys
  only (the stacks' tests scan the whole template for that);
- keys are retained when the stack is deleted: they protect Object-Locked audit records and retained data;
- the data key can be the customer's own (a key ARN), in which case we create no data key at all.
"""

from __future__ import annotations

import re

from aws_cdk import CfnCondition, CfnResource, Duration, Fn, RemovalPolicy, Stack, Token
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

# A customer-supplied data key: a key ARN (multi-Region `mrk-` keys included), same partition as the stack.
KEY_ARN_PATTERN = r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[a-zA-Z0-9-]+$"

# What CloudWatch Logs needs on the logs key (explicit actions, no wildcard).
_LOGS_SERVICE_ACTIONS = (
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:DescribeKey",
)

_KEY_DELETION_WINDOW = Duration.days(30)  # the maximum: a mistaken deletion can be cancelled for a month


def validate_key_arn(arn: str) -> str:
    """A concrete customer-supplied key ARN, checked; ValueError otherwise (aliases do not grant key use)."""
    if not re.fullmatch(KEY_ARN_PATTERN, arn):
        raise ValueError(
            f"data key {arn!r} is not a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>); "
            "aliases cannot be used because IAM grants on an alias ARN do not cover the key"
        )
    return arn


class Keys(Construct):
    """The deployment's KMS keys.

    Attributes: `data` (IKey: ours or the customer's), `audit`, `control` (the control table), `signing`
    (RSA_2048 SIGN_VERIFY, API JWTs), `checkpoint` (ECC_NIST_P256 SIGN_VERIFY, IAM checkpoints), `logs`
    (CloudWatch Logs: flow logs, Lambda and API access logs), `notifications` (SNS topics, dead-letter
    queues); `created_data_key` is our data key when we may create one (None for a concrete customer ARN).

    `data_key_arn`: None creates our data key; a concrete ARN imports it; an unresolved token (a
    CfnParameter that may be empty) creates our key only when the parameter is empty, at deploy time.
    """

    def __init__(self, scope: Construct, id: str, *, data_key_arn: str | None = None) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self._alias_prefix = f"alias/{stack.stack_name}"

        self.created_data_key: kms.Key | None = None
        self.data: kms.IKey
        if data_key_arn is None:
            self.created_data_key = self._symmetric("Data", "Warehouse data: S3 objects and engine cache volumes")
            self.data = self.created_data_key
        elif Token.is_unresolved(data_key_arn):
            self.data = self._data_key_unless_supplied(data_key_arn)
        else:
            self.data = kms.Key.from_key_arn(self, "CustomerDataKey", validate_key_arn(data_key_arn))

        self.audit = self._symmetric("Audit", "Audit records and IAM checkpoints (Object-Locked bucket)")
        self.control = self._symmetric("Control", "Control-plane state (DynamoDB control table)")
        self.logs = self._symmetric("Logs", "CloudWatch Logs: VPC flow logs, Lambda and API access logs")
        self._allow_cloudwatch_logs(self.logs)
        # Service principals (SNS, SQS, EventBridge, CloudWatch) are allowed by the construct that uses it.
        self.notifications = self._symmetric("Notifications", "SNS alarm topics and SQS dead-letter queues")
        self.signing = self._asymmetric("Signing", "Signs API JWTs (RS256)", kms.KeySpec.RSA_2048)
        self.checkpoint = self._asymmetric("Checkpoint", "Signs IAM checkpoints (ES256)", kms.KeySpec.ECC_NIST_P256)

    def _symmetric(self, name: str, description: str) -> kms.Key:
        return kms.Key(
            self,
            name,
            description=f"Hardened Duck: {description}",
            alias=f"{self._alias_prefix}/{name.lower()}",
            enable_key_rotation=True,
            rotation_period=Duration.days(365),
            pending_window=_KEY_DELETION_WINDOW,
            removal_policy=RemovalPolicy.RETAIN,
        )

    def _asymmetric(self, name: str, description: str, spec: kms.KeySpec) -> kms.Key:
        key = kms.Key(
            self,
            name,
            description=f"Hardened Duck: {description}",
            alias=f"{self._alias_prefix}/{name.lower()}",
            key_spec=spec,
            key_usage=kms.KeyUsage.SIGN_VERIFY,
            enable_key_rotation=False,  # not supported for asymmetric keys (see module docstring)
            pending_window=_KEY_DELETION_WINDOW,
            removal_policy=RemovalPolicy.RETAIN,
        )
        # cdk-nag's rotation rules apply to symmetric keys only, so nothing to acknowledge here.
        return key

    def _data_key_unless_supplied(self, data_key_arn: str) -> kms.IKey:
        """Our data key under a condition (parameter empty), and the key in use chosen at deploy time."""
        none_supplied = CfnCondition(self, "CreateDataKey", expression=Fn.condition_equals(data_key_arn, ""))
        created = self._symmetric("Data", "Warehouse data: S3 objects and engine cache volumes")
        for child in created.node.find_all():  # the key and its alias
            if isinstance(child, CfnResource):
                child.cfn_options.condition = none_supplied
        self.created_data_key = created
        in_use = Fn.condition_if(none_supplied.logical_id, created.key_arn, data_key_arn).to_string()
        return kms.Key.from_key_arn(self, "DataKeyInUse", in_use)

    def _allow_cloudwatch_logs(self, key: kms.Key) -> None:
        stack = Stack.of(self)
        key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchLogsOfThisAccount",
                principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
                actions=list(_LOGS_SERVICE_ACTIONS),
                resources=["*"],  # in a key policy "*" means this key
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": (
                            f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:log-group:*"
                        )
                    }
                },
            )
        )
