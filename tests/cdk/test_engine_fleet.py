"""EngineFleet: IMDSv2, no public IP, the seed 6.2 instance role, TLS 1.3 NLB, PrivateLink, the wipe lifecycle hook.

One synthesized test stack (its own VPC, keys, buckets and table, imported so only our constructs are
judged) serves this module and test_wipe_hook / test_monitoring: `fleet_synth()` builds it once per session,
with the four cdk-nag packs on and bundling off.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, CfnParameter, Environment, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Template

from engine_host.boot.config import EngineConfig
from engine_host.engine.masking import _context as mask_key_context
from hd_cdk import constants
from hd_cdk.engine_fleet import ENGINE_ROLE_ACTIONS, EngineFleet, instance_type_for
from hd_cdk.monitoring import Monitoring
from hd_cdk.nag import PACKS, apply_packs
from hd_cdk.wipe_hook import WipeHook
from hd_core.wipe import DEFAULT_DEVICE

ACCOUNT = "123456789012"
REGION = "eu-west-1"
STACK = "FleetTest"
HEARTBEAT_ARN = f"arn:aws:execute-api:{REGION}:{ACCOUNT}:a1b2c3d4e5/prod/POST/v1/fleet/heartbeat"
CONTROL_API_URL = f"https://a1b2c3d4e5.execute-api.{REGION}.amazonaws.com/prod"
DESTRUCTIVE_ACTIONS = {"s3:deleteobject", "s3:deleteobjectversion", "s3:deletebucket", "kms:schedulekeydeletion",
                       "kms:disablekey", "dynamodb:deleteitem", "dynamodb:deletetable"}


def key_arn(name: str) -> str:
    """A key ARN of the shape KMS gives (a UUID key id)."""
    number = sum(map(ord, name)) % 10**12
    return f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-{number:012d}"


@dataclass(frozen=True)
class FleetSynth:
    """The synthesized test stack: its template, the cdk-nag validation report and the construct paths."""

    template: dict[str, Any]
    report: dict[str, Any]

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        return {name: res for name, res in self.template["Resources"].items() if res["Type"] == kind}

    def one(self, kind: str, path_part: str = "") -> tuple[str, dict[str, Any]]:
        found = [(name, res) for name, res in self.resources(kind).items() if path_part in name]
        assert len(found) == 1, f"expected one {kind} matching {path_part!r}, got {[n for n, _ in found]}"
        return found[0]


@lru_cache(maxsize=1)
def fleet_synth() -> FleetSynth:
    """Build and synthesize the stack once: EngineFleet, WipeHook and Monitoring, as a stack would compose them."""
    app = App(context={constants.CONTEXT_BUNDLING: "false"}, outdir=tempfile.mkdtemp(prefix="hd-fleet-cdk-"))
    apply_packs(app)
    stack = Stack(app, STACK, env=Environment(account=ACCOUNT, region=REGION))
    vpc = ec2.Vpc.from_vpc_attributes(
        stack, "Vpc", vpc_id="vpc-0123456789abcdef0", availability_zones=[f"{REGION}a", f"{REGION}b"],
        isolated_subnet_ids=["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2"], vpc_cidr_block="10.42.0.0/16")
    isolated = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
    engine_sg = ec2.SecurityGroup.from_security_group_id(stack, "EngineSg", "sg-0123456789abcdef0")
    table = dynamodb.Table.from_table_arn(stack, "Table", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/hd-control")
    data_bucket = s3.Bucket.from_bucket_name(stack, "DataBucket", "hd-data-bucket")
    audit_bucket = s3.Bucket.from_bucket_name(stack, "AuditBucket", "hd-audit-bucket")
    data_key = kms.Key(stack, "DataKey", enable_key_rotation=True)  # created: the Auto Scaling key grant is checked
    notification_key = kms.Key(stack, "NotificationKey", enable_key_rotation=True)
    signing_key = kms.Key.from_key_arn(stack, "SigningKey", key_arn("signing"))
    checkpoint_key = kms.Key.from_key_arn(stack, "CheckpointKey", key_arn("checkpoint"))
    audit_key = kms.Key.from_key_arn(stack, "AuditKey", key_arn("audit"))
    tier = CfnParameter(stack, "Tier", default=constants.DEFAULT_TIER)
    principals = CfnParameter(stack, "AllowedPrincipals", type="CommaDelimitedList")
    tls_secret = CfnParameter(stack, "TlsCertificateBundleArn")
    fleet = EngineFleet(
        stack, "Engine", vpc=vpc, subnets=isolated, engine_sg=engine_sg, data_bucket=data_bucket,
        audit_bucket=audit_bucket, table=table, data_key=data_key, signing_key=signing_key,
        checkpoint_key=checkpoint_key, audit_key=audit_key, tier=tier.value_as_string, min_capacity=1, max_capacity=4,
        tls_secret_arn=tls_secret.value_as_string, allowed_principals=principals.value_as_list,
        control_api_url=CONTROL_API_URL, heartbeat_path_arn=HEARTBEAT_ARN, org_id="acme",
        access_logs_bucket=s3.Bucket.from_bucket_name(stack, "AccessLogs", "hd-access-logs"),
        client_peers=[ec2.SecurityGroup.from_security_group_id(stack, "AgentSg", "sg-0fedcba9876543210")],
    )
    wipe = WipeHook(
        stack, "Wipe", asg_name=fleet.asg.auto_scaling_group_name, lifecycle_hook_name=fleet.lifecycle_hook_name,
        device=constants.CACHE_DEVICE, table=table, audit_bucket=audit_bucket, data_key=data_key,
        signing_key=signing_key, checkpoint_key=checkpoint_key, audit_key=audit_key,
        logs_key=kms.Key.from_key_arn(stack, "LogsKey", key_arn("logs")), notification_key=notification_key,
        vpc=vpc, subnets=isolated,
        security_group=ec2.SecurityGroup.from_security_group_id(stack, "LambdaSg", "sg-0aaaabbbbccccdddd"),
    )
    api = apigw.RestApi.from_rest_api_attributes(stack, "Api", rest_api_id="a1b2c3d4e5", root_resource_id="r00t",
                                               rest_api_name="hd-control-api")
    auth = lambda_.Function.from_function_attributes(
        stack, "AuthFunction", function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:hd-auth",
        same_environment=True)
    Monitoring(stack, "Monitoring", nlb=fleet.nlb, target_group=fleet.target_group, asg=fleet.asg,
               functions={"auth": auth, "wipe": wipe.function}, api=api, api_stage_name="prod",
               notification_key=notification_key, alarm_topic=wipe.alarm_topic,
               extra_metrics={"WipeFailed": wipe.wipe_failed_alarm.metric},
               dead_letter_queues={"wipe": wipe.dead_letter_queue})
    assembly = app.synth()
    report = json.loads((Path(assembly.directory) / "validation-report.json").read_text(encoding="utf-8"))
    return FleetSynth(template=assembly.get_stack_by_name(STACK).template, report=report)


@pytest.fixture(scope="module")
def synth() -> FleetSynth:
    return fleet_synth()


# --- template helpers ------------------------------------------------------------------------------------


def ref(name: str) -> dict[str, str]:
    return {"Ref": name}


def statements_of(policy_document: dict[str, Any]) -> list[dict[str, Any]]:
    return list(policy_document["Statement"])


def actions_of(statement: dict[str, Any]) -> list[str]:
    actions = statement.get("Action", [])
    return [actions] if isinstance(actions, str) else list(actions)


def role_statements(synth: FleetSynth, role_path: str) -> list[dict[str, Any]]:
    """Every identity-policy statement that applies to the role: inline, and customer-managed policies on it."""
    role_name, role = synth.one("AWS::IAM::Role", role_path)
    found = [s for p in role["Properties"].get("Policies", []) for s in statements_of(p["PolicyDocument"])]
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for policy in synth.resources(kind).values():
            if ref(role_name) in policy["Properties"].get("Roles", []):
                found += statements_of(policy["Properties"]["PolicyDocument"])
    return found


def render(value: Any, values: dict[str, str], *, strict: bool = True) -> str:
    """A CloudFormation string expression with Refs and GetAtts replaced by `values` (keyed by name or name.Attr);
    unless `strict`, names not in `values` become `<name>`."""
    if isinstance(value, str):
        return value
    (function, argument), = value.items()
    if function in ("Ref", "Fn::GetAtt"):
        name = argument if function == "Ref" else f"{argument[0]}.{argument[1]}"
        return values[name] if strict or name in values else f"<{name}>"
    if function == "Fn::Join":
        return argument[0].join(render(part, values, strict=strict) for part in argument[1])
    raise AssertionError(f"unexpected intrinsic {function}")


TLS_BUNDLE_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:hd/engine-tls-AbCdEf"


def engine_config(synth: FleetSynth) -> dict[str, Any]:
    """The SSM parameter's JSON as a deployed host would read it."""
    _, parameter = synth.one("AWS::SSM::Parameter", "EngineConfig")
    data_key_name, _ = synth.one("AWS::KMS::Key", "DataKey")
    text = render(parameter["Properties"]["Value"], {
        "AWS::AccountId": ACCOUNT, "AWS::Region": REGION, f"{data_key_name}.Arn": key_arn("data"),
        "TlsCertificateBundleArn": TLS_BUNDLE_ARN,
    })
    config: dict[str, Any] = json.loads(text)
    return config


