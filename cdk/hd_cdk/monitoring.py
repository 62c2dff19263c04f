"""Monitoring: CloudWatch alarms on what CloudWatch measures, one dashboard, and the Prometheus side documented.

What exists where (no alarm pretends to watch a metric CloudWatch never receives):
- CloudWatch alarms (this construct): control API latency (p99) and 5xx rate, errors of every control-plane
  Lambda, engine hosts failing their NLB health check (/readyz) and no healthy host at all, TLS handshakes
  the NLB could not complete with clients, dead letters of the control API; and, from the fleet totals the
  hosts publish (engine_host/ops/cloudwatch.py, namespace HardenedDuck/Engine, no organisation id): engine error
  rate, p99 statement latency, cache hit ratio, quota exhaustion, heartbeat grace entered, audit write failures
  and the served certificate's expiry 30 days ahead. The wipe hook's (wipe failed, its DLQ) and the webhook
  queue's alarms live next to them (wipe_hook.py, lifecycle.py), on the same topic.
- Prometheus (the engine's own metrics on port 9090, scraped from inside the VPC by the customer's
  Prometheus with `PROMETHEUS_SCRAPE_CONFIG`): the same conditions per host and organisation, alerted on by
  `deploy/prometheus-rules.yml` (`PROMETHEUS_ALERT_RULES`), which `promtool check rules` accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

from aws_cdk import Aws, Duration
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from hd_cdk import constants as c

API_LATENCY_P99_MS: Final = 3000  # a control-API call (auth, policy change) slower than this is broken
API_5XX_RATE: Final = 0.01  # 1% of requests
ENGINE_ERROR_RATE: Final = 0.05  # 5% of statements failed (denials are policy working, not errors)
ENGINE_P99_SECONDS: Final = 30
CACHE_HIT_RATIO_MIN: Final = 0.5
_PERIOD: Final = Duration.minutes(c.ALARM_PERIOD_MINUTES)
_AT_LEAST: Final = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD

# Prometheus side, for the customer's Prometheus inside the VPC (the monitoring security group reaches 9090).
PROMETHEUS_SCRAPE_CONFIG: Final = f"""\
scrape_configs:
  - job_name: hardened-duck-engine
    scheme: http            # inside the VPC; only the monitoring security group reaches port {c.METRICS_PORT}
    metrics_path: /metrics
    scrape_interval: 30s
    ec2_sd_configs:
      - region: <region>
        port: {c.METRICS_PORT}
        filters:
          - name: tag:aws:autoscaling:groupName
            values: [<the engine Auto Scaling group's name>]
          - name: instance-state-name
            values: [running]
    relabel_configs:
      - source_labels: [__meta_ec2_private_ip]
        target_label: __address__
        replacement: "${{1}}:{c.METRICS_PORT}"
      - source_labels: [__meta_ec2_instance_id]
        target_label: instance_id
"""

# The rules file ships in deploy/ (what a customer's Prometheus loads); this is its text, for tooling and tests.
PROMETHEUS_RULES_FILE: Final = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-rules.yml"
PROMETHEUS_ALERT_RULES: Final = PROMETHEUS_RULES_FILE.read_text(encoding="utf-8")


class Monitoring(Construct):
    """Alarms to one KMS-encrypted SNS topic and the operations dashboard.

    Attributes: `alarm_topic`, `alarms` (name -> alarm), `dashboard`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        nlb: elbv2.INetworkLoadBalancer,
        target_group: elbv2.INetworkTargetGroup,
        asg: autoscaling.IAutoScalingGroup,
        functions: Mapping[str, lambda_.IFunction],
        api: apigw.IRestApi,
        api_stage_name: str,
        notification_key: kms.IKey,
        alarm_topic: sns.ITopic | None = None,
        extra_metrics: Mapping[str, cloudwatch.IMetric] | None = None,
        dead_letter_queues: Mapping[str, sqs.IQueue] | None = None,
    ) -> None:
        """`functions` maps a short name (e.g. "auth") to each control-plane Lambda; `alarm_topic` is shared with
        the wipe hook when given, else created here; `extra_metrics` adds graphs (the wipe hook's WipeFailed)."""
        super().__init__(scope, construct_id)
        if not functions:
            raise ValueError("Monitoring needs the control-plane functions: got none, so no Lambda would be alarmed")
        if alarm_topic is None:
            notification_key.add_to_resource_policy(iam.PolicyStatement(
                sid="CloudWatchAlarmsToTopic",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=["*"],  # in a key policy, "*" is this key
                conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}},
            ))
            alarm_topic = sns.Topic(self, "Alarms", master_key=notification_key, enforce_ssl=True,
                                    display_name="Hardened Duck alarms")
        self.alarm_topic = alarm_topic
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        api_metrics = _ApiMetrics(api.rest_api_name, api_stage_name)

        self._alarm("ApiLatencyP99", api_metrics.metric("Latency", "p99"), API_LATENCY_P99_MS,
                    "Control API p99 latency above threshold for 15 minutes", periods=3)
        self._alarm("Api5xxRate", api_metrics.metric("5XXError", "Average"), API_5XX_RATE,
                    "More than 1% of control API requests failed with a 5xx for 10 minutes", periods=2)
        for name, function in sorted(functions.items()):
            self._alarm(f"LambdaErrors-{name}", function.metric_errors(period=_PERIOD, statistic="Sum"), 1,
                        f"Control-plane Lambda {name} raised an unhandled error", periods=1)
        tg = target_group.metrics
        self._alarm("EngineUnhealthyHosts", tg.un_healthy_host_count(period=_PERIOD, statistic="Maximum"), 1,
                    "An engine host fails /readyz (policy snapshot, cache mount or heartbeat)", periods=2)
        self._alarm("EngineNoHealthyHost", tg.healthy_host_count(period=_PERIOD, statistic="Minimum"), 1,
                    "No engine host is healthy: agents cannot connect", periods=1,
                    comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
                    missing=cloudwatch.TreatMissingData.BREACHING)
        client_tls = nlb.metrics.custom("ClientTLSNegotiationErrorCount", period=_PERIOD, statistic="Sum")
        self._alarm("ClientTlsFailures", client_tls, 10,
                    "Clients failing the TLS 1.3 handshake (old drivers, or sslmode without direct TLS)", periods=1)
        for name, queue in sorted((dead_letter_queues or {}).items()):
            self._alarm(f"DeadLetters-{name}", queue.metric_approximate_number_of_messages_visible(
                period=_PERIOD, statistic="Maximum"), 1, f"{name}: messages in the dead-letter queue", periods=1)
        self.engine = _EngineMetrics(asg.auto_scaling_group_name)
        self._engine_alarms(self.engine)
        self.dashboard = self._dashboard(api_metrics, functions, target_group, nlb, asg, extra_metrics or {})

    def _engine_alarms(self, engine: _EngineMetrics) -> None:
        """The seeds' engine alarms, on the fleet totals the hosts publish (engine_host/ops/cloudwatch.py)."""
        error_rate = cloudwatch.MathExpression(
            expression="IF(statements > 0, errors / statements, 0)", period=_PERIOD, label="Engine error rate",
            using_metrics={"errors": engine.metric("StatementErrors", "Sum"),
                           "statements": engine.metric("Statements", "Sum")})
        self._alarm("EngineErrorRate", error_rate, ENGINE_ERROR_RATE,
                    "More than 5% of statements failed across the fleet for 15 minutes", periods=3)
        self._alarm("EngineLatencyP99", engine.metric("StatementLatency", "p99"), ENGINE_P99_SECONDS,
                    "p99 statement time above 30 s across the fleet for 15 minutes", periods=3)
        hit_ratio = cloudwatch.MathExpression(
            expression="IF(hits + misses > 0, hits / (hits + misses), 1)", period=_PERIOD, label="Cache hit ratio",
            using_metrics={"hits": engine.metric("CacheHits", "Sum"), "misses": engine.metric("CacheMisses", "Sum")})
        self._alarm("EngineCacheHitRatio", hit_ratio, CACHE_HIT_RATIO_MIN,
                    "Fewer than half of cache lookups served locally for 30 minutes: the working set outgrows "
                    "the tier", periods=6, comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD)
        self._alarm("EngineQuotaExhausted", engine.metric("QuotaDenials", "Sum"), 1,
                    "Statements refused because an organisation's quota is used up", periods=1)
        self._alarm("EngineHeartbeatGrace", engine.metric("HeartbeatGrace", "Maximum"), 1,
                    "An engine host lost its control-plane heartbeat: it serves on its grace period, then refuses",
                    periods=1)
        self._alarm("EngineAuditWriteFailures", engine.metric("AuditWriteFailures", "Sum"), 1,
                    "Audit records could not be stored (each failed its statement)", periods=1)
        self._alarm("EngineCertificateExpiry", engine.metric("CertificateDaysToExpiry", "Minimum"),
                    c.CERTIFICATE_ALARM_DAYS, f"The engine's TLS certificate expires within "
                    f"{c.CERTIFICATE_ALARM_DAYS} days: rotate the TLS secret (hosts pick it up without a restart)",
                    periods=1, comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD)

    def _alarm(self, name: str, metric: cloudwatch.IMetric, threshold: float, description: str, *, periods: int,
               comparison: cloudwatch.ComparisonOperator = _AT_LEAST,
               missing: cloudwatch.TreatMissingData = cloudwatch.TreatMissingData.NOT_BREACHING) -> None:
        alarm = cloudwatch.Alarm(
            self, name, metric=metric, threshold=threshold, evaluation_periods=periods, datapoints_to_alarm=periods,
            comparison_operator=comparison, treat_missing_data=missing, alarm_description=description,
        )
        alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.alarm_topic))
        self.alarms[name] = alarm

    def _dashboard(self, api_metrics: _ApiMetrics, functions: Mapping[str, lambda_.IFunction],
                   target_group: elbv2.INetworkTargetGroup, nlb: elbv2.INetworkLoadBalancer,
                   asg: autoscaling.IAutoScalingGroup, extra: Mapping[str, cloudwatch.IMetric]) -> cloudwatch.Dashboard:
        dashboard = cloudwatch.Dashboard(self, "Dashboard", default_interval=Duration.hours(6))
        in_service = cloudwatch.Metric(
            namespace="AWS/AutoScaling", metric_name="GroupInServiceInstances", period=_PERIOD, statistic="Average",
            dimensions_map={"AutoScalingGroupName": asg.auto_scaling_group_name})
        dashboard.add_widgets(
            _graph("Control API latency (ms)", [api_metrics.metric("Latency", "p50"),
                                                api_metrics.metric("Latency", "p99")]),
            _graph("Control API errors (rate)", [api_metrics.metric("5XXError", "Average"),
                                                 api_metrics.metric("4XXError", "Average")]),
            _graph("Lambda errors", [f.metric_errors(period=_PERIOD, statistic="Sum", label=n)
                                     for n, f in sorted(functions.items())]),
        )
        dashboard.add_widgets(
            _graph("Engine hosts", [target_group.metrics.healthy_host_count(period=_PERIOD),
                                    target_group.metrics.un_healthy_host_count(period=_PERIOD), in_service]),
            _graph("Engine connections (NLB)", [nlb.metrics.active_flow_count(period=_PERIOD),
                                                nlb.metrics.new_flow_count(period=_PERIOD)]),
            _graph("TLS handshake failures", [
                nlb.metrics.custom("ClientTLSNegotiationErrorCount", period=_PERIOD, statistic="Sum"),
                nlb.metrics.custom("TargetTLSNegotiationErrorCount", period=_PERIOD, statistic="Sum")]),
        )
        engine = self.engine
        dashboard.add_widgets(
            _graph("Engine sessions and statements (per host)", [engine.metric("ActiveConnections", "Average"),
                                                                 engine.metric("StatementsInFlight", "Average")]),
            _graph("Engine statements (fleet)", [engine.metric("Statements", "Sum"),
                                                 engine.metric("StatementErrors", "Sum"),
                                                 engine.metric("QuotaDenials", "Sum")]),
            _graph("Engine statement latency (s)", [engine.metric("StatementLatency", "p50"),
                                                    engine.metric("StatementLatency", "p99")]),
        )
        if extra:
            dashboard.add_widgets(_graph("Operations", list(extra.values())))
        dashboard.add_widgets(cloudwatch.TextWidget(
            width=24, height=3,
            markdown="Statement latency, cache saturation, quota utilisation and the heartbeat gate are engine "
                     f"Prometheus metrics (port {c.METRICS_PORT}, `/metrics`), scraped and alerted on inside the "
                     "VPC; see the README's monitoring section for the scrape configuration and alert rules.",
        ))
        return dashboard


class _EngineMetrics:
    """The fleet totals engine hosts publish, for one Auto Scaling group."""

    def __init__(self, group_name: str) -> None:
        self._dimensions = {"AutoScalingGroupName": group_name}

    def metric(self, name: str, statistic: str) -> cloudwatch.Metric:
        return cloudwatch.Metric(namespace=c.ENGINE_METRICS_NAMESPACE, metric_name=name,
                                 dimensions_map=self._dimensions, statistic=statistic, period=_PERIOD)


class _ApiMetrics:
    """API Gateway metrics of one REST API stage."""

    def __init__(self, api_name: str, stage_name: str) -> None:
        self._dimensions = {"ApiName": api_name, "Stage": stage_name}

    def metric(self, name: str, statistic: str) -> cloudwatch.Metric:
        return cloudwatch.Metric(namespace="AWS/ApiGateway", metric_name=name, dimensions_map=self._dimensions,
                                 statistic=statistic, period=_PERIOD)


def _graph(title: str, metrics: list[cloudwatch.IMetric]) -> cloudwatch.GraphWidget:
    return cloudwatch.GraphWidget(title=title, left=metrics, width=8, height=6)
