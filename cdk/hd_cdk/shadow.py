"""Shadow replay in AWS: the state machine of `hd_core.shadow.state_machine` and the Lambdas it calls.

Security decisions visible here:
- the state machine's definition is `hd_core.shadow.state_machine.definition()`, the one document `hd dev`
  interprets too, with the Lambdas' ARNs substituted: no state is written here;
- execution logs: every event (level ALL) to a KMS-encrypted log group, never execution data
  (`includeExecutionData: false`), so no input, output or result reaches the logs; X-Ray on the state
  machine and on every Lambda;
- a replay's secrets (the comparison DSN, the ServiceAccount key it replays as on the engine) are Secrets
  Manager secrets named under `hd/shadow/` and encrypted with the data key: the API function may create
  secrets only under that prefix and only with that key, ReplayBatch may read only those, and no other role
  may do either; the execution input names a secret, never a password. WriteReport alone may DeleteSecret
  under the prefix, with a 7-day recovery window only: it deletes the replay's own secrets when it ends. A
  secret the customer gives by ARN (`comparison_secret_arn`) is readable only if it too is named under the
  prefix and encrypted with the key;
- WriteReport alone also revokes the replay's ServiceAccount key when the replay ends, the way the API does
  (`key_admin.revoke_key`: the key's record, an API_KEY_REVOKED IAM event, a signed checkpoint, `key.revoked`
  webhook deliveries), so no replay key outlives its replay. It may touch only those items of the control
  table, by their partition keys (`dynamodb:LeadingKeys`): read and update API key items (`APIKEY#`), read
  and append IAM chain items (`CHAIN#`), list an organisation's webhook endpoints on the index (`WEBHOOKS#`)
  and record deliveries (`WHDELIVERY#`); put IAM checkpoints (nothing else of the audit bucket) and Sign
  with the checkpoint key. No delete, no scan, no other item kind. Which key it revokes is checked in code
  (`control_key_revoker`: only the key issued for that replay, by its name), since IAM cannot name an item
  that exists only at run time; the signing key is named in its settings only (the key provider's
  constructor wants one) and granted nothing;
- EndReplay runs in WriteReport's function (same grants) and ends a replay the same way when it will not
  reach WriteReport: the definition's Catch calls it for a state that failed after its retries, and the
  ExecutionEnded rule (Step Functions' "Execution Status Change" of this state machine only, statuses
  FAILED, TIMED_OUT and ABORTED) invokes it for what no Catch sees (the execution's timeout, StopExecution);
  it ends only the replay whose record names that execution. The function's errors are in the alarm;
- ReplayBatch masks the rows a mismatch shows with the engine's rules (`hd_core.shadow.sample_masks`), so
  it may read, and only read, what that needs of the control table (`SAMPLE_MASK_TABLE_ACCESS` by
  `dynamodb:LeadingKeys`: the policies and their version, API key items, recorded catalog tables, the
  default organisation, the wrapped mask keys), and Decrypt with the data key only for the mask keys'
  encryption context (`purpose` hd-mask-hash): no write, no other setting, no other data key use;
- each Lambda has its own role with one managed policy: objects under the data bucket's `shadow/` prefix
  (read, write, list; never delete, never another prefix), the data key only through S3 (and, for
  ReplayBatch, through Secrets Manager for a shadow secret); the state machine's role may invoke these
  three functions and nothing else; the API function may StartExecution on this state machine only;
- network: every function runs in the isolated subnets. Prepare and WriteReport keep the control-plane
  Lambda security group (HTTPS to S3 and the interface endpoints). ReplayBatch adds its own group with
  exactly two more paths: pgwire 5439 to the engine NLB (whose group admits it, like an agent: governance,
  masks and audit apply to every replayed statement) and the comparison PostgreSQL's CIDRs and port;
- networking assumption: the isolated subnets route nowhere outside the VPC. The customer makes their
  comparison PostgreSQL reachable (VPC peering or a Transit Gateway attachment with routes to the isolated
  subnets' route tables, or an interface endpoint to a PrivateLink service in front of it, whose addresses
  are then inside this VPC) and names its CIDRs in context `hd:shadowComparisonCidrs` (port:
  `hd:shadowComparisonPort`, 5432 by default). Without CIDRs ReplayBatch reaches no PostgreSQL at all;
- ReplayBatch verifies the engine's certificate (verify-full, functions/shadow/wiring.py) before it sends the
  replay's ServiceAccount key: the name it connects to must be in that certificate (context
  `hd:shadowEngineHost`, a private DNS name for the NLB; default the NLB's DNS name) and the roots that sign
  it given (`hd:shadowEngineCaFile`, e.g. "system"); without them the replay fails closed;
- the API reaches Step Functions through an interface endpoint whose policy admits only this state
  machine's StartExecution and reads of its executions;
- a failed or timed-out execution alarms to the notifications topic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
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
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from hd_cdk import constants, packaging
from hd_cdk.nag import acknowledge
from hd_cdk.network import validated_cidrs
from hd_cdk.packaging import LAMBDA_ARCHITECTURE, LAMBDA_RUNTIME
from hd_core.adapters.aws_shadow import KEY_REVOCATION_TABLE_ACCESS, SAMPLE_MASK_TABLE_ACCESS, SECRET_RECOVERY_DAYS
from hd_core.adapters.dynamodb_schema import GSI1_NAME
from hd_core.shadow import state_machine
from hd_core.shadow.sample_masks import MASK_KEY_PURPOSE

LOG_RETENTION: Final = logs.RetentionDays.ONE_YEAR
# Vended-log groups under this prefix keep Step Functions' log delivery within CloudWatch Logs' resource
# policy size limit (AWS's recommendation for state machine logs).
VENDED_LOGS_PREFIX: Final = "/aws/vendedlogs/states/"
ALARM_PERIOD: Final = Duration.minutes(constants.ALARM_PERIOD_MINUTES)
# The tag hd_core.adapters.aws_shadow puts on every replay secret it creates.
SECRET_TAG_KEY: Final = "hd:purpose"  # noqa: S105 - a tag key, not a secret
SECRET_TAG_VALUE: Final = "shadow-replay"  # noqa: S105 - a tag value, not a secret


@dataclass(frozen=True)
class ReplayFunction:
    """How one Lambda of the state machine runs, and which of the replay's paths it needs."""

    handler: str
    description: str
    memory_mb: int
    timeout_seconds: int
    reserved_concurrency: int
    reads_secrets: bool = False  # comparison DSNs under the shadow secret prefix
    reaches_databases: bool = False  # the engine NLB and the comparison PostgreSQL
    deletes_secrets: bool = False  # the replay's own secrets under the shadow prefix, when it ends
    revokes_key: bool = False  # the replay's ServiceAccount key in the control table, when it ends
    masks_samples: bool = False  # reads the engine's mask rules, catalog and mask keys (a mismatch's rows)


