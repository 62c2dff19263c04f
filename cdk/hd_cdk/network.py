"""The VPC: private isolated subnets only, VPC endpoints for every AWS API we call, and the security groups.

Security decisions visible here:
- no internet gateway, no NAT, no public IP: instances and Lambdas reach AWS only through endpoints;
- every security group starts with no egress (`allow_all_outbound=False`) and gets exactly the rules below;
- 5439 (pgwire) only from the agent security group and approved CIDRs, 9090 (metrics) only from monitoring;
- engines and Lambdas send 443 only to the S3 / DynamoDB gateway prefix lists and the interface endpoints;
- interface endpoints accept 443 only from the engine and Lambda security groups (not from the whole VPC);
- flow logs of all traffic go to a CloudWatch log group encrypted with our logs key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aws_cdk import CfnCondition, Fn, Names, RemovalPolicy, Stack, Token
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from hd_cdk import constants

# Interface endpoints: what boot, heartbeat, audit, SSM and the control-plane Lambdas call.
INTERFACE_ENDPOINTS: dict[str, ec2.InterfaceVpcEndpointAwsService] = {
    "Kms": ec2.InterfaceVpcEndpointAwsService.KMS,
    "Ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
    "SsmMessages": ec2.InterfaceVpcEndpointAwsService.SSM_MESSAGES,
    "Ec2Messages": ec2.InterfaceVpcEndpointAwsService.EC2_MESSAGES,
    "Sts": ec2.InterfaceVpcEndpointAwsService.STS,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "Monitoring": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,
    "Ec2": ec2.InterfaceVpcEndpointAwsService.EC2,  # the heartbeat Lambda's DescribeInstances
    "ExecuteApi": ec2.InterfaceVpcEndpointAwsService.APIGATEWAY,  # private REST API / heartbeat
    "AutoScaling": ec2.InterfaceVpcEndpointAwsService.AUTOSCALING,  # the wipe hook completes lifecycle actions
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,  # boot reads the engine's TLS bundle
}


def validated_cidrs(cidrs: Sequence[str]) -> list[str]:
    """The approved client CIDRs, normalised; ValueError for a malformed, host-bit or world-open range."""
    result: list[str] = []
    for raw in cidrs:
        try:
            network = ipaddress.ip_network(raw.strip(), strict=True)
        except ValueError as error:
            raise ValueError(f"approved CIDR {raw!r} is not a valid network: {error}") from error
        if network.version != 4:
            raise ValueError(f"approved CIDR {raw!r}: only IPv4 ranges are supported (the VPC is IPv4-only)")
        # 5439 must never be open to the world: fail closed instead of deploying it.
        if network.prefixlen == 0:
            raise ValueError(f"approved CIDR {raw!r} opens port {constants.PGWIRE_PORT} to every address")
        result.append(str(network))
    return result


class Network(Construct):
    """VPC with private isolated subnets in two fixed AZs, endpoints, flow logs and the system's security groups.

    Attributes: `vpc`, `subnets` (the isolated subnet selection), `engine_sg`, `agent_sg`, `monitoring_sg`,
    `endpoint_sg`, `lambda_sg`, `approved_cidrs` (validated), `s3_endpoint`, `dynamodb_endpoint`,
    `interface_endpoints`, `flow_log_group`. `allow_pgwire_clients(group)` opens 5439 on another group (an
    NLB in front of the engines) to exactly the clients the engines accept.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        approved_cidrs: Sequence[str],
        approved_prefix_list_id: str | None = None,
        flow_log_key: kms.IKey,
        s3_prefix_list_id: str,
        dynamodb_prefix_list_id: str,
    ) -> None:
        super().__init__(scope, id)
        cidrs = validated_cidrs(approved_cidrs)
        region = Stack.of(self).region

        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(constants.VPC_CIDR),
            # Fixed zones: synth never asks EC2 which AZs exist, so it runs offline and deterministically.
            availability_zones=[f"{region}{suffix}" for suffix in constants.AZ_SUFFIXES],
            subnet_configuration=[
                ec2.SubnetConfiguration(name="Private", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=20),
            ],
            nat_gateways=0,
            create_internet_gateway=False,
            enable_dns_hostnames=True,  # interface endpoints' private DNS needs both
            enable_dns_support=True,
            restrict_default_security_group=True,
        )
        self.subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        self._flow_logs(flow_log_key)

        self.engine_sg = self._security_group("EngineSg", "Engine hosts: pgwire 5439 and metrics 9090")
        self.agent_sg = self._security_group("AgentSg", "Agents inside the VPC allowed to reach pgwire 5439")
        self.monitoring_sg = self._security_group("MonitoringSg", "Prometheus scrapers allowed to reach 9090")
        self.endpoint_sg = self._security_group("EndpointSg", "Interface VPC endpoints: HTTPS from engines and Lambdas")
        self.lambda_sg = self._security_group("LambdaSg", "Control-plane Lambdas in the VPC")

        self.s3_endpoint = self.vpc.add_gateway_endpoint(
            "S3", service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[self.subnets]
        )
        self.dynamodb_endpoint = self.vpc.add_gateway_endpoint(
            "DynamoDb", service=ec2.GatewayVpcEndpointAwsService.DYNAMODB, subnets=[self.subnets]
        )
        self.interface_endpoints = {
            name: self.vpc.add_interface_endpoint(
                name,
                service=service,
                subnets=self.subnets,
                security_groups=[self.endpoint_sg],
                private_dns_enabled=True,
                open=False,  # no implicit "443 from the VPC CIDR": only the SG rules below
            )
            for name, service in INTERFACE_ENDPOINTS.items()
        }

        s3_prefix_list = ec2.Peer.prefix_list(s3_prefix_list_id)
        dynamodb_prefix_list = ec2.Peer.prefix_list(dynamodb_prefix_list_id)
        https = ec2.Port.tcp(constants.HTTPS_PORT)

        # Ingress to the engines: pgwire from agents and approved networks, metrics from monitoring only.
        self.approved_cidrs = cidrs
        self._approved_prefix_list_id = approved_prefix_list_id
        self._has_approved_prefix_list: CfnCondition | None = None
        self.allow_pgwire_clients(self.engine_sg)
        metrics = ec2.Port.tcp(constants.METRICS_PORT)
        self.engine_sg.add_ingress_rule(self.monitoring_sg, metrics, "Prometheus scrape from monitoring")
        self.monitoring_sg.add_egress_rule(self.engine_sg, metrics, "Prometheus scrape of the engines")

        # Engines and Lambdas: HTTPS to the gateway endpoints' prefix lists (S3; DynamoDB, because engines and
        # Lambdas read and write the control table: control state, usage) and to the interface endpoints.
        # Nothing else: there is no route anywhere else either.
        for group in (self.engine_sg, self.lambda_sg):
            group.add_egress_rule(s3_prefix_list, https, "S3 through the gateway endpoint")
            group.add_egress_rule(dynamodb_prefix_list, https, "DynamoDB through the gateway endpoint")
            group.add_egress_rule(self.endpoint_sg, https, "AWS APIs through the interface endpoints")

        self.endpoint_sg.add_ingress_rule(self.engine_sg, https, "HTTPS from the engines")
        self.endpoint_sg.add_ingress_rule(self.lambda_sg, https, "HTTPS from the control-plane Lambdas")

    def allow_pgwire_clients(self, group: ec2.ISecurityGroup) -> None:
        """Let every approved pgwire client reach 5439 on `group` (the engines, or the NLB in front of them).

        Clients are the agent security group, the approved CIDRs, and the approved prefix list when one is
        given (as a CfnParameter token: only when it is non-empty, decided at deploy time).
        """
        pgwire = ec2.Port.tcp(constants.PGWIRE_PORT)
        group.add_ingress_rule(self.agent_sg, pgwire, "pgwire from the agent security group")
        # Security groups are stateful: the agents' egress is all they need, replies flow back.
        self.agent_sg.add_egress_rule(group, pgwire, "pgwire to the Hardened Duck endpoint")
        for cidr in self.approved_cidrs:
            group.add_ingress_rule(ec2.Peer.ipv4(cidr), pgwire, f"pgwire from approved network {cidr}")
        if self._approved_prefix_list_id is None:
            return
        rule = ec2.CfnSecurityGroupIngress(
            self,
            f"PgwireFromApprovedPrefixListTo{Names.unique_id(group)}",
            group_id=group.security_group_id,
            ip_protocol="tcp",
            from_port=constants.PGWIRE_PORT,
            to_port=constants.PGWIRE_PORT,
            source_prefix_list_id=self._approved_prefix_list_id,
            description="pgwire from the approved client prefix list",
        )
        if Token.is_unresolved(self._approved_prefix_list_id):
            if self._has_approved_prefix_list is None:
                self._has_approved_prefix_list = CfnCondition(
                    self,
                    "HasApprovedPrefixList",
                    expression=Fn.condition_not(Fn.condition_equals(self._approved_prefix_list_id, "")),
                )
            rule.cfn_options.condition = self._has_approved_prefix_list

    def _security_group(self, id: str, description: str) -> ec2.SecurityGroup:
        return ec2.SecurityGroup(self, id, vpc=self.vpc, description=description, allow_all_outbound=False)

    def _flow_logs(self, key: kms.IKey) -> None:
        self.flow_log_group = logs.LogGroup(
            self,
            "FlowLogs",
            encryption_key=key,
            retention=logs.RetentionDays.ONE_YEAR,
            # Network evidence outlives the stack: a teardown must not erase it.
            removal_policy=RemovalPolicy.RETAIN,
        )
        role = iam.Role(
            self,
            "FlowLogRole",
            assumed_by=iam.ServicePrincipal(
                "vpc-flow-logs.amazonaws.com",
                # Confused-deputy guard: only flow logs of this account may use the role.
                conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}},
            ),
            description="VPC flow logs delivery to the flow-log group",
        )
        role.add_managed_policy(
            iam.ManagedPolicy(
                self,
                "FlowLogDelivery",
                statements=[
                    iam.PolicyStatement(
                        actions=["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                        resources=[self.flow_log_group.log_group_arn],
                    ),
                ],
            )
        )
        self.vpc.add_flow_log(
            "FlowLog",
            # Immutable view of the role: FlowLog would otherwise add its own inline grants next to the
            # managed policy above (cdk-nag IAMNoInlinePolicy); the managed policy already says everything.
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(
                self.flow_log_group, iam.Role.from_role_arn(self, "FlowLogRoleRef", role.role_arn, mutable=False)
            ),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )
