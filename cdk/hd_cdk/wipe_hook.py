"""The termination wipe: EventBridge hands each terminating engine host to a Lambda that erases its NVMe cache.

Security decisions, all visible here:
- The erase runs through SSM Run Command with a dedicated Command document whose one step stops the engine
  (`systemctl stop hd-engine.service`: its drain, running statements finish within the grace) and then runs
  `cryptsetup luksErase --batch-mode {{ device }}`; its one parameter, `device`, must match the same pattern
  as `hd_core.wipe.DEVICE_PATTERN` (a /dev path of letters, digits, `/`, `_`, `-`), so the value SSM
  interpolates into the shell line cannot add shell syntax. The role may send THAT document (never
  `AWS-RunShellScript`) and only to instances that carry the fleet's `aws:autoscaling:groupName` tag, and
  complete lifecycle actions only of that group. The Lambda learns the document's name from HD_WIPE_DOCUMENT.
- The IAM audit write needs only its own slice: the control table (items), `audit/iam-checkpoints/` in the
  audit bucket, Sign with the checkpoint key and the audit key for SSE-KMS. No delete, no `*` action.
- Failed invocations are retried, then kept in a KMS-encrypted dead-letter queue; WipeFailed >= 1 in five
  minutes and any dead letter alarm to a KMS-encrypted SNS topic.
- `announce_on` hands it the webhook delivery queue (SendMessage on that queue only), so instance.wiped and
  instance.wipe_failed are delivered at once rather than at the next sweep.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import jsii
from aws_cdk import Aws, BundlingOptions, DockerImage, Duration, IgnoreMode, ILocalBundling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from hd_cdk import constants as c
from hd_cdk.engine_fleet import nag_resource
from hd_cdk.nag import acknowledge
from hd_core.adapters.dynamodb_schema import GSI1_NAME

# hd_core.wipe.DEVICE_PATTERN, spelled here because cdk/ does not import the runtime (a test keeps them equal).
ERASE_DEVICE_PATTERN: Final = r"^/dev/[A-Za-z0-9/_-]+$"
# hd_core.adapters.aws_lifecycle.ERASE_DOCUMENT_DEVICE_PARAMETER: the one parameter SsmRunCommand sends.
ERASE_DEVICE_PARAMETER: Final = "device"
LIFECYCLE_DETAIL_TYPE: Final = "EC2 Instance-terminate Lifecycle Action"
WIPE_SERVICE: Final = "hd-wipe-hook"  # functions/wipe_hook/handler.py SERVICE: the metrics' `service` dimension
WIPE_HANDLER: Final = "functions.wipe_hook.handler.lambda_handler"
ENGINE_SERVICE: Final = "hd-engine.service"  # engine_fleet.engine_user_data's unit for `hd engine serve`
# hd_core.webhook_sqs.QUEUE_URL_VARIABLE: where the function's webhook events are enqueued (see `announce_on`).
WEBHOOK_QUEUE_URL_VARIABLE: Final = "HD_WEBHOOK_QUEUE_URL"
# Every IAM action the wipe Lambda's role may hold; a test compares the synthesized role with this set.
WIPE_ROLE_ACTIONS: Final[frozenset[str]] = frozenset({
    "ssm:SendCommand", "ssm:GetCommandInvocation",
    "autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat",
    "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query",  # wipe claim, API-key pepper, IAM chain
    "s3:PutObject", "s3:GetObject", "s3:ListBucket",  # IAM checkpoints only
    "kms:Sign",  # checkpoint key
    "kms:GenerateDataKey", "kms:Decrypt",  # audit key (SSE-KMS) and the dead-letter queue's key
    "sqs:SendMessage",  # its dead-letter queue and the webhook delivery queue
    "logs:CreateLogStream", "logs:PutLogEvents",  # its own log group
    "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses",  # Lambda in the VPC
})
_SERVICE_KEY_ACTIONS: Final = ["kms:GenerateDataKey", "kms:Decrypt"]
_LOG_RETENTION: Final = logs.RetentionDays.ONE_YEAR
_ALARM_PERIOD: Final = Duration.minutes(c.ALARM_PERIOD_MINUTES)


class WipeHook(Construct):
    """SSM erase on termination: EventBridge rule -> wipe Lambda (retries, DLQ) and the WipeFailed alarm.

    Attributes: `function`, `role`, `erase_document`, `rule`, `dead_letter_queue`, `alarm_topic`,
    `wipe_failed_alarm`, `dead_letter_alarm`, `log_group`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        asg_name: str,
        lifecycle_hook_name: str,
        device: str,
        table: dynamodb.ITable,
        audit_bucket: s3.IBucket,
        data_key: kms.IKey,
        signing_key: kms.IKey,
        checkpoint_key: kms.IKey,
        audit_key: kms.IKey,
        logs_key: kms.IKey,
        notification_key: kms.IKey,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        security_group: ec2.ISecurityGroup,
        alarm_topic: sns.ITopic | None = None,
        code: lambda_.Code | None = None,
        layers: Sequence[lambda_.ILayerVersion] = (),
    ) -> None:
        """`code` and `layers` are the control plane's packaged function code and layers (hd_core + dependencies);
        without them the source folders are used as they are (tests). `device` is the engine's cache device
        (EngineConfig.cache_device); `notification_key` encrypts the dead-letter queue and the alarm topic (this
        construct lets EventBridge and CloudWatch use it); `alarm_topic` is shared with Monitoring when given, else
        created here."""
        super().__init__(scope, construct_id)
        _allow_service_use(notification_key, "events.amazonaws.com", "EventBridgeDeadLetters")
        _allow_service_use(notification_key, "cloudwatch.amazonaws.com", "CloudWatchAlarmNotifications")
        self.dead_letter_queue = sqs.Queue(
            self, "DeadLetters",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=notification_key,
            enforce_ssl=True,
            retention_period=Duration.days(14),  # the longest SQS keeps a message: time to wipe by hand
        )
        self.alarm_topic = alarm_topic or sns.Topic(
            self, "Alarms", master_key=notification_key, enforce_ssl=True,
            display_name="Hardened Duck cache wipe alarms")
        self.log_group = logs.LogGroup(self, "Logs", encryption_key=logs_key, retention=_LOG_RETENTION)
        self.erase_document = _erase_document(self)
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                             description="Hardened Duck wipe hook: erase a terminating engine host's cache")
        wildcards = self._grant(asg_name=asg_name, table=table, audit_bucket=audit_bucket,
                                checkpoint_key=checkpoint_key, audit_key=audit_key, notification_key=notification_key)
        if code is None:
            code, layers = _wipe_hook_code(self)
        self.function = lambda_.Function(
            self, "Function",
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=lambda_.Architecture.ARM_64,
            handler=WIPE_HANDLER,
            code=code,
            layers=list(layers),
            role=self.role,
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[security_group],
            # The erase's command timeout, SSM's reporting slack and the polling fit well inside this.
            timeout=Duration.minutes(5),
            memory_size=512,
            # Terminations come one instance at a time; a cap keeps a runaway scale-in from exhausting the account.
            reserved_concurrent_executions=10,
            retry_attempts=c.WIPE_RETRY_ATTEMPTS,
            max_event_age=Duration.hours(1),
            log_group=self.log_group,
            environment=_environment(
                table=table, audit_bucket=audit_bucket, data_key=data_key, signing_key=signing_key,
                checkpoint_key=checkpoint_key, device=device, erase_document=self.erase_document.ref),
            description="Erases an engine host's LUKS cache (cryptsetup luksErase) before its termination continues",
        )
        # The DLQ through the L1 property: the L2's grant would add `kms:GenerateDataKey*` in an inline policy.
        function_resource = self.function.node.default_child
        assert isinstance(function_resource, lambda_.CfnFunction)
        function_resource.dead_letter_config = lambda_.CfnFunction.DeadLetterConfigProperty(
            target_arn=self.dead_letter_queue.queue_arn)
        self.rule = events.Rule(
            self, "TerminationRule",
            description="Every termination lifecycle action of the engine fleet goes to the wipe hook",
            event_pattern=events.EventPattern(
                source=["aws.autoscaling"],
                detail_type=[LIFECYCLE_DETAIL_TYPE],
                detail={"AutoScalingGroupName": [asg_name], "LifecycleHookName": [lifecycle_hook_name]},
            ),
            targets=[targets.LambdaFunction(
                self.function,
                retry_attempts=c.WIPE_RETRY_ATTEMPTS,
                max_event_age=Duration.hours(1),
                dead_letter_queue=self.dead_letter_queue,
            )],
        )
        self._alarms()
        self._acknowledge_findings(wildcards)

    def _grant(self, *, asg_name: str, table: dynamodb.ITable, audit_bucket: s3.IBucket, checkpoint_key: kms.IKey,
               audit_key: kms.IKey, notification_key: kms.IKey) -> list[str]:
        """The role's one customer-managed policy; returns the wildcard resources (acknowledged with reasons)."""
        region, account, partition = Aws.REGION, Aws.ACCOUNT_ID, Aws.PARTITION
        document = f"arn:{partition}:ssm:{region}:{account}:document/{self.erase_document.ref}"
        instances = f"arn:{partition}:ec2:{region}:{account}:instance/*"
        group = f"arn:{partition}:autoscaling:{region}:{account}:autoScalingGroup:*:autoScalingGroupName/{asg_name}"
        checkpoints = audit_bucket.arn_for_objects(f"{c.AUDIT_IAM_CHECKPOINTS_PREFIX}*")
        statements = [
            _allow(["ssm:SendCommand"], [document]),  # the erase document only: no AWS-RunShellScript
            iam.PolicyStatement(
                actions=["ssm:SendCommand"], resources=[instances],
                # Only this fleet's instances: Auto Scaling tags each with its group's name.
                conditions={"StringEquals": {"ssm:resourceTag/aws:autoscaling:groupName": asg_name}},
            ),
            _allow(["ssm:GetCommandInvocation"], ["*"]),  # no resource-level permissions exist for it
            _allow(["autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"], [group]),
            _allow(["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"], [table.table_arn]),
            # The GSI (by name): the organisations and their webhook endpoints, for instance.wiped / wipe_failed.
            _allow(["dynamodb:Query"], [f"{table.table_arn}/index/{GSI1_NAME}"]),
            _allow(["s3:PutObject", "s3:GetObject"], [checkpoints]),
            iam.PolicyStatement(
                actions=["s3:ListBucket"], resources=[audit_bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{c.AUDIT_IAM_CHECKPOINTS_PREFIX}*"]}},
            ),
            _allow(["kms:Sign"], [checkpoint_key.key_arn]),
            _allow(["kms:GenerateDataKey", "kms:Decrypt"], [audit_key.key_arn, notification_key.key_arn]),
            _allow(["sqs:SendMessage"], [self.dead_letter_queue.queue_arn]),
            _allow(["logs:CreateLogStream", "logs:PutLogEvents"], [f"{self.log_group.log_group_arn}"]),
            _allow(["ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
                    "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"], ["*"]),
        ]
        self.policy = iam.ManagedPolicy(self, "Policy", roles=[self.role], statements=statements,
                                        description="Wipe hook: Run Command erase, lifecycle action, IAM audit")
        return [instances, group, checkpoints, "*", self.log_group.log_group_arn]

    def announce_on(self, queue: sqs.IQueue) -> None:
        """Hand the function the webhook delivery queue: its instance.wiped / instance.wipe_failed deliveries are
        enqueued as they are recorded instead of waiting for the delivery Lambda's next sweep. The queue's key is
        the notifications key, which the role may already use (its dead-letter queue)."""
        self.function.add_environment(WEBHOOK_QUEUE_URL_VARIABLE, queue.queue_url)
        self.policy.add_statements(_allow(["sqs:SendMessage"], [queue.queue_arn]))

    def _alarms(self) -> None:
        action = cloudwatch_actions.SnsAction(self.alarm_topic)
        wipe_failed = cloudwatch.Metric(
            namespace=c.METRICS_NAMESPACE, metric_name="WipeFailed", dimensions_map={"service": WIPE_SERVICE},
            statistic=cloudwatch.Stats.SUM, period=_ALARM_PERIOD,
        )
        self.wipe_failed_alarm = wipe_failed.create_alarm(
            self, "WipeFailedAlarm",
            alarm_description="An engine host's NVMe cache could not be erased at termination (HD_ERR_WIPE_FAILED): "
                              "the IAM trail has INSTANCE_WIPE_FAILED with the SSM output",
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.dead_letter_alarm = self.dead_letter_queue.metric_approximate_number_of_messages_visible(
            period=_ALARM_PERIOD, statistic=cloudwatch.Stats.MAXIMUM,
        ).create_alarm(
            self, "DeadLetterAlarm",
            alarm_description="A termination event exhausted the wipe hook's retries: wipe that instance by hand",
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        for alarm in (self.wipe_failed_alarm, self.dead_letter_alarm):
            alarm.add_alarm_action(action)

    def _acknowledge_findings(self, wildcards: list[str]) -> None:
        reasons = {
            "*": "ssm:GetCommandInvocation and the Lambda VPC network-interface actions have no resource-level "
                 "permissions; the other actions of this policy are scoped to ARNs",
        }
        default = ("scoped by a condition or a fixed prefix: SendCommand to instances only with this fleet's "
                   "aws:autoscaling:groupName tag, lifecycle actions of this group name, audit/iam-checkpoints/ "
                   "objects, and the streams of this function's own log group")
        for resource in wildcards:
            finding = nag_resource(self, resource)
            if "*" in finding:
                acknowledge(self.policy, f"AwsSolutions-IAM5[Resource::{finding}]", reasons.get(resource, default))
        acknowledge(self.function, "AwsSolutions-L1",
                    "the control plane is pinned to Python 3.12 on arm64 (issue 6): the hd_core and dependency "
                    "layers are built for that runtime, and the wipe hook must match them")


def _erase_document(scope: Construct) -> ssm.CfnDocument:
    """The Command document that can do one thing: `cryptsetup luksErase` of a device path."""
    return ssm.CfnDocument(
        scope, "EraseDocument",
        document_type="Command",
        target_type="/AWS::EC2::Instance",
        # No fixed name: a content change replaces the document, and the policy and environment follow its Ref.
        content={
            "schemaVersion": "2.2",
            "description": "Hardened Duck: erase every LUKS key slot of an engine host's cache device",
            "parameters": {
                ERASE_DEVICE_PARAMETER: {
                    "type": "String",
                    "description": "The LUKS cache device to erase, a /dev path",
                    # SSM interpolates the value into the shell line as text: the pattern is what keeps
                    # `;`, spaces, quotes, `$` and `..` out of it.
                    "allowedPattern": ERASE_DEVICE_PATTERN,
                },
            },
            "mainSteps": [{
                "action": "aws:runShellScript",
                "name": "luksErase",
                "inputs": {
                    "runCommand": [
                        # The drain first (issue 21): systemd's stop waits for the engine to let running statements
                        # finish (bounded by TimeoutStopSec). The erase runs whatever the stop says: never skipped.
                        f"systemctl stop {ENGINE_SERVICE} || true",
                        f"cryptsetup luksErase --batch-mode {{{{ {ERASE_DEVICE_PARAMETER} }}}}",
                    ],
                    # The wipe's own command timeout (HD_WIPE_COMMAND_TIMEOUT_SECONDS) bounds the step.
                    "timeoutSeconds": c.WIPE_COMMAND_TIMEOUT_SECONDS,
                },
            }],
        },
    )


def _allow(actions: list[str], resources: list[str]) -> iam.PolicyStatement:
    return iam.PolicyStatement(effect=iam.Effect.ALLOW, actions=actions, resources=resources)


def _allow_service_use(key: kms.IKey, service: str, sid: str) -> None:
    """Let an AWS service of this account encrypt messages with `key` (no-op for an imported key)."""
    key.add_to_resource_policy(iam.PolicyStatement(
        sid=sid,
        principals=[iam.ServicePrincipal(service)],
        actions=list(_SERVICE_KEY_ACTIONS),
        resources=["*"],  # in a key policy, "*" is this key
        conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}},
    ))


def _environment(*, table: dynamodb.ITable, audit_bucket: s3.IBucket, data_key: kms.IKey, signing_key: kms.IKey,
                 checkpoint_key: kms.IKey, device: str, erase_document: str) -> dict[str, str]:
    """`ControlApiSettings` (HD_*) and `WipeHookSettings` (HD_WIPE_*) of functions/wipe_hook/handler.py."""
    return {
        "HD_STORE": "dynamodb",
        "HD_KEYS": "kms",
        "HD_AUDIT": "s3",
        "HD_DYNAMODB_TABLE": table.table_name,
        "HD_AUDIT_BUCKET": audit_bucket.bucket_name,
        # Required by the key provider's constructor; the wipe never signs a JWT, so the role cannot use it.
        "HD_KMS_JWT_KEY_IDS": signing_key.key_arn,
        "HD_KMS_CHECKPOINT_KEY_ID": checkpoint_key.key_arn,
        "HD_KMS_DATA_KEY_ID": data_key.key_arn,  # likewise named only: no grant on the data key
        "HD_WIPE_DEVICE": device,
        "HD_WIPE_DOCUMENT": erase_document,
        "HD_WIPE_COMMAND_TIMEOUT_SECONDS": str(c.WIPE_COMMAND_TIMEOUT_SECONDS),
        "HD_WIPE_HEARTBEAT_TIMEOUT_SECONDS": str(c.WIPE_HEARTBEAT_TIMEOUT_SECONDS),
        "POWERTOOLS_SERVICE_NAME": WIPE_SERVICE,
        "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray: it would need xray:PutTraceSegments on "*"
    }


@jsii.implements(ILocalBundling)
class _LayerTree:
    """Local bundling (no Docker): `hd_core` copied under `python/`, where the Lambda runtime imports layers from."""

    def __init__(self, source: Path) -> None:
        self._source = source

    def try_bundle(self, output_dir: str, *, image: DockerImage, **_: Any) -> bool:
        shutil.copytree(self._source, Path(output_dir) / "python" / self._source.name,
                        ignore=shutil.ignore_patterns("__pycache__"))
        return True


def _wipe_hook_code(scope: Construct) -> tuple[lambda_.Code, list[lambda_.ILayerVersion]]:
    """The repo's `functions/` package and an `hd_core` layer (until packaging.py provides both)."""
    repo = Path(__file__).resolve().parents[2]
    code = lambda_.Code.from_asset(
        str(repo), ignore_mode=IgnoreMode.GIT,
        exclude=["/*", "!/functions/", "__pycache__/", "*.pyc"],
    )
    core = repo / "layers" / "core" / "hd_core"
    if str(scope.node.try_get_context(c.CONTEXT_BUNDLING)).lower() == "false":
        layer_code = lambda_.Code.from_asset(str(core.parent))
    else:
        layer_code = lambda_.Code.from_asset(str(core.parent), bundling=BundlingOptions(
            image=DockerImage.from_registry("local-bundling-only"), local=_LayerTree(core)))
    layer = lambda_.LayerVersion(
        scope, "CoreLayer", code=layer_code,
        compatible_runtimes=[lambda_.Runtime.PYTHON_3_12],
        compatible_architectures=[lambda_.Architecture.ARM_64],
        description="hd_core for the wipe hook",
    )
    return code, [layer]