# Keyed by the definition's logical names (state_machine.FUNCTIONS), so a renamed state fails here at import.
REPLAY_FUNCTIONS: Final[Mapping[str, ReplayFunction]] = {
    state_machine.PREPARE: ReplayFunction(
        handler="functions.shadow.tasks.prepare_handler",
        description="splits a query set into batches and stores the replay's plan",
        memory_mb=512, timeout_seconds=300, reserved_concurrency=5,
    ),
    # One batch's statements on both sides, streamed and digested in this one process; Step Functions runs
    # at most state_machine.MAX_CONCURRENCY batches at once, so that many may run together.
    state_machine.REPLAY_BATCH: ReplayFunction(
        handler="functions.shadow.tasks.replay_batch_handler",
        description="runs one batch on the comparison PostgreSQL and the engine, and compares the results",
        memory_mb=1024, timeout_seconds=900, reserved_concurrency=state_machine.MAX_CONCURRENCY,
        reads_secrets=True, reaches_databases=True, masks_samples=True,
    ),
    state_machine.WRITE_REPORT: ReplayFunction(
        handler="functions.shadow.tasks.write_report_handler",
        description="ends a replay: its report from its batch results (or why it did not finish), its secrets "
                    "deleted and its key revoked",
        memory_mb=1024, timeout_seconds=300, reserved_concurrency=5, deletes_secrets=True, revokes_key=True,
    ),
}
# Definition functions that run in another's Lambda. EndReplay ends a replay that will not reach WriteReport
# (called by the definition's Catch, and by the ExecutionEnded rule for FAILED, TIMED_OUT and ABORTED) and needs
# exactly WriteReport's grants, so it is WriteReport's function (functions.shadow.tasks dispatches on the event):
# four more resources would push the stack past CloudFormation's 500.
SHARED_FUNCTIONS: Final[Mapping[str, str]] = {state_machine.END_REPLAY: state_machine.WRITE_REPORT}
if set(REPLAY_FUNCTIONS) | set(SHARED_FUNCTIONS) != set(state_machine.FUNCTIONS):
    raise ImportError(f"shadow Lambdas {sorted(REPLAY_FUNCTIONS)} differ from the definition's "
                      f"{sorted(state_machine.FUNCTIONS)}")

_VPC_ACCESS_ACTIONS: Final = ("ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
                              "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses",
                              "ec2:UnassignPrivateIpAddresses")
_XRAY_ACTIONS: Final = ("xray:PutTraceSegments", "xray:PutTelemetryRecords")
# What Step Functions needs to deliver its logs (CloudWatch Logs vended delivery): none of these actions has
# resource-level permissions (AWS's Step Functions logging documentation).
_LOG_DELIVERY_ACTIONS: Final = ("logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery",
                                "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy",
                                "logs:DescribeResourcePolicies", "logs:DescribeLogGroups")
_STATE_MACHINE_XRAY_ACTIONS: Final = (*_XRAY_ACTIONS, "xray:GetSamplingRules", "xray:GetSamplingTargets")

