"""The engine fleet: r6id hosts behind an internal NLB, published to agents over PrivateLink.

Security decisions, all visible here:
- IMDSv2 only (hop limit 1, so a container on the host cannot reach the metadata service), no public
  IP, root volume encrypted with the customer's data key, detailed monitoring.
- The instance role holds exactly seed 000 section 6.2's permissions plus what boot, serve, heartbeat
  and Run Command need (`ENGINE_ROLE_ACTIONS`), each on its resource ARN, none destructive.
- TLS 1.3 end to end, terminated by the engine itself: Postgres clients send a plaintext SSLRequest
  before the handshake, which a TLS listener cannot answer (and PG17's direct TLS needs the ALPN
  `postgresql`, which an NLB cannot select), so the NLB passes TCP through. The engine offers TLS 1.3
  only (engine_host/wire/tls.py) with the certificate boot installs from the `tls_secret_arn` secret, so
  `sslmode=verify-full` works against the name agents use. The endpoint service requires acceptance
  and admits only the allowed principals.
- A termination lifecycle hook holds every instance until the wipe hook has erased its NVMe cache.
- Scaling (issue 21): target tracking on CPU and on the engines' own ActiveConnections metric; each host keeps
  itself protected from scale-in while it holds sessions and drains on a termination or Spot interruption notice
  (engine_host/runtime/fleet_lifecycle.py). The role may put metrics only into the engine namespace and set
  protection only on its own group. Spot only for non-production, behind a context flag.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import jsii
from aws_cdk import (
    Annotations,
    Aws,
    BundlingOptions,
    CfnCondition,
    CfnRule,
    CfnRuleAssertion,
    DockerImage,
    Duration,
    Fn,
    ILocalBundling,
    Stack,
    Token,
)
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from hd_cdk import constants as c
from hd_cdk.nag import acknowledge
from hd_cdk.tracing import otel_endpoint

# Every IAM action the instance role may hold; a test compares the synthesized role with this set.
ENGINE_ROLE_ACTIONS: Final[frozenset[str]] = frozenset({
    "s3:GetObject", "s3:ListBucket",  # data bucket (seed 6.2), the engine package, its own latest audit object
    "s3:PutObject",  # audit/queries/* (seed 6.2) and audit/query-checkpoints/*
    "kms:Sign",  # checkpoint key: signs its query audit chain's checkpoints
    "kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey",  # data key: cache key, SSE-KMS reads; audit key: writes
    "kms:GetPublicKey",  # signing key: verify control-API JWTs presented as Postgres passwords
    "dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem", "dynamodb:UpdateItem",  # control state, usage
    "ssm:GetParameter",  # its own configuration parameter
    "secretsmanager:GetSecretValue",  # its TLS certificate and key (the one secret named in the config)
    "execute-api:Invoke",  # POST /v1/fleet/heartbeat, nothing else
    # The region pin: where both buckets and the table are and where the buckets replicate to, at every start.
    "s3:GetBucketLocation", "s3:GetReplicationConfiguration", "dynamodb:DescribeTable",
    "cloudwatch:PutMetricData",  # fleet totals for scaling and alarms, only into the engine namespace
    "autoscaling:SetInstanceProtection",  # scale-in protection while holding sessions, its own group only
})
# AWS's managed policy for Run Command, which the wipe hook uses to erase the cache at termination.
SSM_MANAGED_INSTANCE_CORE: Final = "AmazonSSMManagedInstanceCore"
# hd_core.erasure's KMS encryption-context purpose for sealed forget subjects (hd_cdk.erasure.SEALED_PURPOSE, which
# imports this module, so the name is repeated here rather than imported).
_ERASURE_SUBJECT_PURPOSE: Final = "forget-subject"
_HEALTH_PATH: Final = "/readyz"


class EngineFleet(Construct):
    """Launch template, Auto Scaling Group with a wipe lifecycle hook, TLS NLB and PrivateLink endpoint service.

    Attributes: `config_parameter` (the EngineConfig SSM parameter), `package` (the engine wheelhouse asset),
    `role`, `instance_policy`, `wildcard_resources`, `launch_template`, `asg`, `lifecycle_hook_name`, `nlb`,
    `nlb_security_group`, `target_group`, `listener`, `endpoint_service`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        engine_sg: ec2.ISecurityGroup,
        data_bucket: s3.IBucket,
        audit_bucket: s3.IBucket,
        table: dynamodb.ITable,
        data_key: kms.IKey,
        signing_key: kms.IKey,
        checkpoint_key: kms.IKey,
        audit_key: kms.IKey,
        tier: str,
        min_capacity: int | float,
        max_capacity: int | float,
        tls_secret_arn: str,
        allowed_principals: Sequence[str],
        control_api_url: str,
        heartbeat_path_arn: str,
        org_id: str,
        access_logs_bucket: s3.IBucket,
        client_peers: Sequence[ec2.IPeer] = (),
        engine_package: s3_assets.Asset | None = None,
        data_key_policy: kms.Key | None = None,
        jwt_issuer: str | None = None,
        jwt_audience: str | None = None,
        auto_scaling_group_name: str | None = None,
        role_name: str | None = None,
    ) -> None:
        """`tier` is a key of `TIER_INSTANCE_TYPES` or a CfnParameter token holding one; `allowed_principals`
        may be a CommaDelimitedList token; `heartbeat_path_arn` is the execute-api ARN of the heartbeat route;
        `client_peers` may reach the NLB on 5439 (or pass none and give `nlb_security_group` to
        `Network.allow_pgwire_clients`); `engine_package` defaults to `engine_wheelhouse`.
        `auto_scaling_group_name` fixes the group's name, so the control API can be told it as a plain string
        (a reference would close a cycle through the fleet's configuration, which holds the API's URL).
        `data_key_policy` is the key whose policy lets Auto Scaling encrypt the root volumes: by default
        `data_key` itself when we own it; pass `Keys.created_data_key` when `data_key` is its deploy-time
        import; a customer's own key needs the statement added by its owner."""
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.package = package = engine_package or engine_wheelhouse(self, "EnginePackage")
        self.config_parameter = ssm.StringParameter(
            self, "EngineConfig",
            parameter_name=f"{c.ENGINE_CONFIG_PARAMETER_PREFIX}/{stack.stack_name}/engine-config",
            description="EngineConfig JSON read by `hd engine boot` and `hd engine serve` (no secrets: names and ARNs)",
            string_value=stack.to_json_string(_engine_config(
                org_id=org_id, vpc=vpc, engine_sg=engine_sg, data_key=data_key, data_bucket=data_bucket,
                audit_bucket=audit_bucket, table=table, signing_key=signing_key, checkpoint_key=checkpoint_key,
                control_api_url=control_api_url, jwt_issuer=jwt_issuer, jwt_audience=jwt_audience,
                tls_secret_arn=tls_secret_arn, auto_scaling_group_name=auto_scaling_group_name,
                otel_endpoint=otel_endpoint(self),
            )),
            tier=ssm.ParameterTier.STANDARD,
        )
        self.role = self._instance_role(
            data_bucket=data_bucket, audit_bucket=audit_bucket, table=table, data_key=data_key,
            signing_key=signing_key, checkpoint_key=checkpoint_key, audit_key=audit_key,
            heartbeat_path_arn=heartbeat_path_arn, package=package, tls_secret_arn=tls_secret_arn, role_name=role_name,
            org_id=org_id,
        )
        volume_key = data_key_policy or (data_key if isinstance(data_key, kms.Key) else None)
        if volume_key is None:
            Annotations.of(self).add_warning_v2(
                "hd:volumeKeyPolicy", "the data key's policy cannot be extended here: it must allow the Auto Scaling "
                "service-linked role to use it through EC2, or instances fail to launch (README prerequisites)")
        else:
            allow_auto_scaling_to_encrypt_volumes(volume_key)
        self.launch_template = ec2.LaunchTemplate(
            self, "LaunchTemplate",
            instance_type=ec2.InstanceType(instance_type_for(self, tier)),
            machine_image=ec2.MachineImage.latest_amazon_linux2023(cpu_type=ec2.AmazonLinuxCpuType.X86_64),
            role=self.role,
            security_group=engine_sg,
            require_imdsv2=True,
            http_tokens=ec2.LaunchTemplateHttpTokens.REQUIRED,
            http_put_response_hop_limit=1,  # the metadata service answers this host only, not its containers
            http_endpoint=True,
            associate_public_ip_address=False,
            detailed_monitoring=True,
            block_devices=[ec2.BlockDevice(
                device_name="/dev/xvda",
                volume=ec2.BlockDeviceVolume.ebs(
                    c.ROOT_VOLUME_GIB, volume_type=ec2.EbsDeviceVolumeType.GP3, encrypted=True, kms_key=data_key,
                    delete_on_termination=True,
                ),
            )],
            user_data=engine_user_data(self.config_parameter.parameter_name, package.s3_object_url, stack.region),
        )
        self.spot = spot_requested(self)
        self.asg = autoscaling.AutoScalingGroup(
            self, "Fleet",
            vpc=vpc,
            vpc_subnets=subnets,
            **_capacity(self.launch_template, spot=self.spot),
            auto_scaling_group_name=auto_scaling_group_name,
            min_capacity=min_capacity,
            max_capacity=max_capacity,
            group_metrics=[autoscaling.GroupMetrics.all()],  # in-service and pending counts on the dashboard
            health_checks=autoscaling.HealthChecks.with_additional_checks(
                additional_types=[autoscaling.AdditionalHealthCheckType.ELB],
                grace_period=Duration.minutes(10),  # boot formats the NVMe cache and loads the policy snapshot
            ),
        )
        self.lifecycle_hook_name = c.WIPE_LIFECYCLE_HOOK_NAME
        self.asg.add_lifecycle_hook(
            "CacheWipe",
            lifecycle_hook_name=c.WIPE_LIFECYCLE_HOOK_NAME,
            lifecycle_transition=autoscaling.LifecycleTransition.INSTANCE_TERMINATING,
            heartbeat_timeout=Duration.seconds(c.WIPE_HEARTBEAT_TIMEOUT_SECONDS),
            # hd_core.wipe: a failed wipe never continues; the timeout then applies ABANDON and the alarm fires.
            default_result=autoscaling.DefaultResult.ABANDON,
            notification_metadata=stack.to_json_string(
                {"heartbeat_timeout_seconds": c.WIPE_HEARTBEAT_TIMEOUT_SECONDS}),
        )
        self._scaling(tier)
        self._load_balancer(vpc, subnets, engine_sg, client_peers, access_logs_bucket)
        self.endpoint_service = ec2.CfnVPCEndpointService(
            self, "EndpointService",
            network_load_balancer_arns=[self.nlb.load_balancer_arn],
            acceptance_required=True,  # every agent connection is approved by the customer, not just allowed
        )
        ec2.CfnVPCEndpointServicePermissions(
            self, "EndpointServicePermissions",
            service_id=self.endpoint_service.ref,
            allowed_principals=list(allowed_principals),
        )
        self._acknowledge_findings(self.wildcard_resources)
        if self.spot:
            # cdk-nag reads a group's own LaunchTemplate property only; a Spot group names the same template inside
            # its MixedInstancesPolicy, which these rules cannot follow (EC26 throws, the IMDSv2 rules report it).
            for finding in ("AwsSolutions-EC26", "HIPAA.Security-EC2IMDSv2Enabled", "NIST.800.53.R5-EC2IMDSv2Enabled"):
                acknowledge(self.asg, finding, "the Spot group launches from this stack's launch template, which "
                            "requires IMDSv2 and encrypts its volumes with the data key (as the on-demand group's, "
                            "where cdk-nag checks it); tests/cdk/test_resource_limit.py asserts the template")
        for resource, why in zip(self._scaling_wildcards, (
                "cloudwatch:PutMetricData has no resource-level permissions; the cloudwatch:namespace condition "
                "limits the host to the HardenedDuck/Engine namespace (fleet totals for scaling and alarms)",
                "the group's ARN carries a random id unknown until it exists: the name pins the host's own group, "
                "where it sets scale-in protection on itself while it holds sessions"), strict=True):
            acknowledge(self.instance_policy, f"AwsSolutions-IAM5[Resource::{nag_resource(self, resource)}]", why)

    def _scaling(self, tier: str) -> None:
        """Target tracking on CPU and on active connections per host; the hosts' own grants to take part."""
        group = self.asg.auto_scaling_group_name
        self.connections_metric = cloudwatch.Metric(
            namespace=c.ENGINE_METRICS_NAMESPACE, metric_name="ActiveConnections", statistic="Average",
            dimensions_map={"AutoScalingGroupName": group}, period=Duration.minutes(1))
        cooldown = Duration.seconds(c.SCALE_IN_COOLDOWN_SECONDS)
        self.cpu_scaling = self.asg.scale_on_cpu_utilization(
            "CpuTarget", target_utilization_percent=c.CPU_TARGET_PERCENT, cooldown=cooldown)
        self.connections_scaling = self.asg.scale_to_track_metric(
            "ConnectionsTarget", metric=self.connections_metric, target_value=connections_target_for(self, tier),
            cooldown=cooldown)
        stack = Stack.of(self)
        own_group = (f"arn:{stack.partition}:autoscaling:{stack.region}:{stack.account}:autoScalingGroup:*:"
                     f"autoScalingGroupName/{group}")
        self.instance_policy.add_statements(
            # PutMetricData has no resource-level permissions: the namespace condition is the fence.
            iam.PolicyStatement(actions=["cloudwatch:PutMetricData"], resources=["*"],
                                conditions={"StringEquals": {"cloudwatch:namespace": c.ENGINE_METRICS_NAMESPACE}}),
            _allow(["autoscaling:SetInstanceProtection"], [own_group]),
        )
        self._scaling_wildcards = ("*", own_group)

    def _instance_role(
        self, *, data_bucket: s3.IBucket, audit_bucket: s3.IBucket, table: dynamodb.ITable, data_key: kms.IKey,
        signing_key: kms.IKey, checkpoint_key: kms.IKey, audit_key: kms.IKey, heartbeat_path_arn: str,
        package: s3_assets.Asset, tls_secret_arn: str, role_name: str | None, org_id: str,
    ) -> iam.Role:
        role = iam.Role(
            self, "InstanceRole",
            role_name=role_name,
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="Hardened Duck engine host: seed 6.2 least privilege, no destructive action",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(SSM_MANAGED_INSTANCE_CORE)],
        )
        data_objects = data_bucket.arn_for_objects("*")
        query_audit_objects = audit_bucket.arn_for_objects(f"{c.AUDIT_QUERIES_PREFIX}*")
        table_indexes = f"{table.table_arn}/index/*"
        query_checkpoints = audit_bucket.arn_for_objects(f"{c.AUDIT_QUERY_CHECKPOINTS_PREFIX}*")
        self.wildcard_resources = (data_objects, query_audit_objects, query_checkpoints, table_indexes)
        statements = [
            _allow(["s3:ListBucket"], [data_bucket.bucket_arn]),
            _allow(["s3:GetObject"], [data_objects, package.bucket.arn_for_objects(package.s3_object_key)]),
            # Query audit and its chain's checkpoints only: IAM checkpoints are the control plane's, never a host's.
            _allow(["s3:PutObject"], [query_audit_objects, query_checkpoints]),
            # A restarted host continues its day's query audit chain from its own latest object.
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[audit_bucket.bucket_arn],
                                conditions={"StringLike": {"s3:prefix": [f"{c.AUDIT_QUERIES_PREFIX}*"]}}),
            _allow(["s3:GetObject"], [query_audit_objects]),
            # Signs its query audit chain's checkpoints (ECDSA, the key never leaves KMS).
            _allow(["kms:Sign"], [checkpoint_key.key_arn]),
            # The data key: the cache volume's key (context hd:purpose), SSE-KMS reads (aws:s3:arn) and the hash-mask
            # keys (purpose hd-mask-hash). A `purpose` other than the mask keys' is a secret sealed by the control
            # plane (TOTP seeds, webhook secrets, erasure subjects): refused, so a host's credentials open none.
            iam.PolicyStatement(actions=["kms:Decrypt", "kms:GenerateDataKey"], resources=[data_key.key_arn],
                                conditions={"StringEqualsIfExists": {
                                    "kms:EncryptionContext:purpose": c.HOST_DATA_KEY_PURPOSE}}),
            # GDPR erasure (issue 20), the one sealed secret a host opens: each live host deletes a forget request's
            # subject from its own writable tables (engine.duckdb), which no control-plane function can reach, so
            # it unseals the subject id. Decrypt only (it seals nothing), only under the erasure's purpose, and
            # only for owners `<this fleet's org>/fgt_<request>`: never the erasure HMAC key (owner
            # erasure-hmac-key), another organisation's request, a TOTP seed or a webhook secret. The worker drops
            # the sealed id when the request completes, so a stolen credential opens only requests still open.
            iam.PolicyStatement(actions=["kms:Decrypt"], resources=[data_key.key_arn], conditions={
                "StringEquals": {"kms:EncryptionContext:purpose": _ERASURE_SUBJECT_PURPOSE},
                "StringLike": {"kms:EncryptionContext:owner": f"{org_id}/fgt_*"}}),
            _allow(["kms:DescribeKey"], [data_key.key_arn]),
            # The audit bucket is SSE-KMS with the audit key: a PutObject needs a data key from it.
            _allow(["kms:GenerateDataKey"], [audit_key.key_arn]),
            _allow(["kms:GetPublicKey"], [signing_key.key_arn]),
            _allow(["dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem", "dynamodb:UpdateItem"],
                   [table.table_arn]),
            _allow(["dynamodb:Query"], [table_indexes]),  # GSI1 lists (organisations, policies)
            # Where the buckets and the table are: boot and serve refuse any outside the region (region_pin.py).
            _allow(["s3:GetBucketLocation", "s3:GetReplicationConfiguration"],
                   [data_bucket.bucket_arn, audit_bucket.bucket_arn]),
            _allow(["dynamodb:DescribeTable"], [table.table_arn]),
            _allow(["ssm:GetParameter"], [self.config_parameter.parameter_arn]),
            # The secret must be encrypted with the data key (README), which this role may already decrypt.
            _allow(["secretsmanager:GetSecretValue"], [tls_secret_arn]),
            _allow(["execute-api:Invoke"], [heartbeat_path_arn]),
        ]
        # A customer-managed policy rather than inline: reviewable as one document, and HIPAA/NIST packs ask for it.
        self.instance_policy = iam.ManagedPolicy(
            self, "InstancePolicy", roles=[role], statements=statements,
            description="Engine host data, audit, key, control-state, config and heartbeat access")
        return role

    def _load_balancer(self, vpc: ec2.IVpc, subnets: ec2.SubnetSelection, engine_sg: ec2.ISecurityGroup,
                       client_peers: Sequence[ec2.IPeer], access_logs_bucket: s3.IBucket) -> None:
        self.nlb_security_group = ec2.SecurityGroup(
            self, "NlbSecurityGroup", vpc=vpc, allow_all_outbound=False,
            description="Engine NLB: 5439 from agents and approved CIDRs; to the engine hosts on 5439, 9090 (health)",
        )
        for peer in client_peers:
            self.nlb_security_group.add_ingress_rule(peer, ec2.Port.tcp(c.PGWIRE_PORT), "agents (pgwire over TLS)")
        for port, why in ((c.PGWIRE_PORT, "forwarded client sessions"), (c.METRICS_PORT, "target health checks")):
            self.nlb_security_group.add_egress_rule(engine_sg, ec2.Port.tcp(port), why)
            engine_sg.add_ingress_rule(self.nlb_security_group, ec2.Port.tcp(port), f"engine NLB: {why}")
        self.nlb = elbv2.NetworkLoadBalancer(
            self, "Nlb",
            vpc=vpc,
            vpc_subnets=subnets,
            internet_facing=False,
            security_groups=[self.nlb_security_group],
            cross_zone_enabled=True,
            deletion_protection=True,
            # PrivateLink traffic arrives from the consumers' endpoints, which acceptance and the allowed
            # principals already gate; the group's inbound rules are for clients inside this VPC.
            enforce_security_group_inbound_rules_on_private_link_traffic=False,
        )
        self.nlb.log_access_logs(access_logs_bucket, "engine-nlb")
        self.target_group = elbv2.NetworkTargetGroup(
            self, "Targets",
            vpc=vpc,
            port=c.PGWIRE_PORT,
            protocol=elbv2.Protocol.TCP,  # the host terminates TLS 1.3 itself (module docstring)
            target_type=elbv2.TargetType.INSTANCE,
            targets=[self.asg],
            deregistration_delay=Duration.seconds(60),
            health_check=elbv2.HealthCheck(
                protocol=elbv2.Protocol.HTTP, port=str(c.METRICS_PORT), path=_HEALTH_PATH,
                healthy_threshold_count=2, unhealthy_threshold_count=2, interval=Duration.seconds(10),
            ),
        )
        self.listener = self.nlb.add_listener(
            "Pgwire",
            port=c.PGWIRE_PORT,
            protocol=elbv2.Protocol.TCP,  # SSLRequest then TLS 1.3, both answered by the engine
            default_target_groups=[self.target_group],
        )
        for pack in ("HIPAA.Security", "NIST.800.53.R5", "PCI.DSS.321"):
            acknowledge(self.listener, f"{pack}-ELBv2ACMCertificateRequired",
                        "pgwire is encrypted end to end, but by the engine: Postgres clients send a plaintext "
                        "SSLRequest before TLS, which a TLS listener cannot answer, so the listener is TCP and each "
                        "host terminates TLS 1.3 with the certificate boot installs from the configured secret")

    def _acknowledge_findings(self, wildcard_resources: Sequence[str]) -> None:
        managed = f"arn:<AWS::Partition>:iam::aws:policy/{SSM_MANAGED_INSTANCE_CORE}"
        acknowledge(self.role, f"AwsSolutions-IAM4[Policy::{managed}]",
                    f"{SSM_MANAGED_INSTANCE_CORE} is what SSM Run Command needs on the host: the termination wipe "
                    "hook erases the NVMe cache through it; AWS maintains the minimal agent permissions")
        for resource in wildcard_resources:
            acknowledge(self.instance_policy, f"AwsSolutions-IAM5[Resource::{nag_resource(self, resource)}]",
                        "object keys under one bucket prefix or the table's own indexes: the engine reads any "
                        "table file in the data bucket, writes one audit/queries/ object per batch (and reads its "
                        "own latest), "
                        "writes its query chain checkpoints under audit/query-checkpoints/ and queries GSI1")
        acknowledge(self.asg, "AwsSolutions-AS3",
                    "every termination already raises an EventBridge lifecycle event that the wipe hook handles and "
                    "alarms on; launches and capacity are in the group metrics the monitoring dashboard shows")


