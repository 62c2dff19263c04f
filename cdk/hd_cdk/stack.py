"""The Hardened Duck stack: deployment parameters, and the constructs composed from them (no resources of its own)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aws_cdk import CfnParameter, Stack
from constructs import Construct

from hd_cdk import constants
from hd_cdk.keys import KEY_ARN_PATTERN, Keys
from hd_cdk.network import Network
from hd_cdk.storage import Storage


@dataclass(frozen=True)
class DeploymentParameters:
    """The CloudFormation parameters a platform engineer sets at `cdk deploy --parameters ...` (tokens)."""

    certificate_arn: str
    allowed_principals: list[str]
    approved_prefix_list_id: str
    tier: str  # a key of constants.TIER_INSTANCE_TYPES; EngineFleet resolves the instance type
    fleet_min: float
    fleet_max: float
    data_key_arn: str
    private_api: str  # "true" | "false"


class HardenedDuckStack(Stack):
    """Composes Network, Keys and Storage; ControlApi, EngineFleet, WipeHook and Monitoring are wired in below.

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
        **kwargs: Any,
    ) -> None:
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
        # Wiring point for the rest of the system (the lead adds these constructs here, in this order):
        #   EngineFleet: network.vpc/subnets/engine_sg, storage buckets and table, keys.data/signing/checkpoint/
        #     audit, parameters.tier/fleet_min/fleet_max/certificate_arn/allowed_principals; its NLB security
        #     group gets the pgwire clients through network.allow_pgwire_clients(nlb_sg).
        #   ControlApi: network.vpc/subnets/lambda_sg/endpoint_sg, storage.table/audit_bucket, keys.signing/
        #     checkpoint/data/logs, keys.notifications as the dead-letter key, and a CfnCondition on
        #     parameters.private_api == "true".
        #   WipeHook and Monitoring: the fleet's ASG / NLB and the API's functions, keys.notifications, keys.logs.

    def _parameters(self) -> DeploymentParameters:
        certificate_arn = CfnParameter(
            self,
            "CertificateArn",
            type="String",
            description="ACM certificate ARN for the TLS 1.3 listener on port 5439",
            allowed_pattern=r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[a-zA-Z0-9-]+$",
            constraint_description="an ACM certificate ARN",
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
            default="false",
            allowed_values=["true", "false"],
            description="true: the control API is a private REST API reachable only through the VPC endpoint",
        )
        return DeploymentParameters(
            certificate_arn=certificate_arn.value_as_string,
            allowed_principals=allowed_principals.value_as_list,
            approved_prefix_list_id=approved_prefix_list_id.value_as_string,
            tier=tier.value_as_string,
            fleet_min=fleet_min.value_as_number,
            fleet_max=fleet_max.value_as_number,
            data_key_arn=data_key_arn.value_as_string,
            private_api=private_api.value_as_string,
        )
