"""Key lifecycle and webhook delivery in AWS (issue 19): the daily rotation job, the delivery queue and its Lambda.

Security decisions visible here:
- the key lifecycle Lambda (functions/key_lifecycle) runs daily on an EventBridge rule, and on demand through the
  control API's api_keys function (`POST /v1/organizations/{org}/keys/lifecycle-runs`). Both are built by
  `ControlApi.worker`/`ControlApi` like every control-plane function (isolated subnets, X-Ray, a KMS-encrypted
  log group, their own role with one policy): the control table, IAM checkpoints, and nothing else of theirs;
- a successor key's plaintext goes to a Secrets Manager secret the customer created under `hd/keys/<org_id>/`
  (key_admin refuses any other name): both functions may `secretsmanager:PutSecretValue` on secrets named under
  `hd/keys/` only, and use a KMS key only through Secrets Manager for such a secret (the customer's key policy
  must allow this account too when the secret is under a customer-managed key; `aws/secretsmanager` always
  does). They cannot create, describe, read or delete secrets: the delivery target must exist
  (`SecretsManagerDelivery` writes a new version, nothing else);
- webhook deliveries go through one SQS queue (KMS-encrypted with the notifications key, TLS enforced) with a
  dead-letter queue after `MAX_RECEIVE_COUNT` failed receives; the delivery Lambda consumes it with partial batch
  responses (one failed message is retried alone) and sweeps due deliveries every `SWEEP_EVERY` (a delivery
  whose first message was never sent). A non-empty dead-letter queue alarms to the notifications topic, as do
  the lifecycle job's and the delivery Lambda's own errors;
- every function that emits webhook events (`EMITTING_FUNCTIONS`: policy changes, role changes and user removal,
  JIT requests, key revocation, the lifecycle job; the delivery Lambda re-enqueues) gets `HD_WEBHOOK_QUEUE_URL`
  and `sqs:SendMessage` on this queue only, with the queue key only through SQS. The webhooks API function
  manages endpoints and emits nothing, so it gets neither;
- network: the delivery Lambda POSTs to customers' public HTTPS endpoints, and the isolated subnets have no
  route to the internet by design (network.py: no NAT gateway, no internet gateway; AWS services through VPC
  endpoints only). It therefore runs OUTSIDE the VPC, the one control-plane function that does: it needs only
  DynamoDB, SQS and KMS (public AWS endpoints, SigV4, TLS) and public HTTPS. Its SSRF guard
  (hd_core.webhook_delivery) refuses private, loopback and link-local addresses, so it reaches nothing of the
  VPC's (and outside the VPC there is nothing private to reach). Putting it in the VPC would need a NAT gateway
  and an internet route for the whole VPC, which the design excludes for the engine's sake;
- JWT signing keys rotate on the daily run (hd_core.signing_keys): KMS cannot rotate asymmetric keys, so the job
  creates a new RSA_2048 SIGN_VERIFY key. It may `kms:CreateKey` (and tag it) only with exactly the tags
  hd:purpose=jwt-signing and hd:deployment=<stack>, that spec and usage, and KMS-made material; it may read,
  disable and schedule the deletion (30-day window only) of keys carrying both tags, and of the stack's first
  signing key by ARN. Every function that verifies tokens, and the engine hosts, may GetPublicKey, and the
  functions that sign may Sign, with keys carrying both tags: keys made by the rotation and nothing else;
- IAM checkpoint keys rotate on the same run: the job may create ECC_NIST_P256 keys tagged
  hd:purpose=checkpoint-signing and hd:deployment=<stack> and read their public keys; every role that records
  IAM events may Sign with such keys. None is ever disabled or deleted (old checkpoints must stay verifiable);
- the daily run records whether KMS rotates the stack's symmetric keys (DescribeKey, GetKeyRotationStatus on
  those key ARNs only); `KmsKeysWithoutRotation` >= 1 alarms, as does `KeyLifecycleFailures` >= 1 (a successor
  or a signing key the run could not make, deliver or retire, which it retries without failing the invocation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from hd_cdk import constants
from hd_cdk.control_api import FUNCTION_ACCESS, ControlApi, FunctionAccess
from hd_cdk.nag import acknowledge

# hd_core.webhook_sqs.QUEUE_URL_VARIABLE (the CDK app does not import the layer's runtime modules for a name).
QUEUE_URL_VARIABLE: Final = "HD_WEBHOOK_QUEUE_URL"
# The control API functions that emit webhook events (hd_core.webhook_events callers: policy_admin, directory,
# jit, key_admin and key_lifecycle, per the handler that serves them; audit's verify-chain reports a break).
EMITTING_FUNCTIONS: Final[tuple[str, ...]] = ("policies", "users", "jit", "api_keys", "audit")
# The api_keys function serves the on-demand lifecycle run, which writes successors like the schedule does.
ON_DEMAND_LIFECYCLE_FUNCTION: Final = "api_keys"
LIFECYCLE_SCHEDULE: Final = events.Schedule.rate(Duration.days(1))
SWEEP_EVERY: Final = Duration.minutes(constants.WEBHOOK_SWEEP_MINUTES)
MAX_RECEIVE_COUNT: Final = 5
# One attempt is at most 15 s (hd_core.webhook_delivery TOTAL_TIMEOUT_SECONDS); a batch of BATCH_SIZE attempts
# fits the timeout with room to re-enqueue, and the visibility timeout is six times it (AWS's advice for SQS
# event sources), so a message is never handed to a second consumer while the first still works on it.
BATCH_SIZE: Final = 5
DELIVERY_TIMEOUT_SECONDS: Final = 120
VISIBILITY_TIMEOUT: Final = Duration.seconds(6 * DELIVERY_TIMEOUT_SECONDS)
# A message lives at most one SQS delay (15 min) plus its receives; two days leaves room for an outage.
QUEUE_RETENTION: Final = Duration.days(2)
ALARM_PERIOD: Final = Duration.minutes(constants.ALARM_PERIOD_MINUTES)
LIFECYCLE_SERVICE: Final = "hd-key-lifecycle"  # functions/key_lifecycle/handler.py SERVICE: the metrics' dimension
# functions/key_lifecycle/handler.py LifecycleSettings and hd_core.control_settings (names, not imports of handlers).
ROTATION_KEYS_VARIABLE: Final = "HD_LIFECYCLE_KMS_ROTATION_KEY_IDS"
DEPLOYMENT_TAG_VARIABLE: Final = "HD_KMS_KEY_DEPLOYMENT_TAG"
# hd_core.signing_keys: the tags on every JWT key the rotation makes, and its deletion window (a test keeps them equal).
PURPOSE_TAG: Final = "hd:purpose"
JWT_KEY_PURPOSE: Final = "jwt-signing"
CHECKPOINT_KEY_PURPOSE: Final = "checkpoint-signing"  # hd_core.adapters.kms_keys.CHECKPOINT_KEY_PURPOSE
DEPLOYMENT_TAG: Final = "hd:deployment"
DELETION_PENDING_DAYS: Final = 30

LIFECYCLE_ACCESS: Final = FunctionAccess(
    verifies_tokens=False, reserved_concurrency=1, timeout_seconds=900,  # one run at a time, over every org
)
DELIVERY_ACCESS: Final = FunctionAccess(
    verifies_tokens=False, records_iam_events=False, seals_secrets=True, sealed_purpose="webhook-secret",
    reserved_concurrency=10, timeout_seconds=DELIVERY_TIMEOUT_SECONDS,
)

_PREFIX_GRANT_REASON: Final = (
    "PutSecretValue on secrets named under hd/keys/ only: the customer creates each key's delivery secret under "
    "hd/keys/<org_id>/ (key_admin refuses other names) and its name and random ARN suffix exist only at run time."
)
_VIA_SECRETS_MANAGER_REASON: Final = (
    "KMS through Secrets Manager only, for a secret under hd/keys/ only (kms:ViaService and the SecretARN "
    "encryption context): the customer chooses the key of the delivery secret they create, so no key ARN is known."
)
_TAGGED_KEYS_REASON: Final = (
    "JWT signing keys made by the scheduled rotation have ids known only at run time: the grant covers this "
    "account's keys in this region that carry both hd:purpose=jwt-signing and hd:deployment=<this stack> "
    "(aws:ResourceTag conditions), which only the rotation can create."
)
_CREATE_KEY_REASON: Final = (
    "kms:CreateKey has no resource to name; the grant requires exactly the tags hd:purpose (jwt-signing with spec "
    "RSA_2048, or checkpoint-signing with ECC_NIST_P256) and hd:deployment=<this stack>, usage SIGN_VERIFY and "
    "KMS-made key material."
)
_OUTSIDE_VPC_REASON: Final = (
    "The webhook delivery Lambda POSTs to customers' public HTTPS endpoints; the VPC's isolated subnets have no "
    "internet route by design (no NAT or internet gateway), so it runs outside the VPC, reaching only DynamoDB, "
    "SQS and KMS over their public TLS endpoints and, guarded against private and link-local addresses, the web."
)


class Lifecycle(Construct):
    """The key lifecycle schedule, the webhook queue with its dead-letter queue, the delivery Lambda, alarms.

    Attributes: `lifecycle_function`, `lifecycle_rule`, `queue`, `dead_letter_queue`, `delivery_function`,
    `sweep_rule`, `alarms` (name -> Alarm), `functions` (name -> Function, for the dashboard).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        control_api: ControlApi,
        queue_key: kms.IKey,
        alarm_topic: sns.ITopic,
        emitting_functions: Sequence[str] = EMITTING_FUNCTIONS,
        signing_key: kms.IKey | None = None,
        token_verifiers: Sequence[iam.IRole] = (),
        rotation_checked_keys: Sequence[kms.IKey] = (),
        iam_recorders: Sequence[iam.IRole] = (),
    ) -> None:
        """`control_api` builds the two Lambdas and holds the emitting functions and their roles; `queue_key`
        encrypts both queues; `alarm_topic` receives the alarms. `signing_key` is the stack's first JWT signing
        key (retired by ARN once rotated); `token_verifiers` are roles outside the control API that verify JWTs
        (the engine hosts'); `rotation_checked_keys` are the symmetric keys whose KMS rotation the daily run
        checks; `iam_recorders` are roles outside the control API that record IAM events (the wipe hook's), which
        sign checkpoints with the current checkpoint key. ValueError for an unknown emitting function."""
        super().__init__(scope, id)
        unknown = sorted(set(emitting_functions) - set(control_api.functions))
        if unknown:
            raise ValueError(f"webhook-emitting functions the control API lacks: {unknown}")
        stack = Stack.of(self)
        self._queue_key = queue_key
        self.secret_arn_pattern: str = stack.format_arn(
            service="secretsmanager", resource="secret", resource_name=f"{constants.KEY_SECRET_PREFIX}*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )

        self.dead_letter_queue = sqs.Queue(
            self, "WebhookDeadLetterQueue",
            encryption=sqs.QueueEncryption.KMS, encryption_master_key=queue_key, enforce_ssl=True,
            retention_period=Duration.days(constants.DEAD_LETTER_RETENTION_DAYS),
        )
        self.queue = sqs.Queue(
            self, "WebhookQueue",
            encryption=sqs.QueueEncryption.KMS, encryption_master_key=queue_key, enforce_ssl=True,
            visibility_timeout=VISIBILITY_TIMEOUT, retention_period=QUEUE_RETENTION,
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.dead_letter_queue, max_receive_count=MAX_RECEIVE_COUNT),
        )

        self.lifecycle_function = control_api.worker(
            "key_lifecycle", LIFECYCLE_ACCESS, handler="functions.key_lifecycle.handler.lambda_handler",
        )
        self.delivery_function = control_api.worker(
            "webhook_delivery", DELIVERY_ACCESS, handler="functions.webhooks.delivery.lambda_handler", in_vpc=False,
        )
        for pack in ("HIPAA.Security", "NIST.800.53.R5", "PCI.DSS.321"):
            acknowledge(self.delivery_function, f"{pack}-LambdaInsideVPC", _OUTSIDE_VPC_REASON)
        self.functions: dict[str, lambda_.Function] = {
            "key_lifecycle": self.lifecycle_function, "webhook_delivery": self.delivery_function,
        }

        self._lifecycle_role = control_api.roles["key_lifecycle"]
        self._grant_secrets([control_api.roles["key_lifecycle"], control_api.roles[ON_DEMAND_LIFECYCLE_FUNCTION]])
        senders = [*emitting_functions, "key_lifecycle", "webhook_delivery"]
        self._grant_send([control_api.roles[name] for name in senders])
        for name in emitting_functions:
            control_api.functions[name].add_environment(QUEUE_URL_VARIABLE, self.queue.queue_url)
        for function in self.functions.values():
            function.add_environment(QUEUE_URL_VARIABLE, self.queue.queue_url)
        self._consume(control_api.roles["webhook_delivery"])
        self._grant_signing_key_rotation(control_api, signing_key, token_verifiers)
        self._grant_checkpoint_key_rotation(control_api, iam_recorders)
        self._grant_rotation_checks(rotation_checked_keys)

        self.lifecycle_rule = self._schedule(
            "KeyLifecycleDaily", self.lifecycle_function, LIFECYCLE_SCHEDULE, Duration.hours(6),
            "rotates, warns about and expires API keys (issue 19)",
        )
        self.sweep_rule = self._schedule(
            "WebhookSweep", self.delivery_function, events.Schedule.rate(SWEEP_EVERY), SWEEP_EVERY,
            "re-enqueues due webhook deliveries",
        )
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        self._alarm(
            "WebhookDeadLetters",
            self.dead_letter_queue.metric_approximate_number_of_messages_visible(period=ALARM_PERIOD,
                                                                                 statistic="Maximum"),
            "Webhook queue messages failed five receives and wait in the dead-letter queue (their deliveries "
            "stay pending in the store: the sweep re-enqueues them once the cause is fixed)",
            alarm_topic,
        )
        self._alarm("KeyLifecycleErrors", self.lifecycle_function.metric_errors(period=ALARM_PERIOD, statistic="Sum"),
                    "The daily key lifecycle run failed: rotations, expiry warnings and revocations are not done",
                    alarm_topic)
        for metric_name, description in (
            ("KeyLifecycleFailures", "The daily key lifecycle run could not make, deliver or retire a key (an API "
                                     "key successor or a JWT signing key): it retries daily, see its log"),
            ("KmsKeysWithoutRotation", "A customer-managed KMS key of this deployment does not rotate (or could not "
                                       "be checked): turn its automatic rotation back on"),
        ):
            self._alarm(metric_name, cloudwatch.Metric(
                namespace=constants.METRICS_NAMESPACE, metric_name=metric_name,
                dimensions_map={"service": LIFECYCLE_SERVICE}, statistic="Maximum", period=ALARM_PERIOD,
            ), description, alarm_topic)
        self._alarm("WebhookDeliveryErrors",
                    self.delivery_function.metric_errors(period=ALARM_PERIOD, statistic="Sum"),
                    "The webhook delivery Lambda raised (a sweep or a whole batch failed)", alarm_topic)

    # --- IAM ------------------------------------------------------------------------------------------

    def _grant_secrets(self, roles: Sequence[iam.IRole]) -> None:
        region = Stack.of(self).region
        policy = iam.ManagedPolicy(
            self, "KeySecretsPolicy",
            description="Hardened Duck: write successor API keys to the customer's secrets under hd/keys/",
            statements=[
                _allow(["secretsmanager:PutSecretValue"], [self.secret_arn_pattern]),
                _allow(["kms:GenerateDataKey"], ["*"], {
                    "StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"},
                    "StringLike": {"kms:EncryptionContext:SecretARN": self.secret_arn_pattern},
                }),
            ],
            roles=list(roles),
        )
        stack = Stack.of(self)
        _acknowledge_wildcards(policy, {_nag_reference(stack, self.secret_arn_pattern): _PREFIX_GRANT_REASON,
                                        "*": _VIA_SECRETS_MANAGER_REASON})

    def _grant_signing_key_rotation(self, control_api: ControlApi, signing_key: kms.IKey | None,
                                    token_verifiers: Sequence[iam.IRole]) -> None:
        """The lifecycle job creates and retires tagged JWT keys; verifiers and signers may use tagged keys."""
        stack = Stack.of(self)
        tags = {f"aws:ResourceTag/{PURPOSE_TAG}": JWT_KEY_PURPOSE,
                f"aws:ResourceTag/{DEPLOYMENT_TAG}": stack.stack_name}
        requested = {f"aws:RequestTag/{PURPOSE_TAG}": JWT_KEY_PURPOSE,
                     f"aws:RequestTag/{DEPLOYMENT_TAG}": stack.stack_name}
        only_our_tags = {"ForAllValues:StringEquals": {"aws:TagKeys": [PURPOSE_TAG, DEPLOYMENT_TAG]}}
        self.tagged_keys_arn = stack.format_arn(service="kms", resource="key", resource_name="*")
        retire = ["kms:DescribeKey", "kms:GetPublicKey", "kms:DisableKey"]
        pending = {"NumericEquals": {"kms:ScheduleKeyDeletionPendingWindowInDays": DELETION_PENDING_DAYS}}
        statements = [
            _allow(["kms:CreateKey"], ["*"], {
                "StringEquals": {**requested, "kms:KeySpec": "RSA_2048", "kms:KeyUsage": "SIGN_VERIFY",
                                 "kms:KeyOrigin": "AWS_KMS"},
                "Bool": {"kms:BypassPolicyLockoutSafetyCheck": "false"}, **only_our_tags,
            }),
            _allow(["kms:TagResource"], [self.tagged_keys_arn], {"StringEquals": requested, **only_our_tags}),
            _allow(retire, [self.tagged_keys_arn], {"StringEquals": tags}),
            _allow(["kms:ScheduleKeyDeletion"], [self.tagged_keys_arn], {"StringEquals": tags, **pending}),
        ]
        if signing_key is not None:
            statements += [_allow(retire, [signing_key.key_arn]),
                           _allow(["kms:ScheduleKeyDeletion"], [signing_key.key_arn], pending)]
        rotate = iam.ManagedPolicy(
            self, "SigningKeyRotationPolicy", statements=statements, roles=[control_api.roles["key_lifecycle"]],
            description="Hardened Duck: create, retire and delete this deployment's tagged JWT signing keys",
        )
        self.lifecycle_function.add_environment(DEPLOYMENT_TAG_VARIABLE, stack.stack_name)
        verifiers = [role for name, role in control_api.roles.items()
                     if (access := FUNCTION_ACCESS.get(name)) is not None and (access.verifies_tokens
                                                                               or access.signs_tokens)]
        signers = [control_api.roles[name] for name, access in FUNCTION_ACCESS.items()
                   if access.signs_tokens and name in control_api.roles]
        verify = iam.ManagedPolicy(
            self, "RotatedSigningKeysVerifyPolicy", roles=[*verifiers, *token_verifiers],
            statements=[_allow(["kms:GetPublicKey"], [self.tagged_keys_arn], {"StringEquals": tags})],
            description="Hardened Duck: verify JWTs signed by the deployment's rotated signing keys",
        )
        sign = iam.ManagedPolicy(
            self, "RotatedSigningKeysSignPolicy", roles=signers,
            statements=[_allow(["kms:Sign"], [self.tagged_keys_arn], {"StringEquals": tags})],
            description="Hardened Duck: sign JWTs with the deployment's current rotated signing key",
        )
        tagged = _nag_reference(stack, self.tagged_keys_arn)
        _acknowledge_wildcards(rotate, {"*": _CREATE_KEY_REASON, tagged: _TAGGED_KEYS_REASON})
        for policy in (verify, sign):
            _acknowledge_wildcards(policy, {tagged: _TAGGED_KEYS_REASON})

    def _grant_checkpoint_key_rotation(self, control_api: ControlApi, iam_recorders: Sequence[iam.IRole]) -> None:
        """The job creates tagged ECC checkpoint keys (never retires them: old checkpoints must stay verifiable, and
        their public keys are in the chain); every role that records IAM events may sign with them."""
        stack = Stack.of(self)
        requested = {f"aws:RequestTag/{PURPOSE_TAG}": CHECKPOINT_KEY_PURPOSE,
                     f"aws:RequestTag/{DEPLOYMENT_TAG}": stack.stack_name}
        tags = {f"aws:ResourceTag/{PURPOSE_TAG}": CHECKPOINT_KEY_PURPOSE,
                f"aws:ResourceTag/{DEPLOYMENT_TAG}": stack.stack_name}
        only_our_tags = {"ForAllValues:StringEquals": {"aws:TagKeys": [PURPOSE_TAG, DEPLOYMENT_TAG]}}
        create = iam.ManagedPolicy(
            self, "CheckpointKeyRotationPolicy", roles=[self._lifecycle_role],
            description="Hardened Duck: create this deployment's tagged IAM checkpoint signing keys",
            statements=[
                _allow(["kms:CreateKey"], ["*"], {
                    "StringEquals": {**requested, "kms:KeySpec": "ECC_NIST_P256", "kms:KeyUsage": "SIGN_VERIFY",
                                     "kms:KeyOrigin": "AWS_KMS"},
                    "Bool": {"kms:BypassPolicyLockoutSafetyCheck": "false"}, **only_our_tags,
                }),
                _allow(["kms:TagResource"], [self.tagged_keys_arn], {"StringEquals": requested, **only_our_tags}),
                _allow(["kms:GetPublicKey"], [self.tagged_keys_arn], {"StringEquals": tags}),
            ],
        )
        recorders = [role for name, role in control_api.roles.items()
                     if (access := FUNCTION_ACCESS.get(name)) is not None and access.records_iam_events]
        sign = iam.ManagedPolicy(
            self, "RotatedCheckpointKeysSignPolicy", roles=[*recorders, self._lifecycle_role, *iam_recorders],
            statements=[_allow(["kms:Sign"], [self.tagged_keys_arn], {"StringEquals": tags})],
            description="Hardened Duck: sign IAM checkpoints with the deployment's current rotated checkpoint key",
        )
        tagged = _nag_reference(stack, self.tagged_keys_arn)
        _acknowledge_wildcards(create, {"*": _CREATE_KEY_REASON, tagged: _TAGGED_KEYS_REASON})
        _acknowledge_wildcards(sign, {tagged: _TAGGED_KEYS_REASON})

    def _grant_rotation_checks(self, keys: Sequence[kms.IKey]) -> None:
        if not keys:
            return
        iam.ManagedPolicy(
            self, "KeyRotationCheckPolicy", roles=[self._lifecycle_role],
            statements=[_allow(["kms:DescribeKey", "kms:GetKeyRotationStatus"], [key.key_arn for key in keys])],
            description="Hardened Duck: check that KMS rotates the deployment's symmetric keys",
        )
        self.lifecycle_function.add_environment(ROTATION_KEYS_VARIABLE, ",".join(key.key_arn for key in keys))

    def _grant_send(self, roles: Sequence[iam.IRole]) -> None:
        iam.ManagedPolicy(
            self, "WebhookSendPolicy",
            description="Hardened Duck: announce webhook deliveries on the delivery queue",
            statements=[
                _allow(["sqs:SendMessage"], [self.queue.queue_arn]),  # SendMessageBatch is authorised by it too
                *self._queue_key_statements(["kms:GenerateDataKey", "kms:Decrypt"]),
            ],
            roles=list(roles),
        )

    def _consume(self, role: iam.IRole) -> None:
        """The delivery Lambda reads the queue (its role ignores CDK's own grants: they are here), batch by batch."""
        policy = iam.ManagedPolicy(
            self, "WebhookConsumePolicy",
            description="Hardened Duck: the webhook delivery Lambda consumes the delivery queue",
            statements=[
                _allow(["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                        "sqs:GetQueueAttributes"], [self.queue.queue_arn]),
                *self._queue_key_statements(["kms:Decrypt"]),
            ],
            roles=[role],
        )
        mapping = self.delivery_function.add_event_source_mapping(
            "WebhookQueue", event_source_arn=self.queue.queue_arn, batch_size=BATCH_SIZE,
            report_batch_item_failures=True,  # a failed message is retried alone, not its whole batch
        )
        # Lambda checks the role's queue permissions when the mapping is created: the policy must be attached first.
        mapping.node.add_dependency(policy)

    def _queue_key_statements(self, actions: Sequence[str]) -> list[iam.PolicyStatement]:
        region = Stack.of(self).region
        return [_allow(actions, [self._queue_key.key_arn],
                       {"StringEquals": {"kms:ViaService": f"sqs.{region}.amazonaws.com"}})]

    # --- schedules and alarms -------------------------------------------------------------------------

    def _schedule(self, construct_id: str, function: lambda_.IFunction, schedule: events.Schedule,
                  max_age: Duration, description: str) -> events.Rule:
        rule = events.Rule(self, construct_id, description=f"Hardened Duck: {description}", schedule=schedule)
        # Failed invocations land in the control API's dead-letter queue after Lambda's own retries.
        rule.add_target(targets.LambdaFunction(function, retry_attempts=2, max_event_age=max_age))
        return rule

    def _alarm(self, name: str, metric: cloudwatch.IMetric, description: str, topic: sns.ITopic) -> None:
        alarm = cloudwatch.Alarm(
            self, name, metric=metric, threshold=1, evaluation_periods=1, datapoints_to_alarm=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING, alarm_description=description,
        )
        alarm.add_alarm_action(cloudwatch_actions.SnsAction(topic))
        self.alarms[name] = alarm


def _allow(actions: Sequence[str], resources: Sequence[str], conditions: Mapping[str, Any] | None = None,
           ) -> iam.PolicyStatement:
    return iam.PolicyStatement(actions=list(actions), resources=list(resources),
                               conditions=dict(conditions) if conditions else None)


def _acknowledge_wildcards(policy: iam.ManagedPolicy, findings: Mapping[str, str]) -> None:
    for finding, reason in findings.items():
        acknowledge(policy, f"AwsSolutions-IAM5[Resource::{finding}]", reason)


def _nag_reference(stack: Stack, value: str) -> str:
    """How cdk-nag writes a joined ARN in a finding id: `<AWS::Region>` for pseudo parameters, `<Logical>` for Ref."""
    return _nag_text(stack.resolve(value))


def _nag_text(node: Any) -> str:
    if isinstance(node, dict) and "Ref" in node:
        return f"<{node['Ref']}>"
    if isinstance(node, dict) and "Fn::Join" in node:
        separator, parts = node["Fn::Join"]
        return str(separator).join(_nag_text(part) for part in parts)
    return str(node)