def nag_resource(scope: Construct, value: str) -> str:
    """`value` (an ARN, possibly with tokens) spelled as cdk-nag names it in a finding id.

    cdk-nag 3 matches acknowledgment ids exactly, and it writes `Ref`s as `<LogicalId>` (pseudo parameters
    as `<AWS::Partition>`), `Fn::GetAtt`s as `<LogicalId.Attribute>` and concatenates `Fn::Join`s.
    """
    return _nag_text(Stack.of(scope).resolve(value))


def _nag_text(resolved: object) -> str:
    if isinstance(resolved, str):
        return resolved
    if isinstance(resolved, dict) and len(resolved) == 1:
        (function, argument), = resolved.items()
        if function == "Ref":
            return f"<{argument}>"
        if function == "Fn::GetAtt":
            return f"<{argument[0]}.{argument[1]}>"
        if function == "Fn::Join":
            delimiter, parts = argument
            return str(delimiter).join(_nag_text(part) for part in parts)
    raise ValueError(f"cannot spell {resolved!r} as a cdk-nag finding id")


def instance_type_for(scope: Construct, tier: str) -> str:
    """The r6id size of a compute tier (seed 003); for a CfnParameter token, an Fn::If chain and a rule on it."""
    if not Token.is_unresolved(tier):
        if tier not in c.TIER_INSTANCE_TYPES:
            raise ValueError(f"unknown compute tier {tier!r}: expected one of {sorted(c.TIER_INSTANCE_TYPES)}")
        return c.TIER_INSTANCE_TYPES[tier]
    # Fail closed on an unknown tier: the Fn::If chain below would otherwise pick its last branch.
    CfnRule(scope, "KnownTier", assertions=[CfnRuleAssertion(
        assert_=Fn.condition_contains(list(c.TIER_INSTANCE_TYPES), tier),
        assert_description=f"the compute tier must be one of {', '.join(c.TIER_INSTANCE_TYPES)}",
    )])
    # A chain of Fn::If rather than a mapping: mapping keys may not contain '_' (high_memory).
    *choices, (_, last_type) = c.TIER_INSTANCE_TYPES.items()
    chosen: str = last_type
    for name, instance_type in reversed(choices):
        condition = CfnCondition(scope, f"Tier-{name}", expression=Fn.condition_equals(tier, name))
        chosen = Fn.condition_if(condition.logical_id, instance_type, chosen).to_string()
    return chosen


