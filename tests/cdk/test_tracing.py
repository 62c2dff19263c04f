"""OpenTelemetry in the deployment: context hd:otelEndpoint reaches the engine hosts' EngineConfig and every
control-plane Lambda (HD_OTEL_ENDPOINT), opens egress to the collector's network on its port only, and keeps
cdk-nag clean; unset, nothing of it is in the template. The ADOT collector layer variant and the refusals
are checked on small stacks.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_

from engine_host.boot.config import EngineConfig
from hd_cdk import packaging
from hd_cdk.tracing import COLLECTOR_EXTENSION_ENDPOINT, Tracing, collector_layer_arn, otel_endpoint
from tests.cdk.conftest import TEST_CONTEXT, SynthesizedApp, load_app_module

COLLECTOR = "http://otel-collector.internal:4318"
COLLECTOR_CIDR = "10.42.200.0/24"
LAYER_ARN = "arn:aws:lambda:eu-west-1:901920570463:layer:aws-otel-collector-arm64-ver-0-117-0:1"


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The whole app with tracing to a collector in the VPC (all cdk-nag packs run: a finding fails the synth)."""
    outdir = tmp_path_factory.mktemp("cdk.traced")
    context = {**TEST_CONTEXT, "hd:otelEndpoint": COLLECTOR, "hd:otelCollectorCidrs": [COLLECTOR_CIDR]}
    load_app_module().build_app(context=context, outdir=str(outdir)).synth()
    template: dict[str, Any] = json.loads((outdir / "HardenedDuck.template.json").read_text(encoding="utf-8"))
    return template


def _functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: resource["Properties"] for name, resource in template["Resources"].items()
            if resource["Type"] == "AWS::Lambda::Function"}


def _ours(properties: dict[str, Any]) -> bool:
    return str(properties.get("Handler", "")).startswith("functions.")


def _engine_config_value(template: dict[str, Any]) -> str:
    (value,) = [json.dumps(resource["Properties"]["Value"]) for name, resource in template["Resources"].items()
                if resource["Type"] == "AWS::SSM::Parameter" and "EngineConfig" in name]
    return value


def test_every_control_plane_lambda_gets_the_endpoint_and_cdk_helpers_do_not(traced: dict[str, Any]) -> None:
    functions = _functions(traced)
    ours = {name: props for name, props in functions.items() if _ours(props)}
    assert len(ours) >= 10  # the API's functions, workers, the wipe hook, shadow tasks, webhook delivery
    for name, props in ours.items():
        assert props["Environment"]["Variables"].get("HD_OTEL_ENDPOINT") == COLLECTOR, name
    for name, props in functions.items():
        if not _ours(props):
            assert "HD_OTEL_ENDPOINT" not in props.get("Environment", {}).get("Variables", {}), name


def test_the_engine_hosts_read_the_endpoint_from_their_engine_config(traced: dict[str, Any]) -> None:
    assert f'\\"otel_endpoint\\":\\"{COLLECTOR}\\"' in _engine_config_value(traced)
    assert EngineConfig.model_fields["otel_endpoint"].default is None


def test_egress_to_the_collector_is_its_port_on_its_network_only(traced: dict[str, Any]) -> None:
    rules = [resource["Properties"] for resource in traced["Resources"].values()
             if resource["Type"] == "AWS::EC2::SecurityGroupEgress" and resource["Properties"].get("CidrIp")]
    rules += [{**egress, "GroupId": name} for name, resource in traced["Resources"].items()
              if resource["Type"] == "AWS::EC2::SecurityGroup"
              for egress in resource["Properties"].get("SecurityGroupEgress", []) if egress.get("CidrIp")]
    to_collector = [rule for rule in rules if rule["CidrIp"] == COLLECTOR_CIDR]
    assert len(to_collector) == 2  # the engine hosts' group and the Lambdas' group
    assert all((rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 4318, 4318) for rule in to_collector)
    groups = {json.dumps(rule["GroupId"]) for rule in to_collector}
    assert any("EngineSg" in group for group in groups) and any("LambdaSg" in group for group in groups)


