"""Fleet-level engine metrics to CloudWatch: what scaling and the deployment's alarms need, nothing per tenant.

The Prometheus registry (`HostMetrics.registry`) stays the source of truth; once a minute this module reads it
and sends a handful of host totals under the `HardenedDuck/Engine` namespace with the Auto Scaling group as the
only dimension, so target tracking averages them across the fleet and alarms see the whole fleet. No organisation
id, user, table or SQL ever leaves as a dimension or value: only counts, ratios and latencies.

Counters go out as the increase since the previous sample (CloudWatch sums them per period); the statement
latency histogram goes out as values and counts (each bucket's upper bound and its new observations), from which
CloudWatch computes percentiles such as p99.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from prometheus_client import CollectorRegistry

from hd_core.heartbeat import GateState

log = logging.getLogger(__name__)

ENGINE_NAMESPACE: Final = "HardenedDuck/Engine"
DIMENSION: Final = "AutoScalingGroupName"
DEFAULT_INTERVAL_SECONDS: Final = 60.0
# CloudWatch's PutMetricData limits: 1000 items per call, 150 values per item.
_MAX_ITEMS_PER_CALL: Final = 1000


@dataclass(frozen=True)
class EngineMetric:
    """One published metric: its CloudWatch name, unit and what it means (the README table and alarms use these)."""

    name: str
    unit: str
    description: str


ACTIVE_CONNECTIONS: Final = EngineMetric("ActiveConnections", "Count", "Open client sessions on the host")
STATEMENTS_IN_FLIGHT: Final = EngineMetric("StatementsInFlight", "Count", "Statements holding a concurrency slot")
STATEMENTS: Final = EngineMetric("Statements", "Count", "Statements finished (audit record stored)")
STATEMENT_ERRORS: Final = EngineMetric("StatementErrors", "Count", "Statements that failed (not denials)")
STATEMENT_LATENCY: Final = EngineMetric("StatementLatency", "Seconds", "Statement time, arrival to audit record")
CACHE_HITS: Final = EngineMetric("CacheHits", "Count", "Object cache lookups served locally")
CACHE_MISSES: Final = EngineMetric("CacheMisses", "Count", "Object cache lookups that fetched from S3")
QUOTA_DENIALS: Final = EngineMetric("QuotaDenials", "Count", "Statements refused because a quota was used up")
HEARTBEAT_GRACE: Final = EngineMetric("HeartbeatGrace", "Count",
                                      "1 while the host's heartbeat gate is not serving normally (grace or refusing)")
AUDIT_WRITE_FAILURES: Final = EngineMetric("AuditWriteFailures", "Count", "Audit records that could not be stored")
CERTIFICATE_DAYS_LEFT: Final = EngineMetric("CertificateDaysToExpiry", "Count",
                                            "Days until the served TLS certificate expires")
ENGINE_METRICS: Final[tuple[EngineMetric, ...]] = (
    ACTIVE_CONNECTIONS, STATEMENTS_IN_FLIGHT, STATEMENTS, STATEMENT_ERRORS, STATEMENT_LATENCY, CACHE_HITS,
    CACHE_MISSES, QUOTA_DENIALS, HEARTBEAT_GRACE, AUDIT_WRITE_FAILURES, CERTIFICATE_DAYS_LEFT,
)


@dataclass(frozen=True)
class _Reading:
    """The registry's values at one instant that the published metrics derive from."""

    gauges: dict[str, float]
    counters: dict[str, float]
    latency_buckets: dict[float, float]  # cumulative count per upper bound (le), +Inf included


def read_registry(registry: CollectorRegistry) -> _Reading:
    """Totals of the engine's Prometheus metrics, summed over every label (so no label value is kept)."""
    gauges: dict[str, float] = {}
    counters: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if not math.isfinite(value) and name != "hd_statement_duration_seconds_bucket":
                continue
            if name == "hd_sessions_active":
                gauges[ACTIVE_CONNECTIONS.name] = value
            elif name == "hd_statements_in_flight":
                gauges[STATEMENTS_IN_FLIGHT.name] = value
            elif name == "hd_heartbeat_state" and labels.get("state") != GateState.SERVING.value and value >= 1:
                gauges[HEARTBEAT_GRACE.name] = 1.0
            elif name == "hd_heartbeat_state":
                gauges.setdefault(HEARTBEAT_GRACE.name, 0.0)
            elif name == "hd_tls_certificate_expiry_timestamp_seconds":
                gauges["certificate_expiry"] = value
            elif name == "hd_statements_total":
                _add(counters, STATEMENTS.name, value)
                if labels.get("outcome") == "error":
                    _add(counters, STATEMENT_ERRORS.name, value)
                if labels.get("outcome") == "denied" and labels.get("stage") == "quota":
                    _add(counters, QUOTA_DENIALS.name, value)
            elif name == "hd_cache_hits_total":
                _add(counters, CACHE_HITS.name, value)
            elif name == "hd_cache_misses_total":
                _add(counters, CACHE_MISSES.name, value)
            elif name == "hd_audit_write_failures_total":
                _add(counters, AUDIT_WRITE_FAILURES.name, value)
            elif name == "hd_statement_duration_seconds_bucket":
                _add(buckets, float(labels["le"]), value)
    return _Reading(gauges, counters, buckets)


