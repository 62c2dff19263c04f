"""The Hardened Duck stack: deployment parameters, and the constructs composed from them (no resources of its own)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aws_cdk import CfnCondition, CfnOutput, CfnParameter, Fn, Stack
from constructs import Construct

from hd_cdk import constants, packaging
from hd_cdk.certificates import CertificateRotation, private_ca_arn
from hd_cdk.control_api import ControlApi
from hd_cdk.engine_fleet import EngineFleet
from hd_cdk.erasure import WORKER as ERASURE_WORKER
from hd_cdk.erasure import Erasure
from hd_cdk.federation import Federation, issuers_from_context
from hd_cdk.keys import KEY_ARN_PATTERN, Keys
from hd_cdk.lifecycle import DELIVERY_ACCESS, Lifecycle
from hd_cdk.monitoring import Monitoring
from hd_cdk.network import Network
from hd_cdk.perimeter import Perimeter
from hd_cdk.shadow import KeyRevocation, ShadowReplay, comparison_network
from hd_cdk.storage import Storage
from hd_cdk.tracing import Tracing
from hd_cdk.wipe_hook import WipeHook


@dataclass(frozen=True)
class DeploymentParameters:
    """The CloudFormation parameters a platform engineer sets at `cdk deploy --parameters ...` (tokens)."""

    tls_bundle_arn: str
    org_id: str
    allowed_principals: list[str]
    approved_prefix_list_id: str
    tier: str  # a key of constants.TIER_INSTANCE_TYPES; EngineFleet resolves the instance type
    fleet_min: float
    fleet_max: float
    data_key_arn: str
    private_api: str  # "true" | "false"


class HardenedDuckStack(Stack):
    """Composes Network, Keys and Storage; ControlApi, EngineFleet, WipeHook, Erasure, ShadowReplay, Lifecycle,
    Monitoring and (context hd:federationIssuers) Federation
    are wired in below.

    Attributes for wiring: `parameters`, `network` (vpc, subnets, engine_sg, agent_sg, monitoring_sg,
    endpoint_sg, lambda_sg), `keys` (data, audit, control, signing, checkpoint, logs, notifications), `storage`
    (data_bucket, audit_bucket, access_log_bucket, table).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        approved_cidrs: Sequence[str] = (),
        s3_prefix_list_id: str,
        dynamodb_prefix_list_id: str,
        engine_code_hash: str = "",
        **kwargs: Any,
    ) -> None:
        """`engine_code_hash` is the SHA-256 the engine hosts report (`python -m engine_host.runtime.heartbeat_loop`);
        the control plane allows only that build (empty: none, so heartbeats are negative)."""
        super().__init__(scope, id, **kwargs)
        self.parameters = self._parameters()
        self.keys = Keys(self, "Keys", data_key_arn=self.parameters.data_key_arn)
        self.network = Network(
            self,
            "Network",
            approved_cidrs=approved_cidrs,
            approved_prefix_list_id=self.parameters.approved_prefix_list_id,
            flow_log_key=self.keys.logs,
            s3_prefix_list_id=s3_prefix_list_id,
            dynamodb_prefix_list_id=dynamodb_prefix_list_id,
        )
        self.storage = Storage(
            self, "Storage", data_key=self.keys.data, audit_key=self.keys.audit, table_key=self.keys.control
        )
        self._compose_services(engine_code_hash)

    def _compose_services(self, engine_code_hash: str) -> None:
        """The control API, the engine fleet, the wipe hook, shadow replay, the key lifecycle and webhook delivery,
        and monitoring, around network, keys and storage."""
        p, n, k, s = self.parameters, self.network, self.keys, self.storage
        # Fixed names, passed as plain strings: the fleet's configuration holds the API's URL, so the API's
        # fleet settings must not reference the fleet's resources back (that would be a dependency cycle).
        fleet_name = f"{self.stack_name}-engine-fleet"
        fleet_role_name = f"{self.stack_name}-engine-host"
        private_api = CfnCondition(self, "PrivateApiOn", expression=Fn.condition_equals(p.private_api, "true"))
        code = packaging.function_code(self)
        layers = [packaging.core_layer(self, "CoreLayer"), packaging.dependency_layer(self, "DependencyLayer")]
        self.control_api = ControlApi(
            self, "ControlApi", vpc=n.vpc, subnets=n.subnets, lambda_sg=n.lambda_sg, endpoint_sg=n.endpoint_sg,
            table=s.table, signing_key=k.signing, checkpoint_key=k.checkpoint, data_key=k.data,
            audit_bucket=s.audit_bucket, logs_key=k.logs, dead_letter_key=k.notifications, code=code, layers=layers,
            fleet_role_arn=f"arn:{self.partition}:iam::{self.account}:role/{fleet_role_name}",
            fleet_asg_name=fleet_name, org_id=p.org_id, private_api=private_api,
            allowed_code_hashes=engine_code_hash, jwt_issuer=constants.JWT_ISSUER, jwt_audience=constants.JWT_AUDIENCE,
            table_key=k.control, audit_key=k.audit,
            execute_api_endpoint=n.interface_endpoints["ExecuteApi"],
        )
        self.fleet = EngineFleet(
            self, "EngineFleet", vpc=n.vpc, subnets=n.subnets, engine_sg=n.engine_sg, data_bucket=s.data_bucket,
            audit_bucket=s.audit_bucket, table=s.table, data_key=k.data, signing_key=k.signing,
            checkpoint_key=k.checkpoint, audit_key=k.audit, tier=p.tier, min_capacity=p.fleet_min,
            max_capacity=p.fleet_max, tls_secret_arn=p.tls_bundle_arn, allowed_principals=p.allowed_principals,
            control_api_url=self.control_api.url.rstrip("/"), heartbeat_path_arn=self.control_api.heartbeat_path_arn,
            org_id=p.org_id, access_logs_bucket=s.access_log_bucket, data_key_policy=k.created_data_key,
            jwt_issuer=constants.JWT_ISSUER, jwt_audience=constants.JWT_AUDIENCE,
            auto_scaling_group_name=fleet_name, role_name=fleet_role_name,
        )
        n.allow_pgwire_clients(self.fleet.nlb_security_group)
        self.wipe_hook = WipeHook(
            self, "WipeHook", asg_name=fleet_name, lifecycle_hook_name=self.fleet.lifecycle_hook_name,
            device=constants.CACHE_DEVICE, table=s.table, audit_bucket=s.audit_bucket, data_key=k.data,
            signing_key=k.signing, checkpoint_key=k.checkpoint, audit_key=k.audit, logs_key=k.logs,
            notification_key=k.notifications, vpc=n.vpc, subnets=n.subnets, security_group=n.lambda_sg,
            code=code, layers=layers,
        )
        self.erasure = Erasure(
            self, "Erasure", control_api=self.control_api, data_bucket=s.data_bucket, data_key=k.data, table=s.table,
            alarm_topic=self.wipe_hook.alarm_topic,
        )
        issuers = issuers_from_context(self)
        if issuers:  # else POST /v1/auth/federate accepts no issuer at all
            self.federation = Federation(self, "Federation", control_api=self.control_api, issuers=issuers,
                                         table=s.table, alarm_topic=self.wipe_hook.alarm_topic)
        engine_host = self.node.try_get_context(constants.CONTEXT_SHADOW_ENGINE_HOST)
        self.shadow = ShadowReplay(
            self, "ShadowReplay", vpc=n.vpc, subnets=n.subnets, lambda_sg=n.lambda_sg, endpoint_sg=n.endpoint_sg,
            engine_nlb_sg=self.fleet.nlb_security_group,
            engine_host=str(engine_host or self.fleet.nlb.load_balancer_dns_name),
            engine_ca_file=str(self.node.try_get_context(constants.CONTEXT_SHADOW_ENGINE_CA_FILE) or ""),
            data_bucket=s.data_bucket, data_key=k.data, logs_key=k.logs, alarm_topic=self.wipe_hook.alarm_topic,
            code=code, layers=layers, comparison=comparison_network(self),
            api_function=self.control_api.functions.get("shadow"),
            api_role=self.control_api.roles.get("shadow"),
            key_revocation=KeyRevocation(table=s.table, table_key=k.control, audit_bucket=s.audit_bucket,
                                         audit_key=k.audit, checkpoint_key=k.checkpoint, signing_key=k.signing),
        )
        self.lifecycle = Lifecycle(
            self, "Lifecycle", control_api=self.control_api, queue_key=k.notifications,
            alarm_topic=self.wipe_hook.alarm_topic, signing_key=k.signing, token_verifiers=[self.fleet.role],
            rotation_checked_keys=[k.data, k.audit, k.control, k.logs, k.notifications],
            iam_recorders=[self.wipe_hook.role, self.fleet.role, self.control_api.roles[ERASURE_WORKER]],
        )
        self.wipe_hook.announce_on(self.lifecycle.queue)
        self.monitoring = Monitoring(
            self, "Monitoring", nlb=self.fleet.nlb, target_group=self.fleet.target_group, asg=self.fleet.asg,
            functions={**self.control_api.functions, "wipe_hook": self.wipe_hook.function,
                       **{f"shadow_{name}": function for name, function in self.shadow.functions.items()}},
            api=self.control_api.api, api_stage_name=constants.CONTROL_API_STAGE, notification_key=k.notifications,
            alarm_topic=self.wipe_hook.alarm_topic,
            extra_metrics={"WipeFailed": self.wipe_hook.wipe_failed_alarm.metric,
                           "ShadowReplayFailed": self.shadow.failed_alarm.metric,
                           "WebhookDeadLetters": self.lifecycle.alarms["WebhookDeadLetters"].metric},
            dead_letter_queues={"control_api": self.control_api.dead_letter_queue},
        )
        # Context hd:otelEndpoint / hd:otelCollectorLayerArn: spans from the Lambdas (the hosts' are in their config).
        self.tracing = Tracing(self, "Tracing", security_groups=[n.engine_sg, n.lambda_sg])
        self._perimeter()
        ca_arn = private_ca_arn(self)
        if ca_arn is not None:  # else the documented import path: a new secret version from any CA
            self.certificates = CertificateRotation(
                self, "Certificates", secret_arn=p.tls_bundle_arn, ca_arn=ca_arn, data_key=k.data, vpc=n.vpc,
                subnets=n.subnets, lambda_sg=n.lambda_sg, endpoint_sg=n.endpoint_sg, logs_key=k.logs, code=code,
                layers=layers)
        self._outputs()

    def _perimeter(self) -> None:
        """Buckets, the control table's endpoint and the data-protecting keys answer only inside the VPC (issue 21)."""
        n, k, s = self.network, self.keys, self.storage
        self.perimeter = Perimeter(self, "Perimeter", vpc=n.vpc, s3_endpoint=n.s3_endpoint,
                                   dynamodb_endpoint=n.dynamodb_endpoint)
        for bucket in (s.data_bucket, s.audit_bucket, s.access_log_bucket):
            self.perimeter.restrict_bucket(bucket)
        self.perimeter.restrict_table_endpoint(s.table)
        self.perimeter.restrict_key(k.audit)
        self.perimeter.restrict_key(k.control)
        if k.created_data_key is not None:  # a customer's own key's policy is its owner's
            # The webhook delivery Lambda runs outside the VPC by design and seals webhook secrets with the data key.
            self.perimeter.restrict_key(k.created_data_key, exempt_purposes=[DELIVERY_ACCESS.sealed_purpose])

    def _outputs(self) -> None:
        """What the README's next steps need: bootstrap the Owner, load data, connect agents."""
        outputs = {
            "ControlTableName": (self.storage.table.table_name, "hd engine bootstrap-owner --table <this>"),
            "ControlApiUrl": (self.control_api.url, "the control API (private: reachable through the VPC endpoint)"),
            "DataBucketName": (self.storage.data_bucket.bucket_name, "Parquet tables: <schema>/<table>/*.parquet"),
            "AuditBucketName": (self.storage.audit_bucket.bucket_name, "query audit and IAM checkpoints (Object Lock)"),
            "EndpointServiceName": (
                f"com.amazonaws.vpce.{self.region}.{self.fleet.endpoint_service.ref}",
                "PrivateLink service agents create their interface endpoint for (port 5439)"),
            "EngineConfigParameter": (self.fleet.config_parameter.parameter_name, "the hosts' EngineConfig (SSM)"),
        }
        for name, (value, description) in outputs.items():
            CfnOutput(self, name, value=value, description=description)

    def _parameters(self) -> DeploymentParameters:
        tls_bundle_arn = CfnParameter(
            self,
            "TlsCertificateBundleArn",
            type="String",
            description=(
                "Secrets Manager secret holding the engine's TLS certificate for the name agents connect to, as "
                'JSON {"certificate": "<PEM chain>", "private_key": "<PEM>"}, encrypted with the data key'
            ),
            allowed_pattern=r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+$",
            constraint_description="a Secrets Manager secret ARN",
        )
        org_id = CfnParameter(
            self,
            "OrganizationId",
            type="String",
            description="The organisation this deployment serves (its engine hosts report for it and no other)",
            allowed_pattern=r"^[A-Za-z0-9_-]{1,64}$",
            constraint_description="letters, digits, '-' and '_' (at most 64)",
        )
        allowed_principals = CfnParameter(
            self,
            "AllowedPrincipals",
            type="CommaDelimitedList",
            description="IAM principal ARNs allowed to connect an interface endpoint to the PrivateLink service",
        )
        approved_prefix_list_id = CfnParameter(
            self,
            "ApprovedCidrs",
            type="String",
            default="",
            description=(
                "Optional managed prefix list (pl-...) holding the client CIDRs approved for port 5439; "
                "edit the prefix list to change them without redeploying. Fixed CIDRs: context hd:approvedCidrs."
            ),
            allowed_pattern=r"^$|^pl-[a-f0-9]{8,17}$",
            constraint_description="empty, or a managed prefix list ID (pl-...)",
        )
        tier = CfnParameter(
            self,
            "Tier",
            type="String",
            default=constants.DEFAULT_TIER,
            allowed_values=list(constants.TIER_INSTANCE_TYPES),
            description="Compute tier: " + ", ".join(f"{k}={v}" for k, v in constants.TIER_INSTANCE_TYPES.items()),
        )
        fleet_min = CfnParameter(
            self, "FleetMin", type="Number", default=constants.FLEET_MIN_DEFAULT, min_value=1,
            max_value=constants.FLEET_SIZE_LIMIT, description="Minimum number of engine hosts",
        )
        fleet_max = CfnParameter(
            self, "FleetMax", type="Number", default=constants.FLEET_MAX_DEFAULT, min_value=1,
            max_value=constants.FLEET_SIZE_LIMIT, description="Maximum number of engine hosts",
        )
        data_key_arn = CfnParameter(
            self,
            "DataKeyArn",
            type="String",
            default="",
            description="Optional customer-managed KMS key ARN for warehouse data; empty creates one",
            allowed_pattern=f"^$|{KEY_ARN_PATTERN}",
            constraint_description="empty, or a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>)",
        )
        private_api = CfnParameter(
            self,
            "PrivateApi",
            type="String",
            default="true",
            allowed_values=["true", "false"],
            description=(
                "true (default): the control API is a private REST API reachable only through the VPC endpoint; "
                "engine hosts in the isolated subnets reach their heartbeat route only this way"
            ),
        )
        return DeploymentParameters(
            tls_bundle_arn=tls_bundle_arn.value_as_string,
            org_id=org_id.value_as_string,
            allowed_principals=allowed_principals.value_as_list,
            approved_prefix_list_id=approved_prefix_list_id.value_as_string,
            tier=tier.value_as_string,
            fleet_min=fleet_min.value_as_number,
            fleet_max=fleet_max.value_as_number,
            data_key_arn=data_key_arn.value_as_string,
            private_api=private_api.value_as_string,
        )