# --- the launch template ---------------------------------------------------------------------------------


def launch_data(synth: FleetSynth) -> dict[str, Any]:
    _, template = synth.one("AWS::EC2::LaunchTemplate")
    data: dict[str, Any] = template["Properties"]["LaunchTemplateData"]
    return data


def test_launch_template_requires_imdsv2_with_a_hop_limit_of_one(synth: FleetSynth) -> None:
    assert launch_data(synth)["MetadataOptions"] == {
        "HttpEndpoint": "enabled", "HttpTokens": "required", "HttpPutResponseHopLimit": 1}


def test_instances_get_no_public_ip_and_only_the_engine_security_group(synth: FleetSynth) -> None:
    interfaces = launch_data(synth)["NetworkInterfaces"]
    assert interfaces == [{"AssociatePublicIpAddress": False, "DeviceIndex": 0, "Groups": ["sg-0123456789abcdef0"]}]


def test_root_volume_is_encrypted_gp3_with_the_data_key_and_monitoring_is_detailed(synth: FleetSynth) -> None:
    data = launch_data(synth)
    data_key_name, _ = synth.one("AWS::KMS::Key", "DataKey")
    (root,) = data["BlockDeviceMappings"]
    assert root["Ebs"] == {"DeleteOnTermination": True, "Encrypted": True, "VolumeType": "gp3",
                           "VolumeSize": constants.ROOT_VOLUME_GIB, "KmsKeyId": {"Fn::GetAtt": [data_key_name, "Arn"]}}
    assert data["Monitoring"] == {"Enabled": True}


