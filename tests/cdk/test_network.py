"""Network: private isolated subnets only, endpoints, flow logs, and security groups with exact rules."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk import App, CfnParameter, Environment, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk.assertions import Match, Template

from hd_cdk import constants
from hd_cdk.network import INTERFACE_ENDPOINTS, Network, validated_cidrs

S3_PL = "pl-11111111"
DYNAMODB_PL = "pl-22222222"
SG_IDS = ("EngineSg", "AgentSg", "MonitoringSg", "EndpointSg", "LambdaSg")


@pytest.fixture(scope="module")
def network_template() -> dict[str, Any]:
    """A stack holding only Network, with two approved CIDRs and a prefix-list parameter (no nag: fast)."""
    app = App(context={"hd:bundling": False})
    stack = Stack(app, "NetworkOnly", env=Environment(account="123456789012", region="eu-west-1"))
    network = Network(
        stack,
        "Network",
        approved_cidrs=["10.20.0.0/16", "192.168.7.0/24"],
        approved_prefix_list_id="pl-0123456789abcdef0",
        flow_log_key=kms.Key(stack, "LogsKey", enable_key_rotation=True),
        s3_prefix_list_id=S3_PL,
        dynamodb_prefix_list_id=DYNAMODB_PL,
    )
    # What the engine fleet does for the NLB in front of the engines.
    network.allow_pgwire_clients(ec2.SecurityGroup(stack, "NlbSg", vpc=network.vpc, allow_all_outbound=False))
    return dict(Template.from_stack(stack).to_json())


def _logical_id(template: dict[str, Any], prefix: str, type_: str) -> str:
    (found,) = [k for k, r in template["Resources"].items() if r["Type"] == type_ and k.startswith(prefix)]
    return found


def _peer(rule: dict[str, Any]) -> str:
    """The other side of a rule: a security group's logical id, a CIDR or a prefix list."""
    for key in ("SourceSecurityGroupId", "DestinationSecurityGroupId"):
        if key in rule:
            return "sg:" + rule[key]["Fn::GetAtt"][0]
    for key in ("CidrIp", "SourcePrefixListId", "DestinationPrefixListId"):
        if key in rule:
            return f"{key}:{rule[key]}"
    raise AssertionError(f"rule without a peer: {rule}")


def _rules(template: dict[str, Any], group: str, direction: str) -> set[tuple[str, int, int, str]]:
    """Every (protocol, from, to, peer) rule of `group`, inline in the group or as separate resources."""
    resources = template["Resources"]
    inline_key = "SecurityGroupIngress" if direction == "ingress" else "SecurityGroupEgress"
    rules = list(resources[group]["Properties"].get(inline_key, []))
    rule_type = "AWS::EC2::SecurityGroupIngress" if direction == "ingress" else "AWS::EC2::SecurityGroupEgress"
    rules += [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == rule_type and r["Properties"]["GroupId"] == {"Fn::GetAtt": [group, "GroupId"]}
    ]
    return {(r["IpProtocol"], r.get("FromPort", -1), r.get("ToPort", -1), _peer(r)) for r in rules}


def test_vpc_has_no_internet_gateway_nat_or_elastic_ip(network_template: dict[str, Any]) -> None:
    template = Template.from_json(network_template)
    for forbidden in ("AWS::EC2::InternetGateway", "AWS::EC2::NatGateway", "AWS::EC2::EIP",
                      "AWS::EC2::EgressOnlyInternetGateway", "AWS::EC2::VPCGatewayAttachment", "AWS::EC2::Route"):
        template.resource_count_is(forbidden, 0)


def test_vpc_has_two_isolated_subnets_in_fixed_zones_without_public_ips(network_template: dict[str, Any]) -> None:
    subnets = [r["Properties"] for r in network_template["Resources"].values() if r["Type"] == "AWS::EC2::Subnet"]
    assert sorted(s["AvailabilityZone"] for s in subnets) == ["eu-west-1a", "eu-west-1b"]
    assert all(s.get("MapPublicIpOnLaunch") is False for s in subnets)
    assert {"Key": "aws-cdk:subnet-type", "Value": "Isolated"} in subnets[0]["Tags"]


