"""Monitoring: which CloudWatch alarms exist, where they notify, the dashboard, and the Prometheus side.

Uses the session's one synthesized fleet stack (tests/cdk/test_engine_fleet.py `fleet_synth`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from aws_cdk import App, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_kms as kms

from hd_cdk import constants
from hd_cdk.monitoring import (
    API_5XX_RATE,
    API_LATENCY_P99_MS,
    PROMETHEUS_ALERT_RULES,
    PROMETHEUS_SCRAPE_CONFIG,
    Monitoring,
)
from tests.cdk.test_engine_fleet import FleetSynth, fleet_synth, ref

ENGINE_METRICS_SOURCE = Path(__file__).resolve().parents[2] / "engine_host" / "ops" / "metrics.py"


@pytest.fixture(scope="module")
def synth() -> FleetSynth:
    return fleet_synth()


def monitoring_alarms(synth: FleetSynth) -> dict[str, dict[str, Any]]:
    """Alarm resources of the Monitoring construct, keyed by their logical id without the hash."""
    return {re.sub(r"[0-9A-F]{8}$", "", name).removeprefix("Monitoring"): res["Properties"]
            for name, res in synth.resources("AWS::CloudWatch::Alarm").items() if name.startswith("Monitoring")}


def test_the_alarms_that_exist_are_exactly_these(synth: FleetSynth) -> None:
    assert set(monitoring_alarms(synth)) == {
        "ApiLatencyP99", "Api5xxRate", "LambdaErrorsauth", "LambdaErrorswipe",
        "EngineUnhealthyHosts", "EngineNoHealthyHost", "ClientTlsFailures"}


def test_api_latency_and_5xx_alarms_watch_the_api_stage(synth: FleetSynth) -> None:
    alarms = monitoring_alarms(synth)
    stage = [{"Name": "ApiName", "Value": "hd-control-api"}, {"Name": "Stage", "Value": "prod"}]
    latency, errors = alarms["ApiLatencyP99"], alarms["Api5xxRate"]
    assert (latency["Namespace"], latency["MetricName"], latency["ExtendedStatistic"]) == (
        "AWS/ApiGateway", "Latency", "p99")
    assert latency["Threshold"] == API_LATENCY_P99_MS
    assert (errors["MetricName"], errors["Statistic"], errors["Threshold"]) == ("5XXError", "Average", API_5XX_RATE)
    for alarm in (latency, errors):
        assert alarm["Dimensions"] == stage


def test_every_lambda_raises_an_alarm_on_its_first_error(synth: FleetSynth) -> None:
    wipe_function, _ = synth.one("AWS::Lambda::Function", "WipeFunction")
    alarms = monitoring_alarms(synth)
    for name, function_name in (("auth", "hd-auth"), ("wipe", ref(wipe_function))):
        alarm = alarms[f"LambdaErrors{name}"]
        assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == ("AWS/Lambda", "Errors", "Sum")
        assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": function_name}]
        assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanOrEqualToThreshold", 1)


def test_engine_health_alarms_watch_the_target_group_and_no_data_means_no_host(synth: FleetSynth) -> None:
    alarms = monitoring_alarms(synth)
    unhealthy, none_healthy = alarms["EngineUnhealthyHosts"], alarms["EngineNoHealthyHost"]
    assert (unhealthy["Namespace"], unhealthy["MetricName"]) == ("AWS/NetworkELB", "UnHealthyHostCount")
    assert (none_healthy["MetricName"], none_healthy["ComparisonOperator"], none_healthy["Threshold"]) == (
        "HealthyHostCount", "LessThanThreshold", 1)
    assert none_healthy["TreatMissingData"] == "breaching"
    assert {d["Name"] for d in unhealthy["Dimensions"]} == {"LoadBalancer", "TargetGroup"}


def test_every_alarm_notifies_the_one_encrypted_topic(synth: FleetSynth) -> None:
    topic_name, topic = synth.one("AWS::SNS::Topic")
    assert "KmsMasterKeyId" in topic["Properties"]
    for alarm in synth.resources("AWS::CloudWatch::Alarm").values():
        assert alarm["Properties"]["AlarmActions"] == [ref(topic_name)]


def test_dashboard_graphs_the_api_lambdas_engine_hosts_and_wipe_failures(synth: FleetSynth) -> None:
    _, dashboard = synth.one("AWS::CloudWatch::Dashboard")
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for metric in ("Latency", "5XXError", "Errors", "HealthyHostCount", "UnHealthyHostCount",
                   "GroupInServiceInstances", "ActiveFlowCount", "ClientTLSNegotiationErrorCount", "WipeFailed"):
        assert f'\\"{metric}\\"' in body, metric
    assert "Prometheus metrics (port 9090" in body


def test_fleet_collects_the_group_metrics_the_dashboard_shows(synth: FleetSynth) -> None:
    _, group = synth.one("AWS::AutoScaling::AutoScalingGroup")
    assert group["Properties"]["MetricsCollection"] == [{"Granularity": "1Minute"}]


def test_monitoring_without_functions_is_refused() -> None:
    stack = Stack(App())
    with pytest.raises(ValueError, match="needs the control-plane functions"):
        Monitoring(stack, "Monitoring", functions={},
                   nlb=elbv2.NetworkLoadBalancer.from_network_load_balancer_attributes(
                       stack, "Nlb", load_balancer_arn="arn:aws:elasticloadbalancing:eu-west-1:123456789012:"
                                                       "loadbalancer/net/hd/0123456789abcdef"),
                   target_group=elbv2.NetworkTargetGroup.from_target_group_attributes(
                       stack, "Tg", target_group_arn="arn:aws:elasticloadbalancing:eu-west-1:123456789012:"
                                                     "targetgroup/hd/0123456789abcdef"),
                   asg=autoscaling.AutoScalingGroup.from_auto_scaling_group_name(stack, "Asg", "hd-fleet"),
                   api=apigw.RestApi.from_rest_api_id(stack, "Api", "a1b2c3d4e5"), api_stage_name="prod",
                   notification_key=kms.Key.from_key_arn(stack, "Key", "arn:aws:kms:eu-west-1:123456789012:key/k"))


# --- the Prometheus side ---------------------------------------------------------------------------------


def test_scrape_config_discovers_the_fleet_and_scrapes_the_metrics_port() -> None:
    (job,) = yaml.safe_load(PROMETHEUS_SCRAPE_CONFIG)["scrape_configs"]
    (discovery,) = job["ec2_sd_configs"]
    assert (job["metrics_path"], discovery["port"]) == ("/metrics", constants.METRICS_PORT)
    assert {f["name"] for f in discovery["filters"]} == {"tag:aws:autoscaling:groupName", "instance-state-name"}
    (address,) = [r for r in job["relabel_configs"] if r["target_label"] == "__address__"]
    assert address["replacement"] == f"${{1}}:{constants.METRICS_PORT}"


def test_alert_rules_cover_cache_saturation_and_quota_with_metrics_the_engine_exports() -> None:
    rules = yaml.safe_load(PROMETHEUS_ALERT_RULES)["groups"][0]["rules"]
    exported = set(re.findall(r'"(hd_[a-z_]+)"', ENGINE_METRICS_SOURCE.read_text(encoding="utf-8")))
    used = {re.sub(r"_bucket$", "", name) for rule in rules for name in re.findall(r"hd_[a-z_]+", rule["expr"])}
    assert {"hd_cache_saturation_ratio", "hd_quota_utilisation_ratio"} <= used
    assert used <= exported, f"alert rules name metrics the engine does not export: {used - exported}"