def _add(totals: dict[Any, float], key: Any, value: float) -> None:
    totals[key] = totals.get(key, 0.0) + value


class CloudWatchPublisher:
    """Samples the registry every `interval_seconds` and sends the fleet metrics with one PutMetricData call."""

    def __init__(self, registry: CollectorRegistry, client: Any, *, auto_scaling_group: str,
                 interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        """`client` is a boto3 CloudWatch client (its role may put only into ENGINE_NAMESPACE)."""
        if not auto_scaling_group:
            raise ValueError("the CloudWatch publisher needs the Auto Scaling group's name (its one dimension)")
        self._registry = registry
        self._client = client
        self._dimensions = [{"Name": DIMENSION, "Value": auto_scaling_group}]
        self._interval = interval_seconds
        self._now = now
        self._previous: _Reading | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> list[dict[str, Any]]:
        """The MetricData of this instant: gauges as they are, counters and latency as increases since last time.

        The first sample only sets the baseline for counters (a restart must not publish everything counted
        before it as new), so it carries gauges alone.
        """
        current = read_registry(self._registry)
        at = self._now()
        data = [self._datum(name, value, at) for name, value in sorted(current.gauges.items())
                if name != "certificate_expiry"]
        expiry = current.gauges.get("certificate_expiry")
        if expiry is not None:
            days = (expiry - at.timestamp()) / 86400
            data.append(self._datum(CERTIFICATE_DAYS_LEFT.name, round(days, 2), at))
        previous, self._previous = self._previous, current
        if previous is None:
            return data
        for metric in (STATEMENTS, STATEMENT_ERRORS, CACHE_HITS, CACHE_MISSES, QUOTA_DENIALS, AUDIT_WRITE_FAILURES):
            increase = current.counters.get(metric.name, 0.0) - previous.counters.get(metric.name, 0.0)
            data.append(self._datum(metric.name, max(0.0, increase), at))
        values, counts = _new_observations(previous.latency_buckets, current.latency_buckets)
        if values:
            data.append({"MetricName": STATEMENT_LATENCY.name, "Dimensions": self._dimensions, "Timestamp": at,
                         "Unit": STATEMENT_LATENCY.unit, "Values": values, "Counts": counts})
        return data

    def publish_once(self) -> int:
        """Sample and send; the number of metric items sent. A failure is logged and retried next interval."""
        data = self.sample()
        for start in range(0, len(data), _MAX_ITEMS_PER_CALL):
            self._client.put_metric_data(Namespace=ENGINE_NAMESPACE, MetricData=data[start:start + _MAX_ITEMS_PER_CALL])
        return len(data)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hd-cloudwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            try:
                self.publish_once()
            except Exception:  # CloudWatch unreachable must never take serving down
                log.warning("could not publish engine metrics to CloudWatch", exc_info=True)
            if self._stop.wait(self._interval):
                return

    def _datum(self, name: str, value: float, at: datetime) -> dict[str, Any]:
        unit = next(m.unit for m in ENGINE_METRICS if m.name == name)
        return {"MetricName": name, "Dimensions": self._dimensions, "Timestamp": at, "Unit": unit, "Value": value}


def _new_observations(previous: Mapping[float, float], current: Mapping[float, float]) -> tuple[
        list[float], list[float]]:
    """Each bucket's new observations as (value, count) pairs; a bucket is represented by its upper bound, the
    +Inf bucket by the largest finite bound (CloudWatch has no infinity)."""
    bounds = sorted(current)
    finite = [b for b in bounds if math.isfinite(b)]
    values: list[float] = []
    counts: list[float] = []
    below_now = below_before = 0.0
    for bound in bounds:
        now_cumulative, before_cumulative = current[bound], previous.get(bound, 0.0)
        new = (now_cumulative - below_now) - (before_cumulative - below_before)
        below_now, below_before = now_cumulative, before_cumulative
        if new > 0:
            values.append(bound if math.isfinite(bound) else (finite[-1] if finite else 0.0))
            counts.append(new)
    return _merge(values, counts)


def _merge(values: Iterable[float], counts: Iterable[float]) -> tuple[list[float], list[float]]:
    merged: dict[float, float] = {}
    for value, count in zip(values, counts, strict=True):
        merged[value] = merged.get(value, 0.0) + count
    return list(merged), list(merged.values())