def connections_target_for(scope: Construct, tier: str) -> float:
    """Active connections per host that target tracking aims at: the tier's concurrent statements."""
    if not Token.is_unresolved(tier):
        return float(c.TIER_CONNECTIONS_TARGET[tier])
    *choices, (_, last) = c.TIER_CONNECTIONS_TARGET.items()
    chosen: Any = last
    for name, target in reversed(choices):
        # The conditions instance_type_for made for the same parameter (Tier-<name>); numbers, not strings, in
        # each branch, so TargetValue is a number as CloudFormation's schema says.
        condition = scope.node.try_find_child(f"Tier-{name}")
        assert isinstance(condition, CfnCondition), "instance_type_for(scope, tier) must run first"
        chosen = Fn.condition_if(condition.logical_id, target, chosen)
    return Token.as_number(chosen)


def spot_requested(scope: Construct) -> bool:
    """Context `hd:spot`: Spot capacity, refused unless `hd:environment` names a non-production environment."""
    if str(scope.node.try_get_context(c.CONTEXT_SPOT) or "false").lower() != "true":
        return False
    environment = str(scope.node.try_get_context(c.CONTEXT_ENVIRONMENT) or "")
    if environment not in c.NON_PRODUCTION_ENVIRONMENTS:
        raise ValueError(
            f"context {c.CONTEXT_SPOT}=true needs {c.CONTEXT_ENVIRONMENT} set to a non-production environment "
            f"({', '.join(sorted(c.NON_PRODUCTION_ENVIRONMENTS))}), got {environment!r}: production stays on-demand")
    return True


