"""Federation that works after `cdk deploy` (issue 21, item 5): identity providers from context, keys pinned.

Context `hd:federationIssuers` lists the identity providers whose tokens `POST /v1/auth/federate` accepts: objects
`{"name", "issuer", "audience", "jwks_uri", "algorithms"}` or presets `{"preset": "aws_sts_outbound", "issuer_url",
"audience"}`, `{"preset": "gcp", "audience"}`, `{"preset": "azure_ad", "tenant_id", "audience"}` (hd_core.federation).
The control API's Lambdas have no internet route and no VPC endpoint serves an arbitrary provider, so:
- an hourly job outside the VPC (`functions/federation_keys`) fetches each configured issuer's discovery document
  and JWKS (https, those URLs only) and pins the public keys in the control table; its role may write exactly those
  setting items (`SETTING#federation-jwks#*`), nothing else of the table;
- the sign-in function verifies with the pinned keys only (HD_FEDERATION_PINNED_KEYS), fetching nothing;
- a refresh that fails for an issuer keeps its previous keys and alarms (FederationKeyRefreshFailures).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Final

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sns as sns
from constructs import Construct

from hd_cdk import constants as c
from hd_cdk.control_api import ControlApi, FunctionAccess
from hd_cdk.nag import acknowledge
from hd_core.federation import FederatedIssuer

CONTEXT_FEDERATION_ISSUERS: Final = "hd:federationIssuers"
REFRESH_FUNCTION: Final = "federation_keys"
REFRESH_HANDLER: Final = "functions.federation_keys.handler.lambda_handler"
REFRESH_EVERY: Final = Duration.hours(1)
SIGN_IN_FUNCTION: Final = "auth"  # serves POST /v1/auth/federate
PINNED_KEYS_LEADING_KEY: Final = "SETTING#federation-jwks#*"  # hd_core.federation_keys.SETTING_PREFIX's items
REFRESH_ACCESS: Final = FunctionAccess(writes_table=False, verifies_tokens=False, records_iam_events=False,
                                       reserved_concurrency=1, timeout_seconds=120)
_OUTSIDE_VPC_REASON: Final = (
    "The federation key refresh fetches the configured identity providers' discovery documents and JWKS from the "
    "internet, which the isolated subnets cannot reach (no NAT by design, no VPC endpoint for an arbitrary "
    "provider); it reaches only those https URLs, DynamoDB (its setting items) and KMS through DynamoDB.")
_PRESETS: Final[dict[str, Callable[..., FederatedIssuer]]] = {
    "aws_sts_outbound": FederatedIssuer.aws_sts_outbound, "gcp": FederatedIssuer.gcp_workload_identity,
                   "azure_ad": FederatedIssuer.azure_ad}


def issuers_from_context(scope: Construct) -> list[FederatedIssuer]:
    """The issuers of context `hd:federationIssuers` (a list, or its JSON text), checked; ValueError otherwise."""
    raw = scope.node.try_get_context(CONTEXT_FEDERATION_ISSUERS) or []
    entries = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(entries, list):
        raise ValueError(f"context {CONTEXT_FEDERATION_ISSUERS} must be a list of issuer objects")
    issuers: list[FederatedIssuer] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError(f"context {CONTEXT_FEDERATION_ISSUERS}: {entry!r} is not an object")
        options: dict[str, Any] = dict(entry)
        preset = options.pop("preset", None)
        try:
            if preset is None:
                issuers.append(FederatedIssuer(**options))
            elif preset in _PRESETS:
                issuers.append(_PRESETS[preset](**options))
            else:
                raise ValueError(f"unknown preset {preset!r}: expected one of {sorted(_PRESETS)}")
        except TypeError as error:
            raise ValueError(f"context {CONTEXT_FEDERATION_ISSUERS}: {entry!r}: {error}") from None
    names = [issuer.name for issuer in issuers]
    if len(set(names)) != len(names):
        raise ValueError(f"context {CONTEXT_FEDERATION_ISSUERS}: issuer names must be unique, got {names}")
    return issuers


def issuers_setting(issuers: Sequence[FederatedIssuer]) -> str:
    """HD_FEDERATION_ISSUERS for the functions: the issuers as hd_core.services reads them."""
    return json.dumps([{"name": i.name, "issuer": i.issuer, "audience": i.audience, "jwks_uri": i.jwks_uri,
                        "algorithms": list(i.algorithms), "subject_claim": i.subject_claim} for i in issuers])


class Federation(Construct):
    """The pinned-key refresh job, its schedule and alarm, and the sign-in function's federation settings.

    Attributes: `issuers`, `refresh_function`, `rule`, `alarm`.
    """

    def __init__(self, scope: Construct, construct_id: str, *, control_api: ControlApi,
                 issuers: Sequence[FederatedIssuer], table: dynamodb.ITable, alarm_topic: sns.ITopic) -> None:
        super().__init__(scope, construct_id)
        if not issuers:
            raise ValueError("Federation needs at least one issuer (context hd:federationIssuers)")
        self.issuers = list(issuers)
        setting = issuers_setting(self.issuers)
        sign_in = control_api.functions[SIGN_IN_FUNCTION]
        sign_in.add_environment("HD_FEDERATION_ISSUERS", setting)
        sign_in.add_environment("HD_FEDERATION_PINNED_KEYS", "true")
        self.refresh_function = control_api.worker(REFRESH_FUNCTION, REFRESH_ACCESS, handler=REFRESH_HANDLER,
                                                   in_vpc=False)
        self.refresh_function.add_environment("HD_FEDERATION_ISSUERS", setting)
        for pack in ("HIPAA.Security", "NIST.800.53.R5", "PCI.DSS.321"):
            acknowledge(self.refresh_function, f"{pack}-LambdaInsideVPC", _OUTSIDE_VPC_REASON)
        # Writes the pinned-key setting items only (in the function's own policy: no resource of its own).
        control_api.policies[REFRESH_FUNCTION].add_statements(
            iam.PolicyStatement(actions=["dynamodb:PutItem"], resources=[table.table_arn], conditions={
                "ForAllValues:StringLike": {"dynamodb:LeadingKeys": [PINNED_KEYS_LEADING_KEY]}}))
        self.rule = events.Rule(self, "Schedule", schedule=events.Schedule.rate(REFRESH_EVERY),
                                description="Refreshes the identity providers' pinned signing keys",
                                targets=[targets.LambdaFunction(self.refresh_function, retry_attempts=2)])
        failures = cloudwatch.Metric(namespace=c.METRICS_NAMESPACE, metric_name="FederationKeyRefreshFailures",
                                     dimensions_map={"service": "hd-federation-keys"}, statistic="Sum",
                                     period=Duration.hours(1))
        self.alarm = cloudwatch.Alarm(
            self, "RefreshFailures", metric=failures, threshold=1, evaluation_periods=3, datapoints_to_alarm=3,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description="An identity provider's keys could not be refreshed for 3 hours: its pinned keys are "
                              "going stale (a rotation at the provider would start refusing its tokens)")
        self.alarm.add_alarm_action(cloudwatch_actions.SnsAction(alarm_topic))