_FUNCTION_ANY_RESOURCE_REASON: Final = (
    "Resource '*' only for actions that have no resource-level permissions: X-Ray PutTraceSegments/"
    "PutTelemetryRecords and the network-interface actions Lambda needs to place the function in the VPC."
)
_STATE_MACHINE_ANY_RESOURCE_REASON: Final = (
    "Resource '*' only for actions without resource-level permissions: CloudWatch Logs' vended log delivery "
    "(CreateLogDelivery and the rest, which Step Functions logging requires on '*') and X-Ray tracing."
)
_DATA_PREFIX_REASON: Final = (
    "Objects under the data bucket's shadow prefix only: query sets, replay plans, batch results and reports "
    "are new objects named by query set and replay id, so no fixed object ARN exists; no delete is granted."
)
_DSN_PREFIX_REASON: Final = (
    "Secrets named under the shadow prefix only: the control API stores each replay's comparison DSN as a new "
    "secret whose name and random ARN suffix exist only at run time, so the prefix is the narrowest grant."
)
_L1_REASON: Final = (
    "Pinned to Python 3.12: the dependency layer is built from cp312 manylinux aarch64 wheels and the control "
    "plane is tested on that version; moving runtime is a deliberate upgrade of runtime and layer together."
)
_SYNCHRONOUS_REASON: Final = (
    "Step Functions invokes this function synchronously: a failure returns to the state machine, whose Retry "
    "and Catch record the batch as an error; a dead-letter queue only ever receives asynchronous invocations."
)
_END_REPLAY_DLQ_REASON: Final = (
    "Its asynchronous invocations come only from the ExecutionEnded rule (EndReplay), whose target retries for "
    "24 hours; an invocation that still fails raises the ExecutionsFailed alarm (its Errors are in it), and the "
    "replay's key expires by itself 24 hours after it was issued. Its synchronous invocations return to the "
    "state machine."
)
# How long EventBridge keeps retrying EndReplay for an execution that ended: the replay key's own lifetime.
END_REPLAY_EVENT_MAX_AGE: Final = Duration.hours(24)
END_REPLAY_EVENT_RETRIES: Final = 185  # EventBridge's maximum: every attempt within the event's max age


@dataclass(frozen=True)
class KeyRevocation:
    """The control plane's resources WriteReport revokes a replay's key with (see the module docstring)."""

    table: dynamodb.ITable
    table_key: kms.IKey  # encrypts the table: used only through DynamoDB
    audit_bucket: s3.IBucket  # IAM checkpoints only
    audit_key: kms.IKey  # encrypts the audit bucket: used only through S3
    checkpoint_key: kms.IKey  # signs the chain's checkpoints
    signing_key: kms.IKey  # named in the settings, never granted


_CHECKPOINTS_REASON: Final = (
    "IAM checkpoints only: each revocation's IAM event is signed into a new checkpoint object named by its chain "
    "and position, so the checkpoint prefix is the narrowest grant; PutObject only, no read, no delete."
)


@dataclass(frozen=True)
class ComparisonNetwork:
    """Where the customer's comparison PostgreSQL is (validated CIDRs; none reaches nothing) and its port."""

    cidrs: tuple[str, ...] = ()
    port: int = constants.SHADOW_COMPARISON_PORT_DEFAULT


def comparison_network(scope: Construct) -> ComparisonNetwork:
    """The comparison PostgreSQL's network from context (`hd:shadowComparisonCidrs`, `hd:shadowComparisonPort`).

    CIDRs are a list or one comma-separated string; ValueError for a malformed or world-open range or a port
    outside 1-65535.
    """
    raw = scope.node.try_get_context(constants.CONTEXT_SHADOW_COMPARISON_CIDRS) or []
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    cidrs = validated_cidrs([str(item) for item in items if str(item).strip()])
    port_value = scope.node.try_get_context(constants.CONTEXT_SHADOW_COMPARISON_PORT)
    port = constants.SHADOW_COMPARISON_PORT_DEFAULT if port_value in (None, "") else int(port_value)
    if not 1 <= port <= 65535:
        raise ValueError(f"context {constants.CONTEXT_SHADOW_COMPARISON_PORT} must be a TCP port, got {port_value!r}")
    return ComparisonNetwork(cidrs=tuple(cidrs), port=port)