def _capacity(launch_template: ec2.LaunchTemplate, *, spot: bool) -> dict[str, Any]:
    """How the group gets instances: on-demand from the launch template, or Spot only (interruptions drain)."""
    if not spot:
        return {"launch_template": launch_template}
    return {
        "mixed_instances_policy": autoscaling.MixedInstancesPolicy(
            launch_template=launch_template,
            instances_distribution=autoscaling.InstancesDistribution(
                on_demand_base_capacity=0, on_demand_percentage_above_base_capacity=0,
                spot_allocation_strategy=autoscaling.SpotAllocationStrategy.PRICE_CAPACITY_OPTIMIZED)),
        # Replace a host EC2 says is at elevated risk before its interruption notice arrives.
        "capacity_rebalance": True,
    }


def _allow(actions: list[str], resources: list[str]) -> iam.PolicyStatement:
    return iam.PolicyStatement(effect=iam.Effect.ALLOW, actions=actions, resources=resources)


def _engine_config(
    *, org_id: str, vpc: ec2.IVpc, engine_sg: ec2.ISecurityGroup, data_key: kms.IKey, data_bucket: s3.IBucket,
    audit_bucket: s3.IBucket, table: dynamodb.ITable, signing_key: kms.IKey, checkpoint_key: kms.IKey,
    control_api_url: str, jwt_issuer: str | None, jwt_audience: str | None, tls_secret_arn: str,
    auto_scaling_group_name: str | None = None, otel_endpoint: str | None = None,
) -> dict[str, Any]:
    """The `EngineConfig` (engine_host/boot/config.py) of every host, as CloudFormation tokens."""
    config: dict[str, Any] = {
        "org_id": org_id,
        "account_id": Aws.ACCOUNT_ID,
        "region": Aws.REGION,
        "vpc_id": vpc.vpc_id,
        "security_group_ids": [engine_sg.security_group_id],
        "kms_key_arn": data_key.key_arn,  # the cache's data key, and the key boot binds the host to
        "cache_device": c.CACHE_DEVICE,
        "data_bucket": data_bucket.bucket_name,
        "audit_bucket": audit_bucket.bucket_name,
        "control_table": table.table_name,
        "signing_key_arn": signing_key.key_arn,
        "checkpoint_key_arn": checkpoint_key.key_arn,
        "control_api_url": control_api_url,
        "listen_port": c.PGWIRE_PORT,
        "metrics_port": c.METRICS_PORT,
        "tls_secret_arn": tls_secret_arn,
        "drain_grace_seconds": c.DRAIN_GRACE_SECONDS,
    }
    # Only a fixed name: a reference to the group would make the configuration depend on the group, whose
    # launch template names the configuration (a cycle).
    if auto_scaling_group_name is not None:
        config["auto_scaling_group_name"] = auto_scaling_group_name
    if jwt_issuer is not None:
        config["jwt_issuer"] = jwt_issuer
    if jwt_audience is not None:
        config["jwt_audience"] = jwt_audience
    if otel_endpoint is not None:  # context hd:otelEndpoint (tracing.py): statement spans to that collector
        config["otel_endpoint"] = otel_endpoint
    return config