def test_without_the_context_nothing_of_tracing_is_deployed(synthesized_app: SynthesizedApp) -> None:
    template = synthesized_app.template()
    for name, props in _functions(template).items():
        assert "HD_OTEL_ENDPOINT" not in props.get("Environment", {}).get("Variables", {}), name
    assert "otel_endpoint" not in _engine_config_value(template)
    assert not [r for r in template["Resources"].values() if "SecurityGroup" in r["Type"]
                and "4318" in json.dumps(r["Properties"])]


def test_the_dependency_layer_always_carries_the_otel_extra() -> None:
    names = {requirement.split("==")[0] for requirement in packaging.pinned_requirements()}
    assert {"opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"} <= names


def _small_stack(context: dict[str, Any]) -> tuple[App, Stack, ec2.SecurityGroup]:
    app = App(context={"hd:bundling": False, **context})
    stack = Stack(app, "Traced", env={"account": "123456789012", "region": "eu-west-1"})
    vpc = ec2.Vpc(stack, "Vpc", max_azs=1, nat_gateways=0,
                  subnet_configuration=[ec2.SubnetConfiguration(name="i", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)])
    group = ec2.SecurityGroup(stack, "Sg", vpc=vpc, allow_all_outbound=False)
    for name, handler in (("Ours", "functions.auth.handler.lambda_handler"), ("Helper", "index.handler")):
        lambda_.Function(stack, name, runtime=packaging.LAMBDA_RUNTIME, handler=handler,
                         code=lambda_.Code.from_inline("def handler(event, context):\n    return None\n"))
    return app, stack, group


def test_with_the_adot_layer_the_lambdas_send_to_its_extension_and_carry_it() -> None:
    app, stack, group = _small_stack({"hd:otelCollectorLayerArn": LAYER_ARN})
    Tracing(stack, "Tracing", security_groups=[group])
    functions = _functions(app.synth().get_stack_by_name("Traced").template)
    ours = next(props for name, props in functions.items() if name.startswith("Ours"))
    helper = next(props for name, props in functions.items() if name.startswith("Helper"))
    assert ours["Environment"]["Variables"]["HD_OTEL_ENDPOINT"] == COLLECTOR_EXTENSION_ENDPOINT
    assert ours["Layers"] == [LAYER_ARN]
    assert "Layers" not in helper and "Environment" not in helper


def test_a_collector_on_the_host_itself_needs_no_egress() -> None:
    app, stack, group = _small_stack({"hd:otelEndpoint": "http://127.0.0.1:4318"})
    Tracing(stack, "Tracing", security_groups=[group])
    template = app.synth().get_stack_by_name("Traced").template
    assert "4318" not in json.dumps([r for r in template["Resources"].values() if "SecurityGroup" in r["Type"]])


@pytest.mark.parametrize(("context", "message"), [
    ({"hd:otelEndpoint": "grpc://collector:4317"}, "must be an OTLP/HTTP collector URL"),
    ({"hd:otelEndpoint": "http://user:pw@collector:4318"}, "no credentials"),
    ({"hd:otelEndpoint": COLLECTOR}, "hd:otelCollectorCidrs names no network"),
    ({"hd:otelEndpoint": COLLECTOR, "hd:otelCollectorCidrs": "0.0.0.0/0"}, "narrower than 0.0.0.0/0"),
    ({"hd:otelEndpoint": COLLECTOR, "hd:otelCollectorCidrs": ["10.0.0.1/8"]}, "is not a network"),
    ({"hd:otelCollectorLayerArn": LAYER_ARN.replace("eu-west-1", "us-east-1")}, "not of the stack's region"),
    ({"hd:otelCollectorLayerArn": "aws-otel-collector"}, "must be a Lambda layer version ARN"),
])
def test_a_tracing_context_that_cannot_work_is_refused_at_synth(context: dict[str, Any], message: str) -> None:
    _, stack, group = _small_stack(context)
    with pytest.raises(ValueError, match=message):
        Tracing(stack, "Tracing", security_groups=[group])


def test_context_readers_return_none_when_tracing_is_off() -> None:
    app = App(context={})
    assert otel_endpoint(app) is None and collector_layer_arn(app, "eu-west-1") is None
