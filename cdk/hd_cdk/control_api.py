"""The control API: one Lambda per control-plane function behind an API Gateway REST API built from openapi.json.

Security decisions visible here:
- every function runs Python 3.12 on arm64 inside the VPC's isolated subnets with the Lambda security
  group, with reserved concurrency, X-Ray tracing, a KMS-encrypted log group kept one year and a
  KMS-encrypted dead-letter queue for failed asynchronous (EventBridge) invocations. `worker` builds
  route-less functions the same way (lifecycle.py); the one exception to the VPC is the webhook delivery
  Lambda, which must reach public HTTPS endpoints that the isolated subnets cannot (lifecycle.py says why);
- each function has its own role whose one customer-managed policy lists exactly what its adapters call
  (`FUNCTION_ACCESS`), on the named resources: DynamoDB item actions on the table and GSI1, KMS actions
  per key (data keys only with the TOTP encryption context), S3 only under the audit prefixes it reads or
  writes, never `s3:DeleteObject`, `kms:ScheduleKeyDeletion` or a `*` action. The role ignores the policy
  additions CDK would make on its own, so nothing reaches it except through that policy;
- routes come from `functions/openapi.json` (`x-hd-function` picks the Lambda); `x-hd-auth: aws_iam`
  operations (the engine hosts' heartbeat) need SigV4 (AWS_IAM) and the resource policy refuses every
  other principal than the fleet role there; every other route authenticates in its Lambda (JWT or API
  key, `hd_core.request_auth`), as `hd dev` does;
- API Gateway validates required parameters and JSON bodies against the OpenAPI schemas before a Lambda
  runs and answers refusals in the `{"error": {"code": "HD_ERR_…"}}` shape;
- TLS 1.3 only: the enhanced security policy `SecurityPolicy_TLS13_1_3_2025_09` with STRICT endpoint access
  (seed: the control plane API enforces TLS 1.3); API Gateway's legacy minimum would have been TLS 1.2;
- the stage has throttling (tighter on sign-in), access logs in a KMS-encrypted log group (with the TLS
  version of every request), execution logs without request bodies, metrics and X-Ray;
- REGIONAL, or PRIVATE (`private_api`, a bool or a deploy-time CfnCondition): reachable only through this
  VPC's execute-api interface endpoint, enforced by the resource policy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aws_cdk import CfnCondition, Duration, Fn, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from hd_cdk import constants
from hd_cdk.nag import acknowledge
from hd_cdk.packaging import LAMBDA_ARCHITECTURE, LAMBDA_RUNTIME
from hd_core.adapters.dynamodb_schema import create_table_kwargs
from hd_core.policy_previews import FLEET, PREVIEWS_ENV

OPENAPI_DOCUMENT: Final = Path(__file__).resolve().parents[2] / "functions" / "openapi.json"
STAGE_NAME: Final = constants.CONTROL_API_STAGE
HEARTBEAT_PATH: Final = "/v1/fleet/heartbeat"
HEARTBEAT_METHOD: Final = "POST"
TLS_SECURITY_POLICY: Final = constants.CONTROL_API_TLS_POLICY
LOG_RETENTION: Final = logs.RetentionDays.ONE_YEAR  # Lambda and API access log groups
SIGN_IN_ROUTES: Final[tuple[str, ...]] = (
    "/v1/auth/login/POST",
    "/v1/auth/refresh/POST",
    "/v1/auth/federate/POST",
    "/v1/auth/mfa/enroll-with-password/POST",
    "/v1/auth/mfa/confirm-with-password/POST",
    "/v1/auth/password/change/POST",  # no session: email and password prove the change
)
SWEEP_EXPIRED_KEYS_EVERY: Final = Duration.minutes(constants.EXPIRED_KEY_SWEEP_MINUTES)
CHECKPOINT_EVERY: Final = Duration.minutes(constants.IAM_CHECKPOINT_MINUTES)
# hd_core names: the pepper is the one setting a read-only function may create (bootstrap.ensure_pepper);
# TOTP seeds are sealed with data keys under this encryption context purpose (sealed_secrets).
PEPPER_SETTING_KEY: Final = "SETTING#api_key_cache_pepper"
SEALED_SECRET_PURPOSE: Final = "totp-secret"  # noqa: S105 - an encryption-context label, not a secret


@dataclass(frozen=True)
class FunctionAccess:
    """What one function's adapters call (and so all its role may do), and how it runs."""

    writes_table: bool = True  # entity writes (PutItem/UpdateItem/DeleteItem/ConditionCheckItem)
    verifies_tokens: bool = True  # JWT public keys: kms:GetPublicKey on the signing key
    signs_tokens: bool = False  # kms:Sign on the signing key
    records_iam_events: bool = True  # IAM trail: signs and stores checkpoints in the audit bucket
    verifies_checkpoints: bool = False  # kms:GetPublicKey on the checkpoint key
    seals_secrets: bool = False  # TOTP seeds: data keys under the sealed-secret encryption context
    sealed_purpose: str = SEALED_SECRET_PURPOSE  # that context's purpose (webhook secrets have their own)
    reads_query_audit: bool = False  # lists and reads the query audit partitions
    # Creates query chain checkpoints (the heads hosts that stopped left unsigned); needs reads_query_audit and
    # verifies_checkpoints, since it verifies a chain before signing its head.
    signs_owed_query_checkpoints: bool = False
    stores_audit_exports: bool = False  # puts audit exports under audit/exports/ and presigns GETs of them
    describes_instances: bool = False  # ec2:DescribeInstances (fleet membership)
    # No engine beside the function: dry runs and explain go to the fleet through the control table
    # (hd_core/policy_previews.py), whose hosts already read and update it; nothing more is granted.
    asks_fleet_for_previews: bool = False
    reserved_concurrency: int = 10
    memory_mb: int = 512
    timeout_seconds: int = 20

    def __post_init__(self) -> None:
        if self.signs_owed_query_checkpoints and not (self.reads_query_audit and self.verifies_checkpoints):
            raise ValueError("signing owed query checkpoints verifies the chain first: it needs reads_query_audit "
                             "and verifies_checkpoints")