def allow_auto_scaling_to_encrypt_volumes(data_key: kms.Key) -> None:
    """Let Auto Scaling's service-linked role launch instances whose root volume the data key encrypts.

    Only EC2 may use these rights (`kms:ViaService`), and grants only for AWS resources. KMS refuses a key
    policy naming a role that does not exist yet: in a fresh account, create the service-linked role first
    (`aws iam create-service-linked-role --aws-service-name autoscaling.amazonaws.com`).
    """
    service_linked_role = iam.ArnPrincipal(
        f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:role/aws-service-role/autoscaling.amazonaws.com/"
        "AWSServiceRoleForAutoScaling")
    via_ec2 = {"kms:ViaService": f"ec2.{Aws.REGION}.amazonaws.com", "kms:CallerAccount": Aws.ACCOUNT_ID}
    data_key.add_to_resource_policy(iam.PolicyStatement(
        sid="AutoScalingEncryptsEngineVolumes",
        principals=[service_linked_role],
        actions=["kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo",
                 "kms:GenerateDataKeyWithoutPlaintext", "kms:DescribeKey"],
        resources=["*"],  # in a key policy, "*" is this key
        conditions={"StringEquals": via_ec2},
    ))
    data_key.add_to_resource_policy(iam.PolicyStatement(
        sid="AutoScalingGrantsForEngineVolumes",
        principals=[service_linked_role],
        actions=["kms:CreateGrant"],
        resources=["*"],
        conditions={"StringEquals": via_ec2, "Bool": {"kms:GrantIsForAWSResource": "true"}},
    ))