def test_image_is_amazon_linux_2023_for_x86_64(synth: FleetSynth) -> None:
    image_parameter = launch_data(synth)["ImageId"]["Ref"]
    default = synth.template["Parameters"][image_parameter]["Default"]
    assert default.startswith("/aws/service/ami-amazon-linux-latest/al2023-ami-") and default.endswith("-x86_64")


def evaluate_instance_type(expression: Any, conditions: dict[str, Any], tier: str) -> str:
    """Follow the Fn::If chain the way CloudFormation would for a Tier parameter value."""
    while isinstance(expression, dict):
        condition, when_true, when_false = expression["Fn::If"]
        left, right = conditions[condition]["Fn::Equals"]
        compared = tier if left == {"Ref": "Tier"} else left
        expression = when_true if compared == right else when_false
    return str(expression)


def test_tier_parameter_selects_the_r6id_size_of_each_compute_tier(synth: FleetSynth) -> None:
    expression = launch_data(synth)["InstanceType"]
    chosen = {tier: evaluate_instance_type(expression, synth.template["Conditions"], tier)
              for tier in constants.TIER_INSTANCE_TYPES}
    assert chosen == {"starter": "r6id.xlarge", "standard": "r6id.2xlarge", "performance": "r6id.4xlarge",
                      "high_memory": "r6id.8xlarge"}


def test_an_unknown_tier_parameter_fails_the_deployment_by_rule(synth: FleetSynth) -> None:
    (rule,) = [rule for name, rule in synth.template["Rules"].items() if name.startswith("EngineKnownTier")]
    (assertion,) = rule["Assertions"]
    assert assertion["Assert"] == {"Fn::Contains": [list(constants.TIER_INSTANCE_TYPES), {"Ref": "Tier"}]}


def test_a_concrete_tier_is_its_instance_type_and_an_unknown_one_is_refused() -> None:
    stack = Stack(App())
    assert instance_type_for(stack, "performance") == "r6id.4xlarge"
    with pytest.raises(ValueError, match="unknown compute tier 'giant'"):
        instance_type_for(stack, "giant")


def test_user_data_installs_the_engine_then_boots_and_serves_with_the_config_parameter(synth: FleetSynth) -> None:
    parameter_name, _ = synth.one("AWS::SSM::Parameter", "EngineConfig")
    script = render(launch_data(synth)["UserData"]["Fn::Base64"], {parameter_name: "/hardened-duck/x/engine-config"})
    args = f"--config-parameter /hardened-duck/x/engine-config --region {REGION}"
    assert "pip install --no-index --find-links /opt/hardened-duck/wheels hardened-duck" in script
    assert f"ExecStart=/opt/hardened-duck/venv/bin/hd engine boot {args}\n" in script
    assert f"ExecStart=/opt/hardened-duck/venv/bin/hd engine serve {args}\n" in script
    assert "Requires=hd-engine-boot.service\nAfter=hd-engine-boot.service" in script
    assert script.rstrip().endswith("systemctl enable --now hd-engine-boot.service hd-engine.service")


