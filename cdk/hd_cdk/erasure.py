"""GDPR right to erasure in AWS (issue 20): the forget worker, its schedule and the 72 h SLA alarm.

Security decisions visible here:
- the forget API function (functions/forget, built by ControlApi) only records requests; the worker
  (functions/forget/worker.py), built by `ControlApi.worker` like every control-plane function (isolated
  subnets, X-Ray, a KMS-encrypted log group, its own role), runs them on an EventBridge schedule every
  `constants.ERASURE_SWEEP_MINUTES`, so no function invokes another (the isolated subnets have no Lambda
  endpoint) and one request never runs twice at once (reserved concurrency 1, and a conditional status change);
- the worker may read, list and rewrite the data bucket's objects (a subject's rows are in any table's files),
  with the data key only through S3. It is the one role in the deployment that may `s3:DeleteObjectVersion`:
  the replaced versions still hold the erased rows, and deleting exactly those (by version id) is what
  erasure means. It gets no `s3:DeleteObject` (a delete marker would hide a table file, not erase it);
- the subject id is sealed with a data key under the `forget-subject` encryption context, and the erasure's
  HMAC key is wrapped under it too: both functions may use the data key with that context only;
- `ForgetRequestsPastSla` (emitted by every sweep) >= 1 alarms to the notifications topic: a request still
  open 72 hours after it was made. A worker that stops running also ends there: its requests stay open.
- writable tables live in each engine host's own `engine.duckdb`: the fleet function records every host whose
  heartbeat it accepts (one PutItem, only on `HOST#` keys), and each live host erases the subject itself and
  acks; the host's narrow `kms:Decrypt` of sealed subjects is in engine_fleet.py (hd_core/erasure_fleet.py);
- the worker alone carries the pyarrow layer (`packaging.ERASURE_REQUIREMENTS`): only it rewrites Parquet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from hd_cdk import constants, packaging
from hd_cdk.control_api import ControlApi, FunctionAccess
from hd_cdk.engine_fleet import nag_resource
from hd_cdk.nag import acknowledge

API_FUNCTION: Final = "forget"
WORKER: Final = "forget_worker"
FLEET_FUNCTION: Final = "fleet"  # records the live hosts (hd_core/erasure_fleet.py)
FLEET_HOST_KEYS: Final = "HOST#*"  # hd_core DynamoDB adapter: a fleet host's partition key
WORKER_SERVICE: Final = "hd-forget-worker"  # functions/forget/worker.py SERVICE: the metrics' dimension
PAST_SLA_METRIC: Final = "ForgetRequestsPastSla"  # functions/forget/worker.py PAST_SLA_METRIC
SEALED_PURPOSE: Final = "forget-subject"  # hd_core.erasure's KMS encryption-context purpose
# functions/forget/wiring.py ErasureSettings (names, not imports of handlers).
DATA_URL_VARIABLE: Final = "HD_ERASURE_DATA_URL"
RETENTION_VARIABLE: Final = "HD_ERASURE_VERSION_RETENTION_HOURS"
SWEEP_EVERY: Final = Duration.minutes(constants.ERASURE_SWEEP_MINUTES)
ALARM_PERIOD: Final = Duration.minutes(constants.ALARM_PERIOD_MINUTES)

WORKER_ACCESS: Final = FunctionAccess(
    verifies_tokens=False, seals_secrets=True, sealed_purpose=SEALED_PURPOSE,
    # A request waits for every registered fleet host until it acks or its instance is gone: the sweep asks EC2
    # about hosts whose heartbeats stopped (ec2:DescribeInstances, resource "*", acknowledged with the role's
    # other wildcard, control_api.py _wildcard_findings).
    describes_instances=True,
    reserved_concurrency=1, timeout_seconds=900, memory_mb=2048,  # whole Parquet objects are rewritten in memory
)

_DATA_OBJECTS_REASON: Final = (
    "Objects of the data bucket: a forget request rewrites whichever table files hold the subject's rows (table "
    "files are named by the customer's loads, so no fixed ARN exists) and deletes exactly the replaced versions."
)


class Erasure(Construct):
    """The forget worker, its schedule, its data-bucket grants, and the SLA alarm.

    Attributes: `worker`, `layer` (pyarrow), `sweep_rule`, `alarms` (name -> Alarm).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        control_api: ControlApi,
        data_bucket: s3.IBucket,
        data_key: kms.IKey,
        table: dynamodb.ITable,
        alarm_topic: sns.ITopic,
        data_prefix: str = "",
        version_retention_hours: float = 0,
    ) -> None:
        """`data_bucket`/`data_prefix` are where the engine hosts read tables (`<schema>/<table>/*.parquet`);
        `version_retention_hours` keeps replaced versions that long before the sweep deletes them (0: at once)."""
        super().__init__(scope, id)
        if API_FUNCTION not in control_api.functions:
            raise ValueError("the control API has no forget function (functions/openapi.py FUNCTION_MODULES)")
        self.layer = packaging.dependency_layer(self, "ArrowLayer", packaging.ERASURE_REQUIREMENTS,
                                                "pyarrow for the GDPR forget worker (rewrites Parquet table files)")
        self.worker = control_api.worker(WORKER, WORKER_ACCESS, handler="functions.forget.worker.lambda_handler",
                                         extra_layers=[self.layer])
        environment = {DATA_URL_VARIABLE: f"s3://{data_bucket.bucket_name}/{data_prefix}",
                       RETENTION_VARIABLE: str(version_retention_hours)}
        for function in (self.worker, control_api.functions[API_FUNCTION]):
            for name, value in environment.items():
                function.add_environment(name, value)
        self._grant_data(control_api.policies[WORKER], data_bucket, data_key, table)
        self._grant_fleet_registry(control_api.policies[FLEET_FUNCTION], table)

        self.sweep_rule = events.Rule(self, "ForgetSweep", schedule=events.Schedule.rate(SWEEP_EVERY),
                                      description="Hardened Duck: runs pending GDPR forget requests (issue 20)")
        self.sweep_rule.add_target(targets.LambdaFunction(self.worker, retry_attempts=2, max_event_age=SWEEP_EVERY))
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        self._alarm(PAST_SLA_METRIC, cloudwatch.Metric(
            namespace=constants.METRICS_NAMESPACE, metric_name=PAST_SLA_METRIC,
            dimensions_map={"service": WORKER_SERVICE}, statistic="Maximum", period=ALARM_PERIOD,
        ), "A GDPR forget request is still open 72 hours after it was made: see its error (GET "
           ".../forget-requests/{id}) and the forget worker's log", alarm_topic)

    def _grant_data(self, policy: iam.ManagedPolicy, bucket: s3.IBucket, key: kms.IKey,
                    table: dynamodb.ITable) -> None:
        """Rewrite table files without an erased subject's rows, delete the old versions: added to the worker's own
        policy (one resource fewer than a policy of their own, against CloudFormation's 500-resource limit)."""
        region = Stack.of(self).region
        objects = bucket.arn_for_objects("*")
        policy.add_statements(
            _allow(["s3:ListBucket", "s3:ListBucketVersions"], [bucket.bucket_arn]),
            _allow(["s3:GetObject", "s3:PutObject", "s3:DeleteObjectVersion"], [objects]),
            _allow(["kms:Decrypt", "kms:GenerateDataKey"], [key.key_arn],
                   {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}}),
            # The sweep lists unsettled requests with a filtered Scan (hd_core DynamoDB adapter).
            _allow(["dynamodb:Scan"], [table.table_arn]))
        acknowledge(policy, f"AwsSolutions-IAM5[Resource::{nag_resource(self, objects)}]", _DATA_OBJECTS_REASON)

    def _grant_fleet_registry(self, policy: iam.ManagedPolicy, table: dynamodb.ITable) -> None:
        """The fleet function writes no other entity: it may put the registry items of the hosts whose heartbeats it
        accepts (`HOST#<instance id>`), which the worker reads to know which hosts a forget request waits for."""
        policy.add_statements(_allow(["dynamodb:PutItem"], [table.table_arn], {
            "ForAllValues:StringLike": {"dynamodb:LeadingKeys": [FLEET_HOST_KEYS]}}))

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