def engine_user_data(config_parameter: str, package_url: str, region: str) -> ec2.UserData:
    """Install the engine from its wheelhouse, then `hd engine boot` and `hd engine serve` under systemd.

    No internet: dnf reads the AL2023 repositories (S3) and the package comes from S3, both through the
    S3 gateway endpoint. Boot runs on every start (it reopens the cache, or formats a blank one).
    """
    hd = f"{c.ENGINE_INSTALL_DIR}/venv/bin/hd"
    args = f"--config-parameter {config_parameter} --region {region}"
    user_data = ec2.UserData.for_linux()
    user_data.add_commands(
        "set -euo pipefail",
        "dnf install -y python3.11 cryptsetup unzip",
        f"install -d -m 0755 {c.ENGINE_INSTALL_DIR}/wheels",
        f"aws s3 cp --region {region} {package_url} /tmp/hd-engine.zip",
        f"unzip -o -q /tmp/hd-engine.zip -d {c.ENGINE_INSTALL_DIR}/wheels && rm -f /tmp/hd-engine.zip",
        f"python3.11 -m venv {c.ENGINE_INSTALL_DIR}/venv",
        f"{c.ENGINE_INSTALL_DIR}/venv/bin/pip install --no-index --find-links {c.ENGINE_INSTALL_DIR}/wheels "
        "hardened-duck",
        "cat > /etc/systemd/system/hd-engine-boot.service <<'UNIT'\n"
        "[Unit]\nDescription=Hardened Duck: bind to this environment and unlock the NVMe cache\n"
        "After=network-online.target\nWants=network-online.target\n"
        f"[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart={hd} engine boot {args}\n"
        "[Install]\nWantedBy=multi-user.target\nUNIT",
        "cat > /etc/systemd/system/hd-engine.service <<'UNIT'\n"
        "[Unit]\nDescription=Hardened Duck engine host (pgwire 5439, metrics 9090)\n"
        "Requires=hd-engine-boot.service\nAfter=hd-engine-boot.service\n"
        f"[Service]\nExecStart={hd} engine serve {args}\nRestart=on-failure\nRestartSec=5\n"
        "NoNewPrivileges=yes\nProtectSystem=strict\nReadWritePaths=/var/lib/hd\nPrivateTmp=yes\n"
        f"ProtectHome=yes\nTimeoutStopSec={c.ENGINE_STOP_TIMEOUT_SECONDS}\n"
        "[Install]\nWantedBy=multi-user.target\nUNIT",
        "systemctl daemon-reload",
        "systemctl enable --now hd-engine-boot.service hd-engine.service",
    )
    return user_data