def test_flow_logs_capture_all_traffic_into_a_kms_encrypted_log_group(network_template: dict[str, Any]) -> None:
    template = Template.from_json(network_template)
    key = _logical_id(network_template, "LogsKey", "AWS::KMS::Key")
    group = _logical_id(network_template, "NetworkFlowLogs", "AWS::Logs::LogGroup")
    template.has_resource(
        "AWS::Logs::LogGroup",
        {"Properties": {"KmsKeyId": {"Fn::GetAtt": [key, "Arn"]}, "RetentionInDays": 365},
         "DeletionPolicy": "Retain"},
    )
    template.has_resource_properties(
        "AWS::EC2::FlowLog",
        {"TrafficType": "ALL", "LogDestinationType": "cloud-watch-logs", "LogGroupName": {"Ref": group}},
    )


def test_flow_log_role_is_limited_to_its_log_group_by_a_managed_policy(network_template: dict[str, Any]) -> None:
    template = Template.from_json(network_template)
    template.resource_count_is("AWS::IAM::Policy", 0)  # no inline policies next to the managed one
    group = _logical_id(network_template, "NetworkFlowLogs", "AWS::Logs::LogGroup")
    template.has_resource_properties(
        "AWS::IAM::ManagedPolicy",
        {"PolicyDocument": {"Statement": [{
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            "Effect": "Allow",
            "Resource": {"Fn::GetAtt": [group, "Arn"]},
        }]}},
    )
    template.has_resource_properties(
        "AWS::IAM::Role",
        {"AssumeRolePolicyDocument": {"Statement": [Match.object_like({
            "Principal": {"Service": "vpc-flow-logs.amazonaws.com"},
            "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012"}},
        })]}},
    )


def test_gateway_endpoints_for_s3_and_dynamodb(network_template: dict[str, Any]) -> None:
    endpoints = [r["Properties"] for r in network_template["Resources"].values()
                 if r["Type"] == "AWS::EC2::VPCEndpoint" and r["Properties"].get("VpcEndpointType") == "Gateway"]
    names = sorted(str(e["ServiceName"]) for e in endpoints)
    assert len(names) == 2 and "s3" in names[1] and "dynamodb" in names[0], names


def test_interface_endpoints_cover_every_api_and_only_accept_the_endpoint_group(
    network_template: dict[str, Any],
) -> None:
    endpoint_sg = _logical_id(network_template, "NetworkEndpointSg", "AWS::EC2::SecurityGroup")
    endpoints = [r["Properties"] for r in network_template["Resources"].values()
                 if r["Type"] == "AWS::EC2::VPCEndpoint" and r["Properties"].get("VpcEndpointType") == "Interface"]
    services = {str(e["ServiceName"]) for e in endpoints}
    for suffix in ("kms", "ssm", "ssmmessages", "ec2messages", "sts", "logs", "monitoring", "ec2", "execute-api",
                   "autoscaling"):
        assert f"com.amazonaws.eu-west-1.{suffix}" in services
    assert len(endpoints) == len(INTERFACE_ENDPOINTS)
    for endpoint in endpoints:
        assert endpoint["PrivateDnsEnabled"] is True
        assert endpoint["SecurityGroupIds"] == [{"Fn::GetAtt": [endpoint_sg, "GroupId"]}]


def test_engine_accepts_pgwire_from_agents_and_approved_networks_and_metrics_from_monitoring(
    network_template: dict[str, Any],
) -> None:
    sg = {name: _logical_id(network_template, f"Network{name}", "AWS::EC2::SecurityGroup") for name in SG_IDS}
    assert _rules(network_template, sg["EngineSg"], "ingress") == {
        ("tcp", 5439, 5439, f"sg:{sg['AgentSg']}"),
        ("tcp", 5439, 5439, "CidrIp:10.20.0.0/16"),
        ("tcp", 5439, 5439, "CidrIp:192.168.7.0/24"),
        ("tcp", 5439, 5439, "SourcePrefixListId:pl-0123456789abcdef0"),
        ("tcp", 9090, 9090, f"sg:{sg['MonitoringSg']}"),
    }