# --- the configuration parameter -------------------------------------------------------------------------


def test_config_parameter_is_a_valid_engine_config_built_from_the_resources(synth: FleetSynth) -> None:
    config = engine_config(synth)
    required = {name for name, field in EngineConfig.model_fields.items() if field.is_required()}
    assert required <= set(config) <= set(EngineConfig.model_fields)
    parsed = EngineConfig.model_validate(config)
    assert parsed.kms_key_arn == key_arn("data")  # the data key, from the key resource
    assert parsed.signing_key_arn == key_arn("signing") and parsed.checkpoint_key_arn == key_arn("checkpoint")
    assert (parsed.data_bucket, parsed.audit_bucket, parsed.control_table) == (
        "hd-data-bucket", "hd-audit-bucket", "hd-control")
    assert parsed.security_group_ids == ["sg-0123456789abcdef0"] and parsed.vpc_id == "vpc-0123456789abcdef0"
    assert (parsed.account_id, parsed.region, parsed.org_id) == (ACCOUNT, REGION, "acme")
    assert parsed.control_api_url == CONTROL_API_URL
    assert parsed.tls_secret_arn == TLS_BUNDLE_ARN
    assert parsed.cache_device == constants.CACHE_DEVICE == DEFAULT_DEVICE


def test_config_parameter_is_named_per_stack_as_the_readme_says(synth: FleetSynth) -> None:
    _, parameter = synth.one("AWS::SSM::Parameter", "EngineConfig")
    assert parameter["Properties"]["Name"] == f"/hardened-duck/{STACK}/engine-config"
    assert parameter["Properties"]["Type"] == "String"


# --- the instance role -----------------------------------------------------------------------------------


def test_instance_role_holds_exactly_the_allowed_actions(synth: FleetSynth) -> None:
    statements = role_statements(synth, "EngineInstanceRole")
    assert all(s["Effect"] == "Allow" for s in statements)
    assert {a for s in statements for a in actions_of(s)} == ENGINE_ROLE_ACTIONS
    _, role = synth.one("AWS::IAM::Role", "EngineInstanceRole")
    (managed,) = role["Properties"]["ManagedPolicyArns"]
    assert render(managed, {"AWS::Partition": "aws"}) == "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"


def resources_for(statements: list[dict[str, Any]], action: str) -> list[str]:
    """The resources `action` is allowed on, rendered (other stack resources appear as `<LogicalId...>`)."""
    found: list[str] = []
    for statement in statements:
        if action in actions_of(statement):
            resources = statement["Resource"]
            found += [render(r, {"AWS::Partition": "aws"}, strict=False)
                      for r in (resources if isinstance(resources, list) else [resources])]
    return found