# Amazon Linux 2023 has glibc 2.34, so wheels for any manylinux up to 2_34 run there (DuckDB 2.x ships
# manylinux_2_27/2_28 wheels only, which a manylinux2014-only download would not find).
_HOST_PLATFORMS: Final = ("--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
                          "--platform", "manylinux_2_34_x86_64")


@jsii.implements(ILocalBundling)
class _Wheelhouse:
    """Local bundling (no Docker): the project's wheel plus x86_64 CPython 3.11 wheels of its dependencies."""

    def __init__(self, project_dir: Path) -> None:
        self._project = project_dir

    def try_bundle(self, output_dir: str, *, image: DockerImage, **_: Any) -> bool:
        pip = [sys.executable, "-m", "pip"]
        # Fixed argv from our own paths, never a shell: nothing untrusted reaches these commands.
        subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", output_dir, str(self._project)], check=True)  # noqa: S603
        wheel = next(Path(output_dir).glob("hardened_duck-*.whl"))
        with tempfile.TemporaryDirectory() as scratch:
            subprocess.run(  # noqa: S603
                [*pip, "download", "--dest", output_dir, "--only-binary=:all:", *_HOST_PLATFORMS,
                 "--python-version", "3.11", "--implementation", "cp", str(wheel)],
                check=True, cwd=scratch,
            )
        return True


def engine_wheelhouse(scope: Construct, construct_id: str) -> s3_assets.Asset:
    """The engine package as a zip of wheels; with context `hd:bundling=false` (tests) the source tree instead."""
    project = Path(__file__).resolve().parents[2]
    if str(scope.node.try_get_context(c.CONTEXT_BUNDLING)).lower() == "false":
        return s3_assets.Asset(scope, construct_id, path=str(project / "engine_host"))
    return s3_assets.Asset(
        scope, construct_id, path=str(project),
        exclude=[".venv", ".git", "cdk.out", "cdk", "tests", "bench", "**/__pycache__", "*.egg-info"],
        bundling=BundlingOptions(image=DockerImage.from_registry("local-bundling-only"), local=_Wheelhouse(project)),
    )