def test_a_load_balancer_group_accepts_exactly_the_engines_pgwire_clients(network_template: dict[str, Any]) -> None:
    sg = {name: _logical_id(network_template, f"Network{name}", "AWS::EC2::SecurityGroup") for name in SG_IDS}
    nlb = _logical_id(network_template, "NlbSg", "AWS::EC2::SecurityGroup")
    engine_pgwire = {rule for rule in _rules(network_template, sg["EngineSg"], "ingress") if rule[1] == 5439}
    assert _rules(network_template, nlb, "ingress") == engine_pgwire
    assert _rules(network_template, sg["AgentSg"], "egress") == {
        ("tcp", 5439, 5439, f"sg:{sg['EngineSg']}"),
        ("tcp", 5439, 5439, f"sg:{nlb}"),
    }


def test_engine_and_lambda_egress_is_https_to_the_gateway_endpoints_and_interface_endpoints_only(
    network_template: dict[str, Any],
) -> None:
    sg = {name: _logical_id(network_template, f"Network{name}", "AWS::EC2::SecurityGroup") for name in SG_IDS}
    for group in ("EngineSg", "LambdaSg"):
        assert _rules(network_template, sg[group], "egress") == {
            ("tcp", 443, 443, f"DestinationPrefixListId:{S3_PL}"),
            ("tcp", 443, 443, f"DestinationPrefixListId:{DYNAMODB_PL}"),
            ("tcp", 443, 443, f"sg:{sg['EndpointSg']}"),
        }, group


def test_endpoints_accept_https_from_engines_and_lambdas_only(network_template: dict[str, Any]) -> None:
    sg = {name: _logical_id(network_template, f"Network{name}", "AWS::EC2::SecurityGroup") for name in SG_IDS}
    assert _rules(network_template, sg["EndpointSg"], "ingress") == {
        ("tcp", 443, 443, f"sg:{sg['EngineSg']}"),
        ("tcp", 443, 443, f"sg:{sg['LambdaSg']}"),
    }


def test_no_security_group_allows_all_outbound(network_template: dict[str, Any]) -> None:
    groups = [r["Properties"] for r in network_template["Resources"].values()
              if r["Type"] == "AWS::EC2::SecurityGroup"]
    assert len(groups) == len(SG_IDS) + 1  # and the NLB group of the fixture
    for group in groups:
        # allow_all_outbound=False renders CDK's "disallow all" placeholder or specific rules, never 0.0.0.0/0.
        assert all(rule.get("CidrIp") != "0.0.0.0/0" for rule in group.get("SecurityGroupEgress", []))


def test_default_security_group_of_the_vpc_is_stripped(network_template: dict[str, Any]) -> None:
    Template.from_json(network_template).resource_count_is("Custom::VpcRestrictDefaultSG", 1)


def test_prefix_list_rule_exists_only_when_the_parameter_is_set() -> None:
    app = App()
    stack = Stack(app, "S", env=Environment(account="123456789012", region="eu-west-1"))
    parameter = CfnParameter(stack, "ApprovedCidrs", type="String", default="")
    Network(stack, "Network", approved_cidrs=[], approved_prefix_list_id=parameter.value_as_string,
            flow_log_key=kms.Key(stack, "K"), s3_prefix_list_id=S3_PL, dynamodb_prefix_list_id=DYNAMODB_PL)
    template = Template.from_stack(stack).to_json()
    (condition,) = template["Conditions"].values()
    assert condition == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ApprovedCidrs"}, ""]}]}
    rules = [r for r in template["Resources"].values()
             if r["Type"] == "AWS::EC2::SecurityGroupIngress" and "SourcePrefixListId" in r["Properties"]]
    assert [r["Condition"] for r in rules] == list(template["Conditions"])


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("0.0.0.0/0", "every address"),
        ("10.0.0.1/16", "not a valid network"),
        ("not-a-cidr", "not a valid network"),
        ("2001:db8::/32", "only IPv4"),
    ],
)
def test_approved_cidrs_refuse_world_open_malformed_and_ipv6_ranges(cidr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validated_cidrs([cidr])


def test_approved_cidrs_are_normalised() -> None:
    assert validated_cidrs([" 10.20.0.0/16 ", "192.168.1.0/24"]) == ["10.20.0.0/16", "192.168.1.0/24"]


def test_ports_are_the_documented_ones() -> None:
    assert (constants.PGWIRE_PORT, constants.METRICS_PORT, constants.HTTPS_PORT) == (5439, 9090, 443)