# One entry per function of functions/openapi.py FUNCTION_MODULES, read from the handlers and their adapters.
FUNCTION_ACCESS: Final[Mapping[str, FunctionAccess]] = {
    # Sign-in: issues JWTs, seals/opens TOTP seeds; Argon2id is CPU-bound, so more memory (= more CPU).
    "auth": FunctionAccess(signs_tokens=True, seals_secrets=True, reserved_concurrency=20, memory_mb=1024),
    "users": FunctionAccess(),
    "api_keys": FunctionAccess(),
    "policies": FunctionAccess(asks_fleet_for_previews=True),
    "jit": FunctionAccess(),
    "quotas": FunctionAccess(),
    # Reads the trail and the query audit, verifies the chain, and on a schedule checkpoints every org and signs
    # the query chain heads that hosts which stopped without signing them left owed.
    "audit": FunctionAccess(
        verifies_checkpoints=True, reads_query_audit=True, signs_owed_query_checkpoints=True,
        stores_audit_exports=True, reserved_concurrency=5, timeout_seconds=300,
    ),
    # Heartbeats: IAM-authenticated, no tokens and no IAM events; reads the org, asks EC2 about the host.
    "fleet": FunctionAccess(
        writes_table=False, verifies_tokens=False, records_iam_events=False, describes_instances=True,
        reserved_concurrency=20,
    ),
    # Shadow mode: issues a replay's ServiceAccount key (an IAM event); parses uploads with sqlglot (CPU, so more
    # memory). Its grants on the state machine, the replay secrets and the shadow prefix are in shadow.py.
    "shadow": FunctionAccess(reserved_concurrency=5, memory_mb=1024, timeout_seconds=29),
    # Webhook endpoints (issue 19): seals each endpoint's signing secret under its own purpose.
    "webhooks": FunctionAccess(seals_secrets=True, sealed_purpose="webhook-secret"),
    # GDPR forget requests (issue 20): seals each subject id, and wraps the erasure HMAC key, under one purpose;
    # the work runs in the forget worker (erasure.py), which this function invokes.
    "forget": FunctionAccess(seals_secrets=True, sealed_purpose="forget-subject"),
}

_DYNAMODB_READS: Final = ("dynamodb:GetItem", "dynamodb:Query")
# TransactWriteItems is authorised per item action, so these cover the adapter's transactions too.
_DYNAMODB_WRITES: Final = ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                           "dynamodb:ConditionCheckItem")
# What Lambda needs to attach a function to the VPC; EC2 offers no resource-level scoping for the describes.
_VPC_ACCESS_ACTIONS: Final = ("ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
                              "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses",
                              "ec2:UnassignPrivateIpAddresses")
_XRAY_ACTIONS: Final = ("xray:PutTraceSegments", "xray:PutTelemetryRecords")

_API_GATEWAY_LOGS_POLICY: Final = (
    "arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
)
_ANY_RESOURCE_REASON: Final = (
    "Resource '*' only for actions that have no resource-level permissions: X-Ray PutTraceSegments/"
    "PutTelemetryRecords and the network-interface actions Lambda needs to place the function in the VPC."
)
_XRAY_ONLY_REASON: Final = (
    "Resource '*' only for X-Ray PutTraceSegments/PutTelemetryRecords, which have no resource-level permissions "
    "(this function runs outside the VPC, so it has no network-interface actions)."
)
_DESCRIBE_INSTANCES_REASON: Final = (
    " Also ec2:DescribeInstances, which cannot be resource-scoped, read-only: the fleet function reads one "
    "instance's Auto Scaling group membership to judge a heartbeat, and the forget worker whether a host that "
    "stopped heartbeating was terminated."
)
_PREFIX_REASONS: Final[Mapping[str, str]] = {
    constants.AUDIT_IAM_CHECKPOINTS_PREFIX: (
        "Objects under the IAM-checkpoint prefix only: each checkpoint is a new object named by chain, size and "
        "time, so no fixed object ARN exists; writes are create-only (If-None-Match) and Object Lock keeps them."
    ),
    constants.AUDIT_QUERIES_PREFIX: (
        "Read-only access to objects under the query-audit prefix: engine hosts write one object per batch "
        "and day partition, so the audit search can only be granted the prefix."
    ),
    constants.AUDIT_QUERY_CHECKPOINTS_PREFIX: (
        "Every version under the query-chain checkpoint prefix: engine hosts write one checkpoint per chain, size "
        "and time, so verify-chain?trail=queries can only be granted the prefix; the audit schedule also creates "
        "(If-None-Match, Object Lock) the checkpoints of chains whose host stopped without signing its head."
    ),
    constants.AUDIT_EXPORTS_PREFIX: (
        "Objects under the audit-export prefix only: each export is a new object named by organisation and export "
        "id, which an auditor fetches through a presigned GET; Object Lock keeps what was handed out."
    ),
}
_L1_REASON: Final = (
    "Pinned to Python 3.12: the dependency layer is built from cp312 manylinux aarch64 wheels and the control "
    "plane is tested on that version; moving runtime is a deliberate upgrade of runtime and layer together."
)


