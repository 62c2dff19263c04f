"""OpenTelemetry for the deployment, off unless context `hd:otelEndpoint` or `hd:otelCollectorLayerArn` is set.

- `hd:otelEndpoint` (an OTLP/HTTP collector URL): the engine hosts get it as `otel_endpoint` in their
  EngineConfig (engine_fleet.py) and every control-plane Lambda as `HD_OTEL_ENDPOINT`. A collector
  inside the VPC is reached from the engine and Lambda security groups only on its port and only
  towards `hd:otelCollectorCidrs`: every group starts with no egress (network.py), so an endpoint
  whose network is not named is refused at synth rather than deployed to send nothing.
- `hd:otelCollectorLayerArn` (the ADOT collector Lambda layer of this region): added to every
  control-plane Lambda, whose spans then go to the extension at http://localhost:4318 (ADOT's default
  configuration forwards them to X-Ray; `OPENTELEMETRY_COLLECTOR_CONFIG_URI` names another). The
  engine hosts still follow `hd:otelEndpoint` alone.

The `[otel]` packages are always in the dependency layer (packaging.py), so nothing else changes.
Which functions: those running our code (handler `functions.<name>...`), never CDK's own helpers.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import jsii
from aws_cdk import Aspects, IAspect, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from constructs import Construct, IConstruct

from hd_cdk import constants
from hd_cdk.packaging import LAMBDA_RUNTIME
from hd_core.telemetry import OTEL_ENDPOINT_ENV, TelemetryMisconfigured, traces_url

# The ADOT collector extension listens here inside the Lambda execution environment.
COLLECTOR_EXTENSION_ENDPOINT = "http://localhost:4318"
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_LAYER_ARN = re.compile(
    r"^arn:aws[a-z-]*:lambda:(?P<region>[a-z]{2}(-[a-z]+)+-\d{1,2}):\d{12}:layer:[A-Za-z0-9_-]{1,140}:\d{1,10}$")


def otel_endpoint(scope: Construct) -> str | None:
    """Context `hd:otelEndpoint`, checked like the hosts and Lambdas check `HD_OTEL_ENDPOINT`; None when unset."""
    raw = str(scope.node.try_get_context(constants.CONTEXT_OTEL_ENDPOINT) or "").strip()
    if not raw:
        return None
    try:
        traces_url({OTEL_ENDPOINT_ENV: raw})
    except TelemetryMisconfigured as error:
        raise ValueError(f"context {constants.CONTEXT_OTEL_ENDPOINT}: {error}") from None
    return raw


def collector_layer_arn(scope: Construct, region: str) -> str | None:
    """Context `hd:otelCollectorLayerArn`: a Lambda layer version ARN of `region` (Lambda attaches no other)."""
    raw = str(scope.node.try_get_context(constants.CONTEXT_OTEL_COLLECTOR_LAYER) or "").strip()
    if not raw:
        return None
    match = _LAYER_ARN.fullmatch(raw)
    if match is None:
        raise ValueError(f"context {constants.CONTEXT_OTEL_COLLECTOR_LAYER} must be a Lambda layer version ARN "
                         "(arn:aws:lambda:<region>:<account>:layer:<name>:<version>)")
    if match.group("region") != region:
        raise ValueError(f"context {constants.CONTEXT_OTEL_COLLECTOR_LAYER} is a layer of {match.group('region')}, "
                         f"not of the stack's region {region}")
    return raw


def collector_cidrs(scope: Construct) -> list[str]:
    """Context `hd:otelCollectorCidrs` (a list, or one comma-separated string), as validated IPv4 networks."""
    value = scope.node.try_get_context(constants.CONTEXT_OTEL_COLLECTOR_CIDRS) or []
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    cidrs: list[str] = []
    for raw in value:
        try:
            network = ipaddress.ip_network(str(raw).strip(), strict=True)
        except ValueError as error:
            raise ValueError(f"context {constants.CONTEXT_OTEL_COLLECTOR_CIDRS}: {raw!r} is not a network: "
                             f"{error}") from None
        if network.version != 4 or network.prefixlen == 0:
            raise ValueError(f"context {constants.CONTEXT_OTEL_COLLECTOR_CIDRS}: {raw!r} must be an IPv4 range "
                             "narrower than 0.0.0.0/0 (spans go to one collector, not anywhere)")
        cidrs.append(str(network))
    return cidrs


def _port(endpoint: str) -> int:
    parts = urlsplit(endpoint)
    return parts.port or (443 if parts.scheme == "https" else 80)


@jsii.implements(IAspect)
class LambdaOtelEndpoint:
    """Sets `HD_OTEL_ENDPOINT` (and adds the collector layer, if any) on every function running our code."""

    def __init__(self, endpoint: str, layer: lambda_.ILayerVersion | None) -> None:
        self.endpoint = endpoint
        self.layer = layer

    def visit(self, node: IConstruct) -> None:
        if not isinstance(node, lambda_.Function) or node.runtime.name != LAMBDA_RUNTIME.name:
            return
        handler = getattr(node.node.default_child, "handler", None)
        if not isinstance(handler, str) or not handler.startswith("functions."):
            return
        node.add_environment(OTEL_ENDPOINT_ENV, self.endpoint)
        if self.layer is not None:
            node.add_layers(self.layer)


class Tracing(Construct):
    """Wires the context above into the stack: Lambda environment and layer, and egress to the collector.

    Attributes: `endpoint` (the hosts' and, without a collector layer, the Lambdas' endpoint, or None),
    `lambda_endpoint` (what the Lambdas get, or None: tracing off for them).
    """

    def __init__(self, scope: Construct, id: str, *, security_groups: Sequence[ec2.ISecurityGroup]) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.endpoint = otel_endpoint(self)
        layer_arn = collector_layer_arn(self, stack.region)
        self.lambda_endpoint = COLLECTOR_EXTENSION_ENDPOINT if layer_arn else self.endpoint
        if self.endpoint is not None:
            self._allow_egress(self.endpoint, security_groups)
        if self.lambda_endpoint is None:
            return
        layer = (lambda_.LayerVersion.from_layer_version_arn(self, "CollectorLayer", layer_arn)
                 if layer_arn else None)
        Aspects.of(stack).add(LambdaOtelEndpoint(self.lambda_endpoint, layer))

    def _allow_egress(self, endpoint: str, security_groups: Sequence[ec2.ISecurityGroup]) -> None:
        host = urlsplit(endpoint).hostname or ""
        if host in _LOCAL_HOSTS:
            return  # a collector on each host (an agent): nothing leaves the machine
        cidrs = collector_cidrs(self)
        if not cidrs:
            raise ValueError(
                f"context {constants.CONTEXT_OTEL_ENDPOINT} names a collector at {host} but "
                f"{constants.CONTEXT_OTEL_COLLECTOR_CIDRS} names no network for it: the security groups allow "
                "no egress but the listed networks, so say where the collector runs (e.g. 10.42.0.0/16)")
        port = ec2.Port.tcp(_port(endpoint))
        for group in security_groups:
            for cidr in cidrs:
                group.add_egress_rule(ec2.Peer.ipv4(cidr), port, "OTLP spans to the OpenTelemetry collector")