def test_instance_role_grants_each_action_on_its_own_resource_only(synth: FleetSynth) -> None:
    statements = role_statements(synth, "EngineInstanceRole")
    parameter_name, _ = synth.one("AWS::SSM::Parameter", "EngineConfig")
    assert resources_for(statements, "s3:PutObject") == ["arn:aws:s3:::hd-audit-bucket/audit/queries/*",
                                                         "arn:aws:s3:::hd-audit-bucket/audit/query-checkpoints/*"]
    assert resources_for(statements, "s3:ListBucket") == ["arn:aws:s3:::hd-data-bucket", "arn:aws:s3:::hd-audit-bucket"]
    listing = next(s for s in statements if "s3:ListBucket" in actions_of(s) and "Condition" in s)
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["audit/queries/*"]}}
    assert resources_for(statements, "kms:Sign") == [key_arn("checkpoint")]
    assert resources_for(statements, "execute-api:Invoke") == [HEARTBEAT_ARN]
    assert resources_for(statements, "kms:GetPublicKey") == [key_arn("signing")]
    table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/hd-control"
    assert resources_for(statements, "dynamodb:PutItem") == [table]
    assert resources_for(statements, "dynamodb:Query") == [table, f"{table}/index/*"]
    assert resources_for(statements, "ssm:GetParameter") == [
        f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter<{parameter_name}>"]
    data_key_name, _ = synth.one("AWS::KMS::Key", "DataKey")
    assert resources_for(statements, "kms:DescribeKey") == [f"<{data_key_name}.Arn>"]
    # "*" only where IAM has no resource: PutMetricData, fenced by the namespace condition.
    assert {a for s in statements for a in actions_of(s) if "*" in resources_for([s], a)} == {
        "cloudwatch:PutMetricData"}
    (metrics,) = [s for s in statements if "cloudwatch:PutMetricData" in actions_of(s)]
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": "HardenedDuck/Engine"}}
    (protection,) = resources_for(statements, "autoscaling:SetInstanceProtection")
    group, _ = synth.one("AWS::AutoScaling::AutoScalingGroup")
    assert protection == f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/<{group}>"


def test_a_host_may_open_with_the_data_key_only_its_own_mask_keys_and_its_orgs_forget_subjects(
        synth: FleetSynth) -> None:
    """The control plane seals TOTP seeds, webhook secrets and erasure subjects under the data key with a purpose of
    their own; a host uses the key for its cache (hd:purpose), SSE-KMS reads and its hash-mask keys, and may only
    decrypt (never generate under) the forget subjects of its own organisation's requests (GDPR erasure of its
    writable tables), never the erasure HMAC key (owner erasure-hmac-key)."""
    statements = role_statements(synth, "EngineInstanceRole")
    data_key_name, _ = synth.one("AWS::KMS::Key", "DataKey")
    data_key = f"<{data_key_name}.Arn>"
    opening = [s for s in statements if {"kms:Decrypt", "kms:GenerateDataKey"} & set(actions_of(s))
               and data_key in resources_for([s], actions_of(s)[0])]
    ((statement,), (forget,)) = ([s for s in opening if "kms:GenerateDataKey" in actions_of(s)],
                                 [s for s in opening if "kms:GenerateDataKey" not in actions_of(s)])
    assert sorted(actions_of(statement)) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert statement["Condition"] == {"StringEqualsIfExists": {"kms:EncryptionContext:purpose": "hd-mask-hash"}}
    assert mask_key_context("live")["purpose"] == constants.HOST_DATA_KEY_PURPOSE
    assert actions_of(forget) == ["kms:Decrypt"]
    assert forget["Condition"] == {"StringEquals": {"kms:EncryptionContext:purpose": "forget-subject"},
                                   "StringLike": {"kms:EncryptionContext:owner": "acme/fgt_*"}}


def test_no_role_in_the_template_has_a_wildcard_or_destructive_action(synth: FleetSynth) -> None:
    for role_name in synth.resources("AWS::IAM::Role"):
        for statement in role_statements(synth, role_name):
            for action in actions_of(statement):
                assert "*" not in action, f"{role_name}: wildcard action {action}"
                assert action.lower() not in DESTRUCTIVE_ACTIONS, f"{role_name}: destructive action {action}"


def test_auto_scaling_may_use_the_data_key_only_through_ec2_for_this_account(synth: FleetSynth) -> None:
    _, key = synth.one("AWS::KMS::Key", "DataKey")
    ours = [s for s in key["Properties"]["KeyPolicy"]["Statement"] if s.get("Sid", "").startswith("AutoScaling")]
    assert len(ours) == 2
    for statement in ours:
        assert "AWSServiceRoleForAutoScaling" in json.dumps(statement["Principal"])
        assert set(statement["Condition"]["StringEquals"]) == {"kms:ViaService", "kms:CallerAccount"}
        assert not any("*" in action for action in actions_of(statement))
    (grant,) = [s for s in ours if actions_of(s) == ["kms:CreateGrant"]]
    assert grant["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}


# --- Auto Scaling and the wipe lifecycle hook ------------------------------------------------------------


def test_fleet_runs_in_the_isolated_subnets_within_its_capacity(synth: FleetSynth) -> None:
    _, group = synth.one("AWS::AutoScaling::AutoScalingGroup")
    props = group["Properties"]
    assert (props["MinSize"], props["MaxSize"]) == ("1", "4")
    assert props["VPCZoneIdentifier"] == ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2"]
    assert props["HealthCheckType"] == "ELB"


def test_termination_lifecycle_hook_holds_each_instance_for_the_wipe(synth: FleetSynth) -> None:
    group_name, _ = synth.one("AWS::AutoScaling::AutoScalingGroup")
    Template.from_json(synth.template).has_resource_properties("AWS::AutoScaling::LifecycleHook", {
        "AutoScalingGroupName": ref(group_name),
        "LifecycleHookName": constants.WIPE_LIFECYCLE_HOOK_NAME,
        "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
        "HeartbeatTimeout": constants.WIPE_HEARTBEAT_TIMEOUT_SECONDS,
        "DefaultResult": "ABANDON",
        # hd_core.wipe reads the heartbeat timeout from here.
        "NotificationMetadata": json.dumps({"heartbeat_timeout_seconds": constants.WIPE_HEARTBEAT_TIMEOUT_SECONDS},
                                           separators=(",", ":")),
    })


# --- load balancer and PrivateLink -----------------------------------------------------------------------


def test_nlb_is_internal_in_the_isolated_subnets_and_logs_access(synth: FleetSynth) -> None:
    _, nlb = synth.one("AWS::ElasticLoadBalancingV2::LoadBalancer")
    props = nlb["Properties"]
    assert (props["Type"], props["Scheme"]) == ("network", "internal")
    assert props["Subnets"] == ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2"]
    attributes = {a["Key"]: a["Value"] for a in props["LoadBalancerAttributes"]}
    assert attributes["access_logs.s3.enabled"] == "true"
    assert attributes["access_logs.s3.bucket"] == "hd-access-logs"
    assert attributes["deletion_protection.enabled"] == "true"


def test_the_listener_passes_pgwire_through_so_the_engine_answers_sslrequest_and_tls_13(synth: FleetSynth) -> None:
    """A TLS listener cannot answer Postgres' plaintext SSLRequest; the engine offers TLS 1.3 only itself."""
    _, listener = synth.one("AWS::ElasticLoadBalancingV2::Listener")
    props = listener["Properties"]
    assert (props["Port"], props["Protocol"]) == (constants.PGWIRE_PORT, "TCP")
    assert "Certificates" not in props and "SslPolicy" not in props


def test_target_group_forwards_5439_and_checks_readiness_on_the_metrics_port(synth: FleetSynth) -> None:
    _, group = synth.one("AWS::ElasticLoadBalancingV2::TargetGroup")
    props = group["Properties"]
    assert (props["Port"], props["Protocol"], props["TargetType"]) == (constants.PGWIRE_PORT, "TCP", "instance")
    assert (props["HealthCheckProtocol"], props["HealthCheckPort"], props["HealthCheckPath"]) == (
        "HTTP", str(constants.METRICS_PORT), "/readyz")


def test_the_hosts_read_their_certificate_from_the_one_secret_named_in_their_config(synth: FleetSynth) -> None:
    statements = [st for _, policy in synth.resources("AWS::IAM::ManagedPolicy").items()
                  for st in policy["Properties"]["PolicyDocument"]["Statement"]
                  if "secretsmanager:GetSecretValue" in (st["Action"] if isinstance(st["Action"], list)
                                                         else [st["Action"]])]
    assert [st["Resource"] for st in statements] == [ref("TlsCertificateBundleArn")]
    assert engine_config(synth)["tls_secret_arn"] == TLS_BUNDLE_ARN


def test_only_the_nlb_reaches_the_engine_and_only_on_5439_and_9090(synth: FleetSynth) -> None:
    nlb_sg, group = synth.one("AWS::EC2::SecurityGroup", "NlbSecurityGroup")
    assert group["Properties"].get("SecurityGroupEgress", []) == []  # no allow-all egress
    ingress = [r["Properties"] for r in synth.resources("AWS::EC2::SecurityGroupIngress").values()]
    to_engine = sorted(r["FromPort"] for r in ingress if r["GroupId"] == "sg-0123456789abcdef0")
    assert to_engine == [constants.PGWIRE_PORT, constants.METRICS_PORT]
    assert all(r["SourceSecurityGroupId"] == {"Fn::GetAtt": [nlb_sg, "GroupId"]} for r in ingress
               if r["GroupId"] == "sg-0123456789abcdef0")
    to_nlb = [r for r in ingress if r["GroupId"] == {"Fn::GetAtt": [nlb_sg, "GroupId"]}]
    assert [(r["FromPort"], r["SourceSecurityGroupId"]) for r in to_nlb] == [
        (constants.PGWIRE_PORT, "sg-0fedcba9876543210")]
    egress = [r["Properties"] for r in synth.resources("AWS::EC2::SecurityGroupEgress").values()]
    assert sorted((r["FromPort"], r["DestinationSecurityGroupId"]) for r in egress) == [
        (constants.PGWIRE_PORT, "sg-0123456789abcdef0"), (constants.METRICS_PORT, "sg-0123456789abcdef0")]


def test_endpoint_service_requires_acceptance_and_admits_the_allowed_principals(synth: FleetSynth) -> None:
    nlb_name, _ = synth.one("AWS::ElasticLoadBalancingV2::LoadBalancer")
    service_name, service = synth.one("AWS::EC2::VPCEndpointService")
    assert service["Properties"] == {"AcceptanceRequired": True, "NetworkLoadBalancerArns": [ref(nlb_name)]}
    _, permissions = synth.one("AWS::EC2::VPCEndpointServicePermissions")
    assert permissions["Properties"] == {"ServiceId": ref(service_name), "AllowedPrincipals": ref("AllowedPrincipals")}


# --- compliance packs ------------------------------------------------------------------------------------


def suppressed(synth: FleetSynth) -> list[dict[str, Any]]:
    return [v for plugin in synth.report["pluginReports"] for v in plugin.get("suppressedViolations", [])]


def test_cdk_nag_packs_pass_with_every_remaining_finding_acknowledged_with_a_reason(synth: FleetSynth) -> None:
    for plugin in synth.report["pluginReports"]:
        assert plugin["violations"] == [], f"{plugin['pluginName']}: unacknowledged findings"
        assert plugin["conclusion"] == "success"
    per_pack = {pack: 0 for pack in PACKS}
    for finding in suppressed(synth):
        per_pack[finding["ruleName"].split("-", 1)[0]] += 1
        assert len(finding["reason"]) >= 40, finding["ruleName"]
    print(f"cdk-nag acknowledgments per pack (fleet, wipe hook, monitoring): {per_pack}")
    assert per_pack["AwsSolutions"] > 0


def test_each_acknowledgment_sits_on_the_resource_it_covers(synth: FleetSynth) -> None:
    for finding in suppressed(synth):
        (violating,) = finding["violatingConstructs"]
        assert violating["constructPath"].startswith(finding["acknowledgedAt"] + "/"), finding["ruleName"]


def test_instance_role_wildcards_are_acknowledged_one_by_one(synth: FleetSynth) -> None:
    engine_findings = {f["ruleName"] for f in suppressed(synth) if f["acknowledgedAt"].startswith(f"{STACK}/Engine/")}
    assert {re.sub(r"\[.*", "", name) for name in engine_findings} == {
        "AwsSolutions-IAM4", "AwsSolutions-IAM5", "AwsSolutions-AS3", "HIPAA.Security-ELBv2ACMCertificateRequired",
        "NIST.800.53.R5-ELBv2ACMCertificateRequired", "PCI.DSS.321-ELBv2ACMCertificateRequired"}
    assert "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::hd-data-bucket/*]" in engine_findings


def test_cfn_lint_finds_no_errors_in_the_template(synth: FleetSynth) -> None:
    from cfnlint.api import ManualArgs, lint

    matches = lint(json.dumps(synth.template), config=ManualArgs(regions=[REGION]))
    assert [str(m) for m in matches if m.rule.id.startswith("E")] == []


# --- scaling, drain and Spot (issue 21) --------------------------------------------------------------------


def test_the_fleet_tracks_cpu_and_active_connections_per_host(synth: FleetSynth) -> None:
    group, _ = synth.one("AWS::AutoScaling::AutoScalingGroup")
    policies = [p["Properties"] for p in synth.resources("AWS::AutoScaling::ScalingPolicy").values()]
    assert all(p["PolicyType"] == "TargetTrackingScaling" and p["AutoScalingGroupName"] == ref(group)
               for p in policies) and len(policies) == 2
    (cpu,) = [p for p in policies if "PredefinedMetricSpecification" in p["TargetTrackingConfiguration"]]
    assert cpu["TargetTrackingConfiguration"]["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "ASGAverageCPUUtilization"}
    assert cpu["TargetTrackingConfiguration"]["TargetValue"] == constants.CPU_TARGET_PERCENT
    (connections,) = [p for p in policies if "CustomizedMetricSpecification" in p["TargetTrackingConfiguration"]]
    tracking = connections["TargetTrackingConfiguration"]
    assert tracking["CustomizedMetricSpecification"] == {
        "MetricName": "ActiveConnections", "Namespace": "HardenedDuck/Engine", "Statistic": "Average",
        "Dimensions": [{"Name": "AutoScalingGroupName", "Value": ref(group)}]}
    # The tier's concurrent statements, as numbers in every branch of the tier parameter's Fn::If chain.
    targets, value = [], tracking["TargetValue"]
    while isinstance(value, dict):
        _, chosen, value = value["Fn::If"]
        targets.append(chosen)
    assert [*targets, value] == list(constants.TIER_CONNECTIONS_TARGET.values())


def test_hosts_know_their_drain_grace_and_systemd_waits_for_the_drain(synth: FleetSynth) -> None:
    assert engine_config(synth)["drain_grace_seconds"] == constants.DRAIN_GRACE_SECONDS
    text = json.dumps(launch_data(synth)["UserData"])
    assert f"TimeoutStopSec={constants.ENGINE_STOP_TIMEOUT_SECONDS}" in text
    assert constants.ENGINE_STOP_TIMEOUT_SECONDS > constants.DRAIN_GRACE_SECONDS


def test_a_named_group_is_in_the_hosts_configuration() -> None:
    from hd_cdk.engine_fleet import _engine_config

    stack = Stack(App())
    vpc = ec2.Vpc.from_vpc_attributes(stack, "Vpc", vpc_id="vpc-0123456789abcdef0", availability_zones=["a"],
                                      isolated_subnet_ids=["subnet-0aaaaaaaaaaaaaaa1"])
    config = _engine_config(
        org_id="acme", vpc=vpc, engine_sg=ec2.SecurityGroup.from_security_group_id(stack, "Sg", "sg-0123456789abcdef0"),
        data_key=kms.Key.from_key_arn(stack, "K", key_arn("data")),
        data_bucket=s3.Bucket.from_bucket_name(stack, "D", "hd-data"),
        audit_bucket=s3.Bucket.from_bucket_name(stack, "A", "hd-audit"),
        table=dynamodb.Table.from_table_name(stack, "T", "hd-control"),
        signing_key=kms.Key.from_key_arn(stack, "S", key_arn("signing")),
        checkpoint_key=kms.Key.from_key_arn(stack, "C", key_arn("checkpoint")), control_api_url=CONTROL_API_URL,
        jwt_issuer=None, jwt_audience=None, tls_secret_arn=TLS_BUNDLE_ARN, auto_scaling_group_name="Hd-engine-fleet")
    assert config["auto_scaling_group_name"] == "Hd-engine-fleet"


def _spot_stack(context: dict[str, Any]) -> dict[str, Any]:
    app = App(context={constants.CONTEXT_BUNDLING: "false", **context})
    stack = Stack(app, "SpotTest", env=Environment(account=ACCOUNT, region=REGION))
    vpc = ec2.Vpc.from_vpc_attributes(
        stack, "Vpc", vpc_id="vpc-0123456789abcdef0", availability_zones=[f"{REGION}a", f"{REGION}b"],
        isolated_subnet_ids=["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2"], vpc_cidr_block="10.42.0.0/16")
    EngineFleet(
        stack, "Engine", vpc=vpc, subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
        engine_sg=ec2.SecurityGroup.from_security_group_id(stack, "EngineSg", "sg-0123456789abcdef0"),
        data_bucket=s3.Bucket.from_bucket_name(stack, "DataBucket", "hd-data-bucket"),
        audit_bucket=s3.Bucket.from_bucket_name(stack, "AuditBucket", "hd-audit-bucket"),
        table=dynamodb.Table.from_table_arn(stack, "Table", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/hd-control"),
        data_key=kms.Key(stack, "DataKey"), signing_key=kms.Key.from_key_arn(stack, "S", key_arn("signing")),
        checkpoint_key=kms.Key.from_key_arn(stack, "C", key_arn("checkpoint")),
        audit_key=kms.Key.from_key_arn(stack, "A", key_arn("audit")), tier="starter", min_capacity=1,
        max_capacity=2, tls_secret_arn=TLS_BUNDLE_ARN, allowed_principals=[f"arn:aws:iam::{ACCOUNT}:root"],
        control_api_url=CONTROL_API_URL, heartbeat_path_arn=HEARTBEAT_ARN, org_id="acme",
        access_logs_bucket=s3.Bucket.from_bucket_name(stack, "AccessLogs", "hd-access-logs"))
    return dict(Template.from_stack(stack).to_json())


def test_spot_is_off_by_default_and_the_group_launches_on_demand_from_the_template() -> None:
    template = _spot_stack({})
    (group,) = [r["Properties"] for r in template["Resources"].values()
                if r["Type"] == "AWS::AutoScaling::AutoScalingGroup"]
    assert "MixedInstancesPolicy" not in group and "LaunchTemplate" in group
    (policy,) = [r["Properties"] for r in template["Resources"].values()
                 if r["Type"] == "AWS::AutoScaling::ScalingPolicy" and "Customized" in json.dumps(r)]
    assert policy["TargetTrackingConfiguration"]["TargetValue"] == 25  # a concrete tier: its own number


def test_spot_for_a_non_production_environment_uses_spot_only_with_capacity_rebalance() -> None:
    template = _spot_stack({constants.CONTEXT_SPOT: "true", constants.CONTEXT_ENVIRONMENT: "staging"})
    (group,) = [r["Properties"] for r in template["Resources"].values()
                if r["Type"] == "AWS::AutoScaling::AutoScalingGroup"]
    distribution = group["MixedInstancesPolicy"]["InstancesDistribution"]
    assert (distribution["OnDemandBaseCapacity"], distribution["OnDemandPercentageAboveBaseCapacity"]) == (0, 0)
    assert distribution["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert group["CapacityRebalance"] is True


@pytest.mark.parametrize("environment", [None, "production", "prod", ""])
def test_spot_is_refused_for_production_or_an_unnamed_environment(environment: str | None) -> None:
    context = {constants.CONTEXT_SPOT: "true", **({constants.CONTEXT_ENVIRONMENT: environment} if environment else {})}
    with pytest.raises(ValueError, match="production stays on-demand"):
        _spot_stack(context)