class ShadowReplay(Construct):
    """The shadow replay's Lambdas, state machine, network paths, secret grants and failure alarm.

    Attributes: `functions` (logical name of the definition -> Function), `roles` (same keys),
    `dependency_layer` (sqlglot and psycopg, also added to the API's shadow function),
    `state_machine`, `log_group` (execution logs), `security_group` (ReplayBatch's), `secret_arn_pattern`,
    `step_functions_endpoint`, `failed_alarm`, `ended_rule` (an execution that ended FAILED, TIMED_OUT or
    ABORTED -> EndReplay, for what the definition's Catch cannot see).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        lambda_sg: ec2.ISecurityGroup,
        endpoint_sg: ec2.ISecurityGroup,
        engine_nlb_sg: ec2.ISecurityGroup,
        engine_host: str,
        engine_ca_file: str = "",
        data_bucket: s3.IBucket,
        data_key: kms.IKey,
        logs_key: kms.IKey,
        alarm_topic: sns.ITopic,
        code: lambda_.Code,
        layers: Sequence[lambda_.ILayerVersion],
        comparison: ComparisonNetwork = ComparisonNetwork(),
        api_function: lambda_.Function | None = None,
        api_role: iam.IRole | None = None,
        key_revocation: KeyRevocation | None = None,
    ) -> None:
        """`engine_host` is the engine NLB's DNS name (or a name in the engine's certificate that resolves to it);
        `engine_ca_file` the sslrootcert that verifies the engine; `engine_nlb_sg` the NLB's security group, which
        is opened to ReplayBatch on 5439. `api_function`/`api_role` (the control API's shadow function and its
        real role) are given StartExecution and the secret grants, and the settings to use them.
        `key_revocation` lets WriteReport revoke each replay's key when it ends (without it the key expires
        24 h after the replay started)."""
        super().__init__(scope, id)
        if (api_function is None) != (api_role is None):
            raise ValueError("give the control API's shadow function together with its role, or neither")
        stack = Stack.of(self)
        self._data_bucket = data_bucket
        self._data_key = data_key
        self._logs_key = logs_key
        self._revocation = key_revocation
        self.state_machine_name = f"{stack.stack_name}-shadow-replay"
        self.secret_arn_pattern: str = stack.format_arn(
            service="secretsmanager", resource="secret", resource_name=f"{constants.SHADOW_SECRET_PREFIX}*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        self.security_group = self._replay_security_group(vpc, engine_nlb_sg, comparison)
        self.dependency_layer = packaging.dependency_layer(
            self, "DependencyLayer", packaging.SHADOW_REQUIREMENTS,
            "Third-party runtime packages of shadow replay: SQL parsing and the Postgres wire",
        )
        layers = [*layers, self.dependency_layer]
        # functions/shadow/wiring.py ShadowSettings: documents in the data bucket (under shadow/), the engine
        # through its NLB. Prepare and WriteReport never connect anywhere, but build the same services.
        self._settings = {
            "HD_SHADOW_BUCKET": data_bucket.bucket_name,
            "HD_SHADOW_ENGINE_HOST": engine_host,
            "HD_SHADOW_ENGINE_PORT": str(constants.PGWIRE_PORT),
            **({"HD_SHADOW_ENGINE_CA_FILE": engine_ca_file} if engine_ca_file else {}),
        }
        environment = {
            **self._settings,
            "POWERTOOLS_METRICS_NAMESPACE": constants.METRICS_NAMESPACE,
            "POWERTOOLS_LOG_LEVEL": "INFO",
        }
        self.functions: dict[str, lambda_.Function] = {}
        self.roles: dict[str, iam.Role] = {}
        for name, spec in REPLAY_FUNCTIONS.items():
            groups = [lambda_sg, *([self.security_group] if spec.reaches_databases else [])]
            self.functions[name] = self._function(
                name, spec, vpc, subnets, groups, code, layers,
                environment,
            )
        self.log_group = logs.LogGroup(
            self, "ExecutionLogs",
            log_group_name=f"{VENDED_LOGS_PREFIX}{stack.stack_name}-shadow-replay",
            retention=LOG_RETENTION,
            encryption_key=logs_key,
            removal_policy=RemovalPolicy.RETAIN,  # evidence of who replayed what; expires by retention
        )
        self.state_machine = self._state_machine()
        self.step_functions_endpoint = self._step_functions_endpoint(vpc, subnets, endpoint_sg)
        self.failed_alarm = self._failed_alarm(alarm_topic)
        self.ended_rule = self._ended_rule()
        if api_function is not None and api_role is not None:
            self._grant_api(api_function, api_role)

    # --- network --------------------------------------------------------------------------------------

    def _replay_security_group(self, vpc: ec2.IVpc, engine_nlb_sg: ec2.ISecurityGroup,
                               comparison: ComparisonNetwork) -> ec2.SecurityGroup:
        group = ec2.SecurityGroup(
            self, "ReplaySg", vpc=vpc, allow_all_outbound=False,
            description="Shadow ReplayBatch: pgwire to the engine NLB and to the comparison PostgreSQL",
        )
        pgwire = ec2.Port.tcp(constants.PGWIRE_PORT)
        group.add_egress_rule(engine_nlb_sg, pgwire, "pgwire to the engine NLB (governed, audited)")
        engine_nlb_sg.add_ingress_rule(group, pgwire, "pgwire from the shadow replay Lambda")
        for cidr in comparison.cidrs:
            group.add_egress_rule(ec2.Peer.ipv4(cidr), ec2.Port.tcp(comparison.port),
                                  f"comparison PostgreSQL at {cidr}")
        return group

    def _step_functions_endpoint(self, vpc: ec2.IVpc, subnets: ec2.SubnetSelection,
                                 endpoint_sg: ec2.ISecurityGroup) -> ec2.InterfaceVpcEndpoint:
        """Step Functions for the control API in the isolated subnets; the endpoint serves this state machine only."""
        endpoint = ec2.InterfaceVpcEndpoint(
            self, "StepFunctionsEndpoint",
            vpc=vpc,
            service=ec2.InterfaceVpcEndpointAwsService.STEP_FUNCTIONS,
            subnets=subnets,
            security_groups=[endpoint_sg],
            private_dns_enabled=True,
            open=False,  # HTTPS from the Lambda group only, as for the network's other endpoints
        )
        endpoint.add_to_policy(iam.PolicyStatement(
            principals=[iam.AnyPrincipal()],
            actions=["states:StartExecution"],
            resources=[self.state_machine.state_machine_arn],
        ))
        endpoint.add_to_policy(iam.PolicyStatement(
            principals=[iam.AnyPrincipal()],
            actions=["states:DescribeExecution"],
            resources=[self.execution_arn_pattern],
        ))
        return endpoint

    # --- functions ------------------------------------------------------------------------------------

    def _function(self, name: str, spec: ReplayFunction, vpc: ec2.IVpc, subnets: ec2.SubnetSelection,
                  groups: Sequence[ec2.ISecurityGroup], code: lambda_.Code, layers: Sequence[lambda_.ILayerVersion],
                  environment: dict[str, str]) -> lambda_.Function:
        log_group = logs.LogGroup(
            self, f"{name}Logs", retention=LOG_RETENTION, encryption_key=self._logs_key,
            removal_policy=RemovalPolicy.RETAIN,
        )
        policy = iam.ManagedPolicy(
            self, f"{name}Policy",
            description=f"Hardened Duck shadow replay: exactly what {name} calls",
            statements=self._function_statements(spec, log_group),
        )
        self._acknowledge_wildcards(policy, {"*": _FUNCTION_ANY_RESOURCE_REASON,
                                             **self._prefix_findings(
                                                 secrets=spec.reads_secrets or spec.deletes_secrets),
                                             **(self._revocation_findings() if self._revokes(spec) else {})})
        role = iam.Role(
            self, f"{name}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Hardened Duck shadow replay: the {name} function",
            managed_policies=[policy],
        )
        self.roles[name] = role
        function = lambda_.Function(
            self, name,
            description=f"Hardened Duck shadow replay: {spec.description}",
            runtime=LAMBDA_RUNTIME,
            architecture=LAMBDA_ARCHITECTURE,
            code=code,
            handler=spec.handler,
            layers=list(layers),
            role=role.without_policy_updates(),  # the managed policy says everything; CDK adds nothing
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=list(groups),
            memory_size=spec.memory_mb,
            timeout=Duration.seconds(spec.timeout_seconds),
            reserved_concurrent_executions=spec.reserved_concurrency,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            environment={**environment, **(self._revocation_settings() if self._revokes(spec) else {}),
                         **(self._sample_mask_settings() if self._masks(spec) else {}),
                         "POWERTOOLS_SERVICE_NAME": f"hd-shadow-{name.lower()}"},
        )
        acknowledge(function, "AwsSolutions-L1", _L1_REASON)
        dlq_reason = _END_REPLAY_DLQ_REASON if name in SHARED_FUNCTIONS.values() else _SYNCHRONOUS_REASON
        for pack in ("HIPAA.Security", "NIST.800.53.R5"):
            acknowledge(function, f"{pack}-LambdaDLQ", dlq_reason)
        return function

    def _function_statements(self, spec: ReplayFunction, log_group: logs.LogGroup) -> list[iam.PolicyStatement]:
        statements = [
            _allow(["logs:CreateLogStream", "logs:PutLogEvents"], [log_group.log_group_arn]),
            _allow(_VPC_ACCESS_ACTIONS, ["*"]),
            _allow(_XRAY_ACTIONS, ["*"]),
            *self._data_prefix_statements(),
        ]
        if spec.reads_secrets:
            statements.extend(self._secret_statements(create=False))
        if spec.deletes_secrets:
            # hd_core.adapters.aws_shadow deletes with this window; no force-delete, no shorter window.
            statements.append(_allow(["secretsmanager:DeleteSecret"], [self.secret_arn_pattern], {
                "NumericEquals": {"secretsmanager:RecoveryWindowInDays": SECRET_RECOVERY_DAYS}}))
        if self._revokes(spec):
            statements.extend(self._revocation_statements())
            statements.extend(self._region_pin_statements())
        if self._masks(spec):
            statements.extend(self._sample_mask_statements())
        return statements

    def _masks(self, spec: ReplayFunction) -> bool:
        return spec.masks_samples and self._revocation is not None

    def _sample_mask_statements(self) -> list[iam.PolicyStatement]:
        """What `sample_masks.control_masking` reads (`SAMPLE_MASK_TABLE_ACCESS`, item kind by item kind) and the
        mask keys' unwrapping: Decrypt with the data key for the mask-key purpose only; the table's region pin."""
        assert self._revocation is not None
        r, region = self._revocation, Stack.of(self).region
        return [
            *(_allow(actions, [r.table.table_arn], {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [partition]}})
              for actions, _, partition in SAMPLE_MASK_TABLE_ACCESS),
            _allow(["kms:Decrypt", "kms:DescribeKey"], [r.table_key.key_arn],
                   {"StringEquals": {"kms:ViaService": f"dynamodb.{region}.amazonaws.com"}}),
            _allow(["kms:Decrypt"], [self._data_key.key_arn],
                   {"StringEquals": {"kms:EncryptionContext:purpose": MASK_KEY_PURPOSE}}),
            _allow(["dynamodb:DescribeTable"], [r.table.table_arn]),
        ]

    def _sample_mask_settings(self) -> dict[str, str]:
        """functions/shadow/wiring.py: HD_SHADOW_SAMPLE_MASKS and the control settings it reads with."""
        assert self._revocation is not None
        r = self._revocation
        return {
            "HD_SHADOW_SAMPLE_MASKS": "true",
            "HD_STORE": "dynamodb",
            "HD_KEYS": "kms",
            "HD_DYNAMODB_TABLE": r.table.table_name,
            "HD_KMS_JWT_KEY_IDS": r.signing_key.key_arn,  # named only: the key provider's constructor wants one
            "HD_KMS_CHECKPOINT_KEY_ID": r.checkpoint_key.key_arn,  # likewise named only
            "HD_KMS_DATA_KEY_ID": self._data_key.key_arn,  # unwraps the mask keys (their purpose only)
        }

    def _region_pin_statements(self) -> list[iam.PolicyStatement]:
        """With the control settings, WriteReport's region pin also places the control table and the audit bucket."""
        assert self._revocation is not None
        r = self._revocation
        return [_allow(["dynamodb:DescribeTable"], [r.table.table_arn]),
                _allow(["s3:GetBucketLocation", "s3:GetReplicationConfiguration"], [r.audit_bucket.bucket_arn])]

    def _revokes(self, spec: ReplayFunction) -> bool:
        return spec.revokes_key and self._revocation is not None

    def _revocation_statements(self) -> list[iam.PolicyStatement]:
        """What `key_admin.revoke_key` calls, item kind by item kind (partition keys), and nothing more."""
        assert self._revocation is not None
        r, region = self._revocation, Stack.of(self).region
        table, index = r.table.table_arn, f"{r.table.table_arn}/index/{GSI1_NAME}"

        return [
            *(_allow(actions, [index if on_index else table],
                     {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [partitions]}})
              for actions, on_index, partitions in KEY_REVOCATION_TABLE_ACCESS),
            _allow(["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"], [r.table_key.key_arn],
                   {"StringEquals": {"kms:ViaService": f"dynamodb.{region}.amazonaws.com"}}),
            _allow(["kms:Sign"], [r.checkpoint_key.key_arn]),
            _allow(["s3:PutObject"], [r.audit_bucket.arn_for_objects(f"{constants.AUDIT_IAM_CHECKPOINTS_PREFIX}*")]),
            _allow(["kms:GenerateDataKey"], [r.audit_key.key_arn],
                   {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}}),
        ]

    def _revocation_findings(self) -> dict[str, str]:
        assert self._revocation is not None
        bucket = _nag_reference(Stack.of(self), self._revocation.audit_bucket.bucket_arn)
        return {f"{bucket}/{constants.AUDIT_IAM_CHECKPOINTS_PREFIX}*": _CHECKPOINTS_REASON}

    def _revocation_settings(self) -> dict[str, str]:
        """functions/shadow/wiring.py: HD_SHADOW_REVOKE_KEYS and the control plane's `ControlApiSettings`."""
        assert self._revocation is not None
        r = self._revocation
        return {
            "HD_SHADOW_REVOKE_KEYS": "true",
            "HD_STORE": "dynamodb",
            "HD_KEYS": "kms",
            "HD_AUDIT": "s3",
            "HD_DYNAMODB_TABLE": r.table.table_name,
            "HD_AUDIT_BUCKET": r.audit_bucket.bucket_name,
            "HD_KMS_JWT_KEY_IDS": r.signing_key.key_arn,  # named only: the key provider's constructor wants one
            "HD_KMS_CHECKPOINT_KEY_ID": r.checkpoint_key.key_arn,
            "HD_KMS_DATA_KEY_ID": self._data_key.key_arn,  # likewise named only
        }

    def _data_prefix_statements(self) -> list[iam.PolicyStatement]:
        """Read, write and list objects under the data bucket's shadow prefix, with the data key through S3."""
        region = Stack.of(self).region
        prefix = f"{constants.SHADOW_DATA_PREFIX}*"
        return [
            # The region pin (hd_core.control_plane_pin): where the bucket is and where it replicates to.
            _allow(["s3:GetBucketLocation", "s3:GetReplicationConfiguration"], [self._data_bucket.bucket_arn]),
            _allow(["s3:ListBucket"], [self._data_bucket.bucket_arn], {"StringLike": {"s3:prefix": [prefix]}}),
            _allow(["s3:GetObject", "s3:PutObject"], [self._data_bucket.arn_for_objects(prefix)]),
            _allow(["kms:Decrypt", "kms:GenerateDataKey"], [self._data_key.key_arn],
                   {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}}),
            # The region pin describes the key sealing the secrets when it is multi-region (`mrk-`: where are
            # its primary and replicas?). Metadata only: no cryptographic use.
            _allow(["kms:DescribeKey"], [self._data_key.key_arn]),
        ]

    def _secret_statements(self, *, create: bool) -> list[iam.PolicyStatement]:
        """Read (or create, with the data key only) secrets under the shadow prefix; the key through Secrets
        Manager, for a secret of that prefix only (Secrets Manager's encryption context names the secret)."""
        region = Stack.of(self).region
        key_context = {
            "StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"},
            "StringLike": {"kms:EncryptionContext:SecretARN": self.secret_arn_pattern},
        }
        if not create:
            return [
                _allow(["secretsmanager:GetSecretValue"], [self.secret_arn_pattern]),
                _allow(["kms:Decrypt"], [self._data_key.key_arn], key_context),
            ]
        return [
            _allow(["secretsmanager:CreateSecret"], [self.secret_arn_pattern],
                   {"StringEquals": {"secretsmanager:KmsKeyArn": self._data_key.key_arn}}),
            # CreateSecret with tags is authorised for TagResource too: only the replay's purpose tag.
            _allow(["secretsmanager:TagResource"], [self.secret_arn_pattern], {
                "StringEquals": {f"aws:RequestTag/{SECRET_TAG_KEY}": SECRET_TAG_VALUE},
                "ForAllValues:StringEquals": {"aws:TagKeys": [SECRET_TAG_KEY]},
            }),
            _allow(["kms:GenerateDataKey", "kms:Decrypt"], [self._data_key.key_arn], key_context),
        ]

    def _prefix_findings(self, *, secrets: bool) -> dict[str, str]:
        """cdk-nag's IAM5 finding ids for the prefix grants, each with why it is acceptable."""
        stack = Stack.of(self)
        bucket = _nag_reference(stack, self._data_bucket.bucket_arn)
        findings = {f"{bucket}/{constants.SHADOW_DATA_PREFIX}*": _DATA_PREFIX_REASON}
        if secrets:
            findings[_nag_reference(stack, self.secret_arn_pattern)] = _DSN_PREFIX_REASON
        return findings

    @staticmethod
    def _acknowledge_wildcards(policy: iam.ManagedPolicy, findings: Mapping[str, str]) -> None:
        for finding, reason in findings.items():
            acknowledge(policy, f"AwsSolutions-IAM5[Resource::{finding}]", reason)

    # --- state machine ----------------------------------------------------------------------------------

    def _state_machine(self) -> sfn.StateMachine:
        functions = self.functions
        policy = iam.ManagedPolicy(
            self, "StateMachinePolicy",
            description="Hardened Duck shadow replay: the state machine invokes its three Lambdas, logs and traces",
            statements=[
                _allow(["lambda:InvokeFunction"], [function.function_arn for function in functions.values()]),
                _allow(_LOG_DELIVERY_ACTIONS, ["*"]),
                _allow(_STATE_MACHINE_XRAY_ACTIONS, ["*"]),
            ],
        )
        self._acknowledge_wildcards(policy, {"*": _STATE_MACHINE_ANY_RESOURCE_REASON})
        role = iam.Role(
            self, "StateMachineRole",
            assumed_by=iam.ServicePrincipal(
                "states.amazonaws.com",
                # Confused-deputy guard: only this account's state machines may assume the role.
                conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}},
            ),
            description="Hardened Duck shadow replay: the state machine",
            managed_policies=[policy],
        )
        document = state_machine.definition({name: self.function_of(name).function_arn
                                             for name in state_machine.FUNCTIONS})
        machine = sfn.StateMachine(
            self, "StateMachine",
            state_machine_name=self.state_machine_name,  # so its executions' ARNs are known at synth
            definition_body=sfn.DefinitionBody.from_string(Stack.of(self).to_json_string(document)),
            state_machine_type=sfn.StateMachineType.STANDARD,  # exactly-once task steps; a replay may take hours
            role=role.without_policy_updates(),
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=False),
            tracing_enabled=True,
            comment="Hardened Duck shadow replay (hd_core.shadow.state_machine)",
        )
        # The role must hold its policy before Step Functions validates the log destination and the tasks.
        machine.node.add_dependency(policy)
        return machine

    def function_of(self, name: str) -> lambda_.Function:
        """The Lambda that runs the definition's function `name` (EndReplay: WriteReport's)."""
        return self.functions[SHARED_FUNCTIONS.get(name, name)]

    @property
    def execution_arn_pattern(self) -> str:
        """Every execution of this state machine (`arn:...:execution:<name>:*`)."""
        return Stack.of(self).format_arn(
            service="states", resource="execution",
            resource_name=f"{self.state_machine_name}:*", arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )

    def _failed_alarm(self, topic: sns.ITopic) -> cloudwatch.Alarm:
        failed = self.state_machine.metric_failed(period=ALARM_PERIOD, statistic="Sum")
        timed_out = self.state_machine.metric_timed_out(period=ALARM_PERIOD, statistic="Sum")
        # WriteReport's errors: a report or a replay's end (EndReplay, also invoked by the ExecutionEnded rule,
        # where no execution status shows its failure) that failed, so its secrets or key may be left.
        ending_failed = self.functions[state_machine.WRITE_REPORT].metric_errors(period=ALARM_PERIOD,
                                                                                statistic="Sum")
        alarm = cloudwatch.Alarm(
            self, "ExecutionsFailed",
            metric=cloudwatch.MathExpression(
                expression="FILL(failed, 0) + FILL(timedOut, 0) + FILL(endingFailed, 0)",
                using_metrics={"failed": failed, "timedOut": timed_out, "endingFailed": ending_failed},
                label="Shadow replay executions failed or timed out",
                period=ALARM_PERIOD,
            ),
            threshold=1,
            evaluation_periods=1,
            datapoints_to_alarm=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description="A shadow replay execution failed or timed out (a failed batch alone does not fail "
                              "it), or ending a replay failed",
        )
        alarm.add_alarm_action(cloudwatch_actions.SnsAction(topic))
        return alarm

    def _ended_rule(self) -> events.Rule:
        """Step Functions' "Execution Status Change" events of this state machine that end a replay without
        WriteReport (its TimeoutSeconds, StopExecution, a failure no Catch saw) invoke EndReplay, which ends it."""
        rule = events.Rule(
            self, "ExecutionEnded",
            description="Hardened Duck shadow replay: an execution that did not finish ends its replay "
                        "(secrets deleted, key revoked)",
            event_pattern=events.EventPattern(
                source=["aws.states"],
                detail_type=["Step Functions Execution Status Change"],
                detail={"stateMachineArn": [self.state_machine.state_machine_arn],
                        "status": list(state_machine.UNFINISHED_STATUSES)},
            ),
        )
        rule.add_target(targets.LambdaFunction(self.function_of(state_machine.END_REPLAY),
                                               retry_attempts=END_REPLAY_EVENT_RETRIES,
                                               max_event_age=END_REPLAY_EVENT_MAX_AGE))
        return rule

    # --- the control API's shadow function ------------------------------------------------------------

    def _grant_api(self, function: lambda_.Function, role: iam.IRole) -> None:
        """The API function may start this state machine, read its executions, store DSN secrets under the
        prefix with the data key, and read and write the shadow prefix (uploads, reports); nothing more."""
        policy = iam.ManagedPolicy(
            self, "ApiPolicy",
            description="Hardened Duck control API: the shadow function starts replays and stores their secrets",
            statements=[
                _allow(["states:StartExecution"], [self.state_machine.state_machine_arn]),
                _allow(["states:DescribeExecution"], [self.execution_arn_pattern]),
                *self._secret_statements(create=True),
                *self._data_prefix_statements(),
            ],
            roles=[role],
        )
        execution_finding = _nag_reference(Stack.of(self), self.execution_arn_pattern)
        self._acknowledge_wildcards(policy, {
            **self._prefix_findings(secrets=True),
            execution_finding: "DescribeExecution on this state machine's executions only: an execution's ARN is "
                               "named by its replay id at run time, so the state machine's execution prefix is "
                               "the narrowest grant (status of a running replay).",
        })
        settings = {
            **self._settings,
            "HD_SHADOW_STATE_MACHINE_ARN": self.state_machine.state_machine_arn,
            # The ARN, not the key id: CreateSecret is allowed only when the request names this key's ARN.
            "HD_SHADOW_SECRETS_KMS_KEY_ID": self._data_key.key_arn,
        }
        for name, value in settings.items():
            function.add_environment(name, value)
        function.add_layers(self.dependency_layer)  # the upload parses every statement with sqlglot