class ControlApi(Construct):
    """The control-plane Lambdas and the REST API in front of them.

    Attributes: `api` (RestApi), `url` (the stage's invoke URL, referencing only the RestApi),
    `functions` (function name -> Function), `roles` (function name -> its Role: shadow mode adds a policy),
    `heartbeat_path_arn` (execute-api ARN of POST /v1/fleet/heartbeat, for the fleet role's execute-api:Invoke),
    `dead_letter_queue`, `api_endpoint`
    (the execute-api VPC endpoint, None when the API is regional), `schedules` (rule name -> Rule).
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
        table: dynamodb.ITable,
        signing_key: kms.IKey,
        checkpoint_key: kms.IKey,
        data_key: kms.IKey,
        audit_bucket: s3.IBucket,
        logs_key: kms.IKey,
        dead_letter_key: kms.IKey,
        code: lambda_.Code,
        layers: Sequence[lambda_.ILayerVersion],
        fleet_role_arn: str,
        fleet_asg_name: str,
        org_id: str,
        private_api: bool | CfnCondition,
        allowed_code_hashes: str = "",
        jwt_issuer: str = "urn:hardened-duck:control-api",
        jwt_audience: str = "hardened-duck",
        table_key: kms.IKey | None = None,
        audit_key: kms.IKey | None = None,
        reserved_concurrency: Mapping[str, int] | None = None,
        openapi_document: Mapping[str, Any] | None = None,
        execute_api_endpoint: ec2.InterfaceVpcEndpoint | None = None,
    ) -> None:
        """Build it; `table_key`/`audit_key` default to the table's and bucket's own encryption keys.

        `logs_key` must let CloudWatch Logs use it (its key policy); `dead_letter_key` encrypts the DLQ.
        Raises ValueError when the document routes to a function without an access entry, or when the
        table or bucket has no customer-managed key.
        """
        super().__init__(scope, id)
        document = dict(openapi_document) if openapi_document is not None else _load_document()
        operations = api_operations(document)
        unknown = {operation.function for operation in operations} - set(FUNCTION_ACCESS)
        if unknown:
            raise ValueError(f"openapi.json routes to functions without an access entry: {sorted(unknown)}")
        served = {f"{operation.path}/{operation.method}" for operation in operations}
        unserved = sorted(set(SIGN_IN_ROUTES) - served)
        if unserved:
            # A method setting for a route that does not exist fails the deployment; say so at synth instead.
            raise ValueError(f"sign-in throttling names routes the document lacks: {unserved}")
        concurrency = {name: access.reserved_concurrency for name, access in FUNCTION_ACCESS.items()}
        for name, value in (reserved_concurrency or {}).items():
            if name not in concurrency or value < 1:
                raise ValueError(f"reserved concurrency {name}={value}: need a known function and at least 1")
            concurrency[name] = value
        self._table = table
        self._table_key = _required_key(table_key or table.encryption_key, "the control table")
        self._audit_bucket = audit_bucket
        self._audit_key = _required_key(audit_key or audit_bucket.encryption_key, "the audit bucket")
        self._signing_key = signing_key
        self._checkpoint_key = checkpoint_key
        self._data_key = data_key
        self._dead_letter_key = dead_letter_key
        self._log_key = logs_key
        self._subnets = subnets

        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetters",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=dead_letter_key,
            enforce_ssl=True,
            retention_period=Duration.days(constants.DEAD_LETTER_RETENTION_DAYS),  # time to look at a failed sweep
        )

        environment = {
            "HD_STORE": "dynamodb",
            "HD_KEYS": "kms",
            "HD_AUDIT": "s3",
            "HD_DYNAMODB_TABLE": table.table_name,
            # Key ids, not aliases: a JWT's kid is the key id it was configured with (kms_keys).
            "HD_KMS_JWT_KEY_IDS": signing_key.key_id,
            "HD_KMS_CHECKPOINT_KEY_ID": checkpoint_key.key_id,
            "HD_KMS_DATA_KEY_ID": data_key.key_id,
            "HD_AUDIT_BUCKET": audit_bucket.bucket_name,
            "HD_JWT_ISSUER": jwt_issuer,
            "HD_JWT_AUDIENCE": jwt_audience,
            "HD_CHECKPOINT_INTERVAL_MINUTES": str(constants.IAM_CHECKPOINT_MINUTES),
            "POWERTOOLS_METRICS_NAMESPACE": constants.METRICS_NAMESPACE,
            "POWERTOOLS_LOG_LEVEL": "INFO",
        }
        fleet_environment = {
            "HD_FLEET_ROLE_ARN": fleet_role_arn,
            "HD_FLEET_ASG_NAME": fleet_asg_name,
            "HD_FLEET_ORG_ID": org_id,
            "HD_ALLOWED_CODE_HASHES": allowed_code_hashes,
        }
        self.functions: dict[str, lambda_.Function] = {}
        self.roles: dict[str, iam.Role] = {}  # the functions' own roles (their `role` is an immutable view)
        self.policies: dict[str, iam.ManagedPolicy] = {}  # each role's one policy: constructs add their grants there
        self._invoked_async: set[str] = set()
        for name, access in FUNCTION_ACCESS.items():
            extra = fleet_environment if access.describes_instances else {}
            if access.asks_fleet_for_previews:
                extra = {**extra, PREVIEWS_ENV: FLEET}
            self.functions[name] = self._function(
                name, access, concurrency[name], vpc, lambda_sg, code, layers, {**environment, **extra}
            )
        self._worker_inputs = (vpc, lambda_sg, code, layers, environment)

        self.api_endpoint = self._execute_api_endpoint(vpc, endpoint_sg, private_api, execute_api_endpoint)
        self.api = self._rest_api(private_api, fleet_role_arn)
        self._routes(operations, document)
        # Built from the API id alone, not the stage resource: the engine fleet's configuration holds this URL,
        # and a reference to the stage (which depends on every method and so every function) could close a
        # dependency cycle through the fleet function's settings.
        stack = Stack.of(self)
        self.url: str = f"https://{self.api.rest_api_id}.execute-api.{stack.region}.{stack.url_suffix}/{STAGE_NAME}/"
        self.heartbeat_path_arn: str = self.api.arn_for_execute_api(HEARTBEAT_METHOD, HEARTBEAT_PATH, STAGE_NAME)
        self.schedules = {
            "SweepExpiredKeys": self._schedule("SweepExpiredKeys", "api_keys", SWEEP_EXPIRED_KEYS_EVERY,
                                               "Records expired API keys in the IAM trail"),
            "CheckpointAudit": self._schedule("CheckpointAudit", "audit", CHECKPOINT_EVERY,
                                              "Signs a checkpoint of every IAM chain with new events and of "
                                              "every query chain head a stopped host left unsigned"),
        }

    # --- functions ------------------------------------------------------------------------------------

    def worker(self, name: str, access: FunctionAccess, *, handler: str, in_vpc: bool = True,
               extra_layers: Sequence[lambda_.ILayerVersion] = ()) -> lambda_.Function:
        """A control-plane Lambda no route serves (a scheduled job, a queue consumer), built like the API's own:
        the same settings, its own role with exactly `access`, X-Ray, an encrypted log group, the dead-letter
        queue. `in_vpc=False` leaves it outside the VPC (no network-interface grants): only for a function that
        must reach the internet, which the isolated subnets cannot. `extra_layers` are added to the shared ones
        (a package only this worker needs). Not added to `functions` (no route); its role is in `roles`."""
        if name in self.roles:
            raise ValueError(f"a control-plane function named {name!r} exists already")
        vpc, lambda_sg, code, layers, environment = self._worker_inputs
        function = self._function(name, access, access.reserved_concurrency, vpc if in_vpc else None, lambda_sg,
                                  code, [*layers, *extra_layers], dict(environment), handler=handler)
        self._invoke_async(name, function)
        return function

    def _invoke_async(self, name: str, function: lambda_.Function) -> None:
        """Lambda's async queue for a function a schedule or queue invokes: 2 retries, then the dead-letter queue.
        Only those get the setting (an EventInvokeConfig resource): API Gateway invokes the routes' functions
        synchronously, where it does nothing, and the stack counts against CloudFormation's 500 resources."""
        if name not in self._invoked_async:
            self._invoked_async.add(name)
            # A sweep or checkpoint older than an hour is superseded by the next.
            function.configure_async_invoke(retry_attempts=2, max_event_age=Duration.hours(1))

    def _function(
        self,
        name: str,
        access: FunctionAccess,
        concurrency: int,
        vpc: ec2.IVpc | None,
        lambda_sg: ec2.ISecurityGroup,
        code: lambda_.Code,
        layers: Sequence[lambda_.ILayerVersion],
        environment: dict[str, str],
        *,
        handler: str | None = None,
    ) -> lambda_.Function:
        construct_id = _pascal(name)
        log_group = logs.LogGroup(
            self,
            f"{construct_id}Logs",
            retention=LOG_RETENTION,
            encryption_key=self._log_key,
            removal_policy=RemovalPolicy.RETAIN,  # logs are evidence; they expire by retention, not with the stack
        )
        policy = iam.ManagedPolicy(
            self,
            f"{construct_id}Policy",
            description=f"Hardened Duck control API: exactly what the {name} function's adapters call",
            statements=self._statements(access, log_group, in_vpc=vpc is not None),
        )
        for finding, reason in self._wildcard_findings(access, in_vpc=vpc is not None).items():
            acknowledge(policy, f"AwsSolutions-IAM5[Resource::{finding}]", reason)
        role = iam.Role(
            self,
            f"{construct_id}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Hardened Duck control API: the {name} function",
            managed_policies=[policy],
        )
        self.roles[name] = role
        self.policies[name] = policy
        function = lambda_.Function(
            self,
            construct_id,
            description=f"Hardened Duck control API: {name}",
            runtime=LAMBDA_RUNTIME,
            architecture=LAMBDA_ARCHITECTURE,
            code=code,
            handler=handler or f"functions.{name}.handler.lambda_handler",
            layers=list(layers),
            # Grants CDK would add by itself (X-Ray, DLQ, logs) are dropped: the managed policy has them all.
            role=role.without_policy_updates(),
            vpc=vpc,
            vpc_subnets=self._subnets if vpc is not None else None,
            security_groups=[lambda_sg] if vpc is not None else None,
            memory_size=access.memory_mb,
            timeout=Duration.seconds(access.timeout_seconds),
            reserved_concurrent_executions=concurrency,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            dead_letter_queue=self.dead_letter_queue,
            environment={**environment, "POWERTOOLS_SERVICE_NAME": f"hd-{name.replace('_', '-')}"},
        )
        acknowledge(function, "AwsSolutions-L1", _L1_REASON)
        return function

    def _statements(self, access: FunctionAccess, log_group: logs.LogGroup, *, in_vpc: bool = True,
                    ) -> list[iam.PolicyStatement]:
        stack = Stack.of(self)
        table_arns = [self._table.table_arn, f"{self._table.table_arn}/index/{_gsi_name()}"]
        statements = [
            _allow(["logs:CreateLogStream", "logs:PutLogEvents"], [log_group.log_group_arn]),
            *([_allow(_VPC_ACCESS_ACTIONS, ["*"])] if in_vpc else []),
            _allow(_XRAY_ACTIONS, ["*"]),
            _allow(["sqs:SendMessage"], [self.dead_letter_queue.queue_arn]),
            _allow(["kms:GenerateDataKey", "kms:Decrypt"], [self._dead_letter_key.key_arn],
                   {"StringEquals": {"kms:ViaService": f"sqs.{stack.region}.amazonaws.com"}}),
            _allow(_DYNAMODB_READS, table_arns),
            # The region pin (functions/shared/wiring.py) asks where the table and the audit bucket are, and
            # where the bucket replicates to.
            _allow(["dynamodb:DescribeTable"], [self._table.table_arn]),
            _allow(["s3:GetBucketLocation", "s3:GetReplicationConfiguration"], [self._audit_bucket.bucket_arn]),
            # The table's key, only through DynamoDB.
            _allow(["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"], [self._table_key.key_arn],
                   {"StringEquals": {"kms:ViaService": f"dynamodb.{stack.region}.amazonaws.com"}}),
            # The region pin describes the data key (HD_KMS_DATA_KEY_ID) when it is a customer's multi-region
            # `mrk-` key: where are its primary and replicas? Metadata only: no cryptographic use.
            _allow(["kms:DescribeKey"], [self._data_key.key_arn]),
        ]
        if access.writes_table:
            statements.append(_allow(_DYNAMODB_WRITES, [self._table.table_arn]))
        else:
            # Every process creates the API-key cache pepper if it is missing (bootstrap.ensure_pepper); a
            # function that otherwise only reads may write that one item and nothing else.
            statements.append(_allow(["dynamodb:PutItem"], [self._table.table_arn], {
                "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [PEPPER_SETTING_KEY]}}))
        if access.verifies_tokens or access.signs_tokens:
            actions = ["kms:GetPublicKey", *(["kms:Sign"] if access.signs_tokens else [])]
            statements.append(_allow(actions, [self._signing_key.key_arn]))
        if access.records_iam_events or access.verifies_checkpoints:
            actions = [*(["kms:Sign"] if access.records_iam_events else []),
                       *(["kms:GetPublicKey"] if access.verifies_checkpoints else [])]
            statements.append(_allow(actions, [self._checkpoint_key.key_arn]))
            statements.extend(self._audit_prefix(constants.AUDIT_IAM_CHECKPOINTS_PREFIX,
                                                 write=access.records_iam_events,
                                                 versions=access.verifies_checkpoints))
        if access.reads_query_audit:
            statements.extend(self._audit_prefix(constants.AUDIT_QUERIES_PREFIX, write=False))
        if access.reads_query_audit and access.verifies_checkpoints:  # the query audit chain's checkpoints
            statements.extend(self._audit_prefix(constants.AUDIT_QUERY_CHECKPOINTS_PREFIX,
                                                 write=access.signs_owed_query_checkpoints, versions=True))
        if access.stores_audit_exports:  # an export is too big for a Lambda answer: stored, then presigned
            statements.extend(self._audit_prefix(constants.AUDIT_EXPORTS_PREFIX, write=True))
        if access.seals_secrets:
            statements.append(_allow(["kms:GenerateDataKey", "kms:Decrypt"], [self._data_key.key_arn], {
                "StringEquals": {"kms:EncryptionContext:purpose": access.sealed_purpose}}))
        if access.describes_instances:
            statements.append(_allow(["ec2:DescribeInstances"], ["*"]))
        return statements

    def _wildcard_findings(self, access: FunctionAccess, *, in_vpc: bool = True) -> dict[str, str]:
        """cdk-nag's IAM5 finding ids for this function's wildcard resources, each with why it is acceptable."""
        any_resource = (_ANY_RESOURCE_REASON if in_vpc else _XRAY_ONLY_REASON) + (
            _DESCRIBE_INSTANCES_REASON if access.describes_instances else "")
        findings = {"*": any_resource}
        bucket = _nag_reference(Stack.of(self), self._audit_bucket.bucket_arn)
        prefixes = [
            *([constants.AUDIT_IAM_CHECKPOINTS_PREFIX] if access.records_iam_events or access.verifies_checkpoints
              else []),
            *([constants.AUDIT_QUERIES_PREFIX] if access.reads_query_audit else []),
            *([constants.AUDIT_QUERY_CHECKPOINTS_PREFIX] if access.reads_query_audit and access.verifies_checkpoints
              else []),
            *([constants.AUDIT_EXPORTS_PREFIX] if access.stores_audit_exports else []),
        ]
        for prefix in prefixes:
            findings[f"{bucket}/{prefix}*"] = _PREFIX_REASONS[prefix]
        return findings

    def _audit_prefix(self, prefix: str, *, write: bool, versions: bool = False) -> list[iam.PolicyStatement]:
        """List and read (and, for writers, put) objects under one audit-bucket prefix, and its key via S3.

        `versions` adds listing and reading object versions: checkpoint verification reads every
        version, since a delete marker or a newer version would otherwise hide a locked checkpoint.
        """
        stack = Stack.of(self)
        objects = self._audit_bucket.arn_for_objects(f"{prefix}*")
        key_actions = ["kms:Decrypt", *(["kms:GenerateDataKey"] if write else [])]
        lists = ["s3:ListBucket", *(["s3:ListBucketVersions"] if versions else [])]
        reads = ["s3:GetObject", *(["s3:GetObjectVersion"] if versions else [])]
        return [
            _allow(lists, [self._audit_bucket.bucket_arn], {"StringLike": {"s3:prefix": [f"{prefix}*"]}}),
            _allow([*reads, *(["s3:PutObject"] if write else [])], [objects]),
            _allow(key_actions, [self._audit_key.key_arn],
                   {"StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"}}),
        ]

    # --- API ------------------------------------------------------------------------------------------

    def _execute_api_endpoint(
        self, vpc: ec2.IVpc, endpoint_sg: ec2.ISecurityGroup, private_api: bool | CfnCondition,
        existing: ec2.InterfaceVpcEndpoint | None,
    ) -> ec2.InterfaceVpcEndpoint | None:
        """The VPC's execute-api endpoint (`existing`, when the network already has one: a second endpoint with
        private DNS for the same service cannot be created), limited to this account's APIs."""
        if private_api is False:
            return None
        endpoint = existing or ec2.InterfaceVpcEndpoint(
            self,
            "ExecuteApiEndpoint",
            vpc=vpc,
            service=ec2.InterfaceVpcEndpointAwsService.APIGATEWAY,
            subnets=self._subnets,
            security_groups=[endpoint_sg],
            private_dns_enabled=True,
            open=False,  # who may reach it is the endpoint security group's decision, not a blanket VPC rule
        )
        # The endpoint reaches this account's APIs only, so it cannot carry data to another account's private
        # API. (Naming this API itself would be a cycle: its resource policy names the endpoint.)
        stack = Stack.of(self)
        endpoint.add_to_policy(iam.PolicyStatement(
            principals=[iam.AnyPrincipal()],
            actions=["execute-api:Invoke"],
            resources=[f"arn:{stack.partition}:execute-api:{stack.region}:{stack.account}:*"],
        ))
        if isinstance(private_api, CfnCondition) and existing is None:
            endpoint.node.default_child.cfn_options.condition = private_api  # type: ignore[union-attr]
        return endpoint

    def _rest_api(self, private_api: bool | CfnCondition, fleet_role_arn: str) -> apigw.RestApi:
        access_logs = logs.LogGroup(
            self, "AccessLogs", retention=LOG_RETENTION, encryption_key=self._log_key,
            removal_policy=RemovalPolicy.RETAIN,
        )
        # Execution logs never hold request bodies (data trace off): they carry passwords and TOTP codes.
        method_options = {
            route: apigw.MethodDeploymentOptions(
                throttling_rate_limit=constants.SIGN_IN_RATE_PER_SECOND,
                throttling_burst_limit=constants.SIGN_IN_BURST,
                logging_level=apigw.MethodLoggingLevel.INFO,
                data_trace_enabled=False,
                metrics_enabled=True,
            )
            for route in SIGN_IN_ROUTES
        }
        api = apigw.RestApi(
            self,
            "Api",
            rest_api_name=f"{Stack.of(self).stack_name}-control",
            description="Hardened Duck control API",
            endpoint_types=[apigw.EndpointType.PRIVATE if private_api is True else apigw.EndpointType.REGIONAL],
            policy=self._resource_policy(private=private_api is True, fleet_role_arn=fleet_role_arn),
            cloud_watch_role=True,  # API Gateway's account-level role for execution logs
            fail_on_warnings=True,
            deploy_options=apigw.StageOptions(
                stage_name=STAGE_NAME,
                access_log_destination=apigw.LogGroupLogDestination(access_logs),
                access_log_format=_access_log_format(),
                tracing_enabled=True,
                throttling_rate_limit=constants.CONTROL_API_RATE_PER_SECOND,
                throttling_burst_limit=constants.CONTROL_API_BURST,
                method_options=method_options,
                logging_level=apigw.MethodLoggingLevel.INFO,
                data_trace_enabled=False,
                metrics_enabled=True,
            ),
        )
        cfn_api = api.node.default_child
        assert isinstance(cfn_api, apigw.CfnRestApi)
        cfn_api.security_policy = TLS_SECURITY_POLICY
        cfn_api.endpoint_access_mode = "STRICT"
        if isinstance(private_api, CfnCondition):
            cfn_api.add_property_override(
                "EndpointConfiguration.Types", [Fn.condition_if(private_api.logical_id, "PRIVATE", "REGIONAL")]
            )
            cfn_api.add_property_override("Policy", Fn.condition_if(
                private_api.logical_id,
                self._resource_policy(private=True, fleet_role_arn=fleet_role_arn),
                self._resource_policy(private=False, fleet_role_arn=fleet_role_arn),
            ))
        self._acknowledge_api_findings(api)
        self._gateway_responses(api)
        return api

    def _resource_policy(self, *, private: bool, fleet_role_arn: str) -> iam.PolicyDocument:
        """Anyone may call (routes authenticate callers), except: the heartbeat only the fleet role, and a private
        API only through our endpoint."""
        statements = [
            iam.PolicyStatement(
                actions=["execute-api:Invoke"], principals=[iam.AnyPrincipal()], resources=["execute-api:/*"]
            ),
            iam.PolicyStatement(
                effect=iam.Effect.DENY,
                actions=["execute-api:Invoke"],
                principals=[iam.AnyPrincipal()],
                resources=[f"execute-api:/*/{HEARTBEAT_METHOD}{HEARTBEAT_PATH}"],
                conditions={"ArnNotEquals": {"aws:PrincipalArn": fleet_role_arn}},
            ),
        ]
        if private:
            assert self.api_endpoint is not None
            statements.append(iam.PolicyStatement(
                effect=iam.Effect.DENY,
                actions=["execute-api:Invoke"],
                principals=[iam.AnyPrincipal()],
                resources=["execute-api:/*"],
                conditions={"StringNotEquals": {"aws:SourceVpce": self.api_endpoint.vpc_endpoint_id}},
            ))
        return iam.PolicyDocument(statements=statements)

    def _routes(self, operations: Sequence[ApiOperation], document: Mapping[str, Any]) -> None:
        validator = apigw.RequestValidator(
            self, "Validator", rest_api=self.api, validate_request_body=True, validate_request_parameters=True
        )
        integrations = {name: self._integration(name, function) for name, function in self.functions.items()}
        models: dict[str, apigw.IModel] = {}
        for operation in operations:
            request_models = None
            if operation.body_schema is not None:
                if operation.body_schema not in models:
                    models[operation.body_schema] = self._model(operation.body_schema, document)
                request_models = {"application/json": models[operation.body_schema]}
            self.api.root.resource_for_path(operation.path).add_method(
                operation.method,
                integrations[operation.function],
                authorization_type=(
                    apigw.AuthorizationType.IAM if operation.iam_auth else apigw.AuthorizationType.NONE
                ),
                request_validator=validator,
                request_parameters=operation.request_parameters(),
                request_models=request_models,
            )

    def _integration(self, name: str, function: lambda_.IFunction) -> apigw.Integration:
        """A Lambda proxy integration, invocable by this API's stage through one permission per function.

        `LambdaIntegration` adds a Lambda permission for every method it serves (75 of them), which with the
        rest of the deployment passes CloudFormation's 500 resources per stack. One permission per function,
        for this API's own stage, grants API Gateway nothing more: which routes reach a function is decided
        by the methods below, and a function answers 404 to a path that is not its own.
        """
        function.add_permission(
            f"ApiInvoke{name.title().replace('_', '')}",
            principal=iam.ServicePrincipal("apigateway.amazonaws.com"),
            source_arn=self.api.arn_for_execute_api("*", "/*", self.api.deployment_stage.stage_name),
        )
        uri = (f"arn:{Stack.of(self).partition}:apigateway:{Stack.of(self).region}:lambda:path/2015-03-31/"
               f"functions/{function.function_arn}/invocations")
        return apigw.Integration(type=apigw.IntegrationType.AWS_PROXY, integration_http_method="POST", uri=uri)

    def _model(self, schema_name: str, document: Mapping[str, Any]) -> apigw.IModel:
        """An API Gateway model (JSON Schema draft 4) for one request body schema of the OpenAPI document."""
        if not schema_name.isalnum():
            raise ValueError(f"request body schema {schema_name!r} cannot name an API Gateway model (alphanumeric)")
        schemas = document.get("components", {}).get("schemas", {})
        model = apigw.CfnModel(
            self,
            f"{schema_name}Model",
            rest_api_id=self.api.rest_api_id,
            content_type="application/json",
            name=schema_name,
            schema=draft4_schema(schema_name, schemas),
        )
        return apigw.Model.from_model_name(self, f"{schema_name}ModelRef", model.ref)

    def _gateway_responses(self, api: apigw.RestApi) -> None:
        """API Gateway's own refusals in the control API's error shape (`HD_ERR_*` codes, request id).

        `$context.error.messageString` arrives already quoted; the validator's detailed message is left out
        because it may hold quotes that would break the JSON (it is in the execution log).
        """
        refusals = {
            "BadRequestBody": (apigw.ResponseType.BAD_REQUEST_BODY, "HD_ERR_INVALID_REQUEST"),
            "BadRequestParameters": (apigw.ResponseType.BAD_REQUEST_PARAMETERS, "HD_ERR_INVALID_REQUEST"),
            "Throttled": (apigw.ResponseType.THROTTLED, "HD_ERR_THROTTLED"),
            "Default4xx": (apigw.ResponseType.DEFAULT_4_XX, "HD_ERR_GATEWAY_REFUSED"),
            "Default5xx": (apigw.ResponseType.DEFAULT_5_XX, "HD_ERR_INTERNAL"),
        }
        for construct_id, (response_type, code) in refusals.items():
            template = (
                f'{{"error": {{"code": "{code}", "message": $context.error.messageString, '
                '"request_id": "$context.requestId"}}'
            )
            api.add_gateway_response(construct_id, type=response_type, templates={"application/json": template})

    def _acknowledge_api_findings(self, api: apigw.RestApi) -> None:
        acknowledge(api, "AwsSolutions-APIG4",
                    "Callers are authenticated in the Lambdas (hd_core.request_auth: JWT or API key, the same code "
                    "as hd dev); sign-in routes and the JWKS must be reachable before a caller has credentials, and "
                    "the engine-host heartbeat uses AWS_IAM.")
        acknowledge(api, "AwsSolutions-COG4",
                    "There is no Cognito user pool: users, MFA and federation are the control plane's own "
                    "(hd_core.auth, hd_core.federation), and JWTs are signed by our KMS key.")
        waf_reason = (
            "No WAF web ACL in this construct: the API is private to the VPC endpoint or regional behind "
            "per-method throttling, request validation and in-Lambda authentication; customers who front the "
            "regional API with WAF associate their own web ACL with the stage."
        )
        cache_reason = (
            "Caching is off on purpose: responses depend on the caller's credentials, and a cache keyed on "
            "path and query would serve one caller's users, keys or audit records to another."
        )
        client_cert_reason = (
            "The integrations are Lambda proxy invocations over the AWS API (SigV4), not HTTP backends, so a "
            "backend client certificate would never be presented to anything."
        )
        stage = api.deployment_stage
        acknowledge(stage, "AwsSolutions-APIG3", waf_reason)
        for pack in ("HIPAA.Security", "NIST.800.53.R5", "PCI.DSS.321"):
            acknowledge(stage, f"{pack}-APIGWCacheEnabledAndEncrypted", cache_reason)
            acknowledge(stage, f"{pack}-APIGWSSLEnabled", client_cert_reason)
        for pack in ("NIST.800.53.R5", "PCI.DSS.321"):
            acknowledge(stage, f"{pack}-APIGWAssociatedWithWAF", waf_reason)
        cloud_watch_role = api.node.try_find_child("CloudWatchRole")
        if cloud_watch_role is not None:
            acknowledge(cloud_watch_role, f"AwsSolutions-IAM4[Policy::{_API_GATEWAY_LOGS_POLICY}]",
                        "AmazonAPIGatewayPushToCloudWatchLogs is the account-level role API Gateway itself assumes "
                        "to create and write its execution-log groups, whose names it chooses; AWS maintains it.")

    # --- schedules ------------------------------------------------------------------------------------

    def _schedule(self, construct_id: str, function: str, every: Duration, description: str) -> events.Rule:
        rule = events.Rule(
            self,
            construct_id,
            description=f"Hardened Duck: {description}",
            schedule=events.Schedule.rate(every),
        )
        # Failed invocations land in the function's dead-letter queue after Lambda's own retries.
        self._invoke_async(function, self.functions[function])
        rule.add_target(targets.LambdaFunction(self.functions[function], retry_attempts=2, max_event_age=every))
        return rule


@dataclass(frozen=True)
class ApiOperation:
    """One path + method of the OpenAPI document and how API Gateway serves it."""

    path: str
    method: str
    function: str
    iam_auth: bool
    path_parameters: tuple[str, ...]
    required_query: tuple[str, ...]
    optional_query: tuple[str, ...]
    body_schema: str | None  # component schema name of a JSON body

    def request_parameters(self) -> dict[str, bool]:
        """API Gateway's `method.request.*` map: True where the parameter is required."""
        parameters = {f"method.request.path.{name}": True for name in self.path_parameters}
        parameters.update({f"method.request.querystring.{name}": True for name in self.required_query})
        parameters.update({f"method.request.querystring.{name}": False for name in self.optional_query})
        return parameters


def api_operations(document: Mapping[str, Any]) -> list[ApiOperation]:
    """Every operation of the document, in path order; ValueError on one without `x-hd-function`."""
    found = []
    for path, methods in sorted(document.get("paths", {}).items()):
        for method, operation in sorted(methods.items()):
            function = operation.get("x-hd-function")
            if not isinstance(function, str) or not function:
                raise ValueError(f"{method.upper()} {path} has no x-hd-function")
            parameters = operation.get("parameters", [])
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            reference = body.get("$ref", "")
            found.append(ApiOperation(
                path=path,
                method=method.upper(),
                function=function,
                iam_auth=operation.get("x-hd-auth") == "aws_iam",
                path_parameters=tuple(p["name"] for p in parameters if p["in"] == "path"),
                required_query=tuple(p["name"] for p in parameters if p["in"] == "query" and p.get("required")),
                optional_query=tuple(p["name"] for p in parameters if p["in"] == "query" and not p.get("required")),
                body_schema=reference.rsplit("/", 1)[-1] if reference.startswith(_COMPONENT_REF) else None,
            ))
    return found


_COMPONENT_REF: Final = "#/components/schemas/"


def draft4_schema(name: str, schemas: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAPI 3.1 component `name` as a self-contained JSON Schema draft 4 document (API Gateway models).

    References become `#/definitions/...` with only the reachable schemas carried along, and 3.1's numeric
    `exclusiveMinimum`/`exclusiveMaximum` become draft 4's boolean form.
    """
    if name not in schemas:
        raise ValueError(f"request body schema {name!r} is not in the document's components")
    reachable: dict[str, Any] = {}
    pending = [name]
    while pending:
        current = pending.pop()
        if current in reachable:
            continue
        if current not in schemas:
            raise ValueError(f"schema {current!r} is referenced but not defined")
        reachable[current] = _draft4(schemas[current], pending)
    root = dict(reachable.pop(name))
    root["$schema"] = "http://json-schema.org/draft-04/schema#"
    if reachable:
        root["definitions"] = dict(sorted(reachable.items()))
    return root


def _draft4(node: Any, pending: list[str]) -> Any:
    if isinstance(node, list):
        return [_draft4(item, pending) for item in node]
    if not isinstance(node, dict):
        return node
    converted: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str) and value.startswith(_COMPONENT_REF):
            target = value[len(_COMPONENT_REF):]
            pending.append(target)
            converted[key] = f"#/definitions/{target}"
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            converted["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            converted[key] = True
        elif key == "properties" and isinstance(value, dict):
            converted[key] = {prop: _draft4(schema, pending) for prop, schema in value.items()}
        else:
            converted[key] = _draft4(value, pending)
    return converted


def _access_log_format() -> apigw.AccessLogFormat:
    fields = {
        "requestId": "$context.requestId",
        "extendedRequestId": "$context.extendedRequestId",
        "ip": "$context.identity.sourceIp",
        "caller": "$context.identity.caller",
        "userArn": "$context.identity.userArn",
        "requestTime": "$context.requestTime",
        "httpMethod": "$context.httpMethod",
        "resourcePath": "$context.resourcePath",
        "status": "$context.status",
        "protocol": "$context.protocol",
        "responseLength": "$context.responseLength",
        "integrationLatency": "$context.integrationLatency",
        "tlsVersion": "$context.tlsVersion",  # evidence that only TLS 1.3 is negotiated
        "cipherSuite": "$context.cipherSuite",
        "vpceId": "$context.identity.vpceId",
        "xrayTraceId": "$context.xrayTraceId",
        "errorType": "$context.error.responseType",
    }
    return apigw.AccessLogFormat.custom(json.dumps(fields, separators=(",", ":")))


def _allow(actions: Sequence[str], resources: Sequence[str], conditions: Mapping[str, Any] | None = None,
           ) -> iam.PolicyStatement:
    return iam.PolicyStatement(actions=list(actions), resources=list(resources),
                               conditions=dict(conditions) if conditions else None)


def _nag_reference(stack: Stack, value: str) -> str:
    """How cdk-nag writes a resource value in a finding id: `<Logical.Attr>` for GetAtt, `<Logical>` for Ref."""
    resolved = stack.resolve(value)
    if isinstance(resolved, dict) and "Fn::GetAtt" in resolved:
        logical_id, attribute = resolved["Fn::GetAtt"]
        return f"<{logical_id}.{attribute}>"
    if isinstance(resolved, dict) and "Ref" in resolved:
        return f"<{resolved['Ref']}>"
    return str(resolved)


def _gsi_name() -> str:
    indexes = create_table_kwargs("unused")["GlobalSecondaryIndexes"]
    if len(indexes) != 1:
        raise ValueError(f"the control table should have exactly one GSI, the schema has {len(indexes)}")
    name: str = indexes[0]["IndexName"]
    return name


def _required_key(key: kms.IKey | None, what: str) -> kms.IKey:
    if key is None:
        raise ValueError(f"{what} must be encrypted with a customer-managed KMS key: pass its key")
    return key


def _load_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(OPENAPI_DOCUMENT.read_text(encoding="utf-8"))
    return document


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


