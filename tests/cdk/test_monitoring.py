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
        "EngineUnhealthyHosts", "EngineNoHealthyHost", "ClientTlsFailures", "DeadLetterswipe",
        "EngineErrorRate", "EngineLatencyP99", "EngineCacheHitRatio", "EngineQuotaExhausted", "EngineHeartbeatGrace",
        "EngineAuditWriteFailures", "EngineCertificateExpiry"}


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
    # Counters are exported with `_total`, histograms with `_bucket` (prometheus_client's naming).
    used = {re.sub(r"_(bucket|total)$", "", name) for rule in rules for name in re.findall(r"hd_[a-z_]+", rule["expr"])}
    assert {"hd_cache_saturation_ratio", "hd_quota_utilisation_ratio"} <= used
    assert used <= exported, f"alert rules name metrics the engine does not export: {used - exported}"


# --- the seeds' engine alarms (issue 21) ------------------------------------------------------------------


def _engine_metric(alarm: dict[str, Any]) -> list[dict[str, Any]]:
    """The engine metrics an alarm reads: its own metric, or each metric of its math expression."""
    if "Metrics" in alarm:
        return [m["MetricStat"]["Metric"] for m in alarm["Metrics"] if "MetricStat" in m]
    return [{"Namespace": alarm["Namespace"], "MetricName": alarm["MetricName"], "Dimensions": alarm["Dimensions"]}]


def test_engine_alarms_read_the_fleet_totals_of_the_group(synth: FleetSynth) -> None:
    alarms = monitoring_alarms(synth)
    group, _ = synth.one("AWS::AutoScaling::AutoScalingGroup")
    expected = {"EngineErrorRate": {"StatementErrors", "Statements"}, "EngineLatencyP99": {"StatementLatency"},
                "EngineCacheHitRatio": {"CacheHits", "CacheMisses"}, "EngineQuotaExhausted": {"QuotaDenials"},
                "EngineHeartbeatGrace": {"HeartbeatGrace"}, "EngineAuditWriteFailures": {"AuditWriteFailures"},
                "EngineCertificateExpiry": {"CertificateDaysToExpiry"}}
    for name, metric_names in expected.items():
        metrics = _engine_metric(alarms[name])
        assert {m["MetricName"] for m in metrics} == metric_names, name
        for metric in metrics:
            assert metric["Namespace"] == "HardenedDuck/Engine"
            assert metric["Dimensions"] == [{"Name": "AutoScalingGroupName", "Value": ref(group)}]


def test_engine_alarm_thresholds(synth: FleetSynth) -> None:
    alarms = monitoring_alarms(synth)
    assert alarms["EngineLatencyP99"]["ExtendedStatistic"] == "p99" and alarms["EngineLatencyP99"]["Threshold"] == 30
    (expression,) = [m for m in alarms["EngineErrorRate"]["Metrics"] if "Expression" in m]
    assert expression["Expression"] == "IF(statements > 0, errors / statements, 0)"
    assert alarms["EngineErrorRate"]["Threshold"] == 0.05
    expiry = alarms["EngineCertificateExpiry"]
    assert (expiry["Statistic"], expiry["ComparisonOperator"], expiry["Threshold"]) == (
        "Minimum", "LessThanThreshold", constants.CERTIFICATE_ALARM_DAYS)
    assert alarms["EngineCacheHitRatio"]["ComparisonOperator"] == "LessThanThreshold"
    for name in ("EngineQuotaExhausted", "EngineHeartbeatGrace", "EngineAuditWriteFailures", "DeadLetterswipe"):
        assert (alarms[name]["Threshold"], alarms[name]["EvaluationPeriods"]) == (1, 1), name


def test_the_rules_file_is_what_the_module_ships() -> None:
    from hd_cdk.monitoring import PROMETHEUS_RULES_FILE

    assert PROMETHEUS_RULES_FILE == Path(__file__).resolve().parents[2] / "deploy" / "prometheus-rules.yml"
    assert PROMETHEUS_RULES_FILE.read_text(encoding="utf-8") == PROMETHEUS_ALERT_RULES


def test_prometheus_rules_cover_the_seeds_alerts() -> None:
    rules = {rule["alert"]: rule["expr"] for rule in yaml.safe_load(PROMETHEUS_ALERT_RULES)["groups"][0]["rules"]}
    needed = {"HardenedDuckErrorRateHigh": "hd_statements_total", "HardenedDuckStatementLatencyHigh": "0.99",
              "HardenedDuckCacheHitRatioLow": "hd_cache_hits_total", "HardenedDuckQuotaExhausted": ">= 1",
              "HardenedDuckHeartbeatGraceEntered": 'state="degraded"',
              "HardenedDuckAuditWriteFailures": "hd_audit_write_failures_total",
              "HardenedDuckCertificateExpiresSoon": "30 * 86400"}
    for alert, fragment in needed.items():
        assert fragment in rules[alert], alert


def test_promtool_accepts_the_rules_file(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from hd_cdk.monitoring import PROMETHEUS_RULES_FILE

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
    checked = subprocess.run([promtool, "check", "rules", str(PROMETHEUS_RULES_FILE)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
    # And it really checks: a rule with a broken expression is refused.
    broken = tmp_path / "broken.yml"
    broken.write_text(PROMETHEUS_ALERT_RULES.replace("> 0.05", "> > 0.05", 1), encoding="utf-8")
    refused = subprocess.run([promtool, "check", "rules", str(broken)], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode != 0