def _allow(actions: Sequence[str], resources: Sequence[str], conditions: Mapping[str, Any] | None = None,
           ) -> iam.PolicyStatement:
    return iam.PolicyStatement(actions=list(actions), resources=list(resources),
                               conditions=dict(conditions) if conditions else None)


def _nag_reference(stack: Stack, value: str) -> str:
    """How cdk-nag writes a resource in a finding id (`<Logical.Attr>` for GetAtt, `<Logical>` for Ref, and
    `<AWS::Partition>` style for pseudo parameters inside a joined string)."""
    resolved = stack.resolve(value)
    return _nag_text(resolved)


def _nag_text(node: Any) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, dict) and "Fn::GetAtt" in node:
        logical_id, attribute = node["Fn::GetAtt"]
        return f"<{logical_id}.{attribute}>"
    if isinstance(node, dict) and "Ref" in node:
        return f"<{node['Ref']}>"
    if isinstance(node, dict) and "Fn::Join" in node:
        separator, parts = node["Fn::Join"]
        return str(separator).join(_nag_text(part) for part in parts)
    if isinstance(node, dict) and "Fn::Select" in node:
        # cdk-nag does not resolve Fn::Select / Fn::Split; such ids need handling by their caller.
        raise ValueError(f"cannot name a cdk-nag finding for {node!r}")
    return str(node)
