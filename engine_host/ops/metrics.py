"""Prometheus metrics of one engine host, in a registry of its own.

Statement metrics are derived from the query audit record (`observe_statement`, the AuditWriter's
`on_record` observer), so a statement is counted exactly when its audit record is stored. Gauges of
live state (sessions, the concurrency gate, the cache, quotas, the heartbeat) are read from bound
callbacks at scrape time; an unbound source is simply absent from the exposition.

Labels take only bounded, non-sensitive values: outcome, stage, SQLSTATE class, statement kind,
HD_ERR_* codes and organisation ids. Anything else (SQL text, user and key ids, table names,
addresses, error messages) never becomes a label: each label value is checked against an allowlist
or a strict pattern and replaced by "other" when it does not match.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine_host.ops.quota_utilisation import OrgQuotaUse
from engine_host.pipeline.gates import ConcurrencyGate
from hd_core.heartbeat import GateState
from hd_core.models import utc_now

log = logging.getLogger(__name__)

LATENCY_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RESULT_ROW_BUCKETS = (0, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000)
RESULT_BYTE_BUCKETS = tuple(float(1024 * 4**n) for n in range(11))  # 1 KiB .. 1 GiB, x4 apart

# Statement kinds the guard can produce (engine_host/pipeline/governance/guard.py), "catalog", and the
# statements the pipeline answers itself (pipeline.Kind: SET/SHOW, BEGIN/COMMIT, FETCH, DISCARD, DEALLOCATE,
# PREPARE, and an EXECUTE refused before the statement it names runs).
STATEMENT_KINDS = frozenset({
    "select", "insert", "update", "delete", "create_table", "create_table_as", "create_schema", "drop_table",
    "alter_table", "explain", "catalog", "setting", "transaction", "cursor", "discard", "deallocate",
    "prepare", "execute",
})
# Stages that write a deny verdict (Governor._stage), and the stages derived here from error codes.
STAGES = frozenset({
    "guard", "tables", "policy", "rate_limit", "abac", "quota", "concurrency",
    "none", "syntax", "credential", "max_rows", "row_filter", "timeout", "canceled", "shutdown", "audit", "engine",
    "connection",
})
# Failures that carry no deny verdict, classified by their code: (outcome, stage).
_CODE_STAGES = {
    "HD_ERR_ORG_INACTIVE": ("denied", "credential"),
    "HD_ERR_CREDENTIAL_REVOKED": ("denied", "credential"),
    "HD_ERR_MAX_ROWS_EXCEEDED": ("denied", "max_rows"),
    "HD_ERR_ROW_FILTER_CHECK": ("denied", "row_filter"),
    "HD_ERR_STATEMENT_TIMEOUT": ("error", "timeout"),
    "HD_ERR_CANCELED": ("error", "canceled"),
    "HD_ERR_SHUTDOWN": ("error", "shutdown"),
    "HD_ERR_CONNECTION_ENDED": ("error", "connection"),
    "HD_ERR_AUDIT_UNAVAILABLE": ("error", "audit"),
}
_SYNTAX_SQLSTATE = "42601"
_CODE = re.compile(r"HD_ERR_[A-Z0-9_]{1,64}")
_SQLSTATE = re.compile(r"[0-9A-Z]{5}")
_ORG_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
OTHER = "other"
# Organisations on one host are few; past this many, new ones share the "other" series.
MAX_ORG_LABELS = 1000
# Streamed statements whose interim record was seen and whose completion record is still due.
_MAX_STREAMING = 4096

SessionsReading = Callable[[], int]
GateReading = Callable[[], Mapping[str, float]]
CacheReading = Callable[[], Mapping[str, float]]
QuotaReading = Callable[[], Iterable[OrgQuotaUse]]
HeartbeatReading = Callable[[], Mapping[str, object]]
CertificateReading = Callable[[], datetime]


def gate_reading(gate: ConcurrencyGate) -> GateReading:
    """A `bind_gate` callback for a ConcurrencyGate: in flight, queued, and both limits."""
    return lambda: {"in_flight": gate.running, "queued": gate.queued, "limit": gate.limit,
                    "queue_limit": gate.queue}


def statement_outcome(record: Mapping[str, object]) -> tuple[str, str]:
    """(outcome, stage) of an audit record: ("ok", "none"), ("denied", <stage>) or ("error", <stage>)."""
    error = record.get("error")
    if not isinstance(error, Mapping):
        return "ok", "none"
    if error.get("sqlstate") == _SYNTAX_SQLSTATE:
        return "error", "syntax"
    verdicts = record.get("verdicts")
    for verdict in verdicts if isinstance(verdicts, list) else ():
        if isinstance(verdict, Mapping) and verdict.get("decision") == "deny":
            return "denied", _allowed(verdict.get("stage"), STAGES)
    return _CODE_STAGES.get(str(error.get("code")), ("error", "engine"))


class HostMetrics:
    """The engine host's metrics, in its own CollectorRegistry (never the process-wide default one)."""

    def __init__(self, *, now: Callable[[], datetime] = utc_now) -> None:
        self.registry = CollectorRegistry()
        self._now = now
        self._lock = threading.Lock()
        self._orgs: set[str] = set()
        self._streaming: OrderedDict[object, None] = OrderedDict()
        reg = self.registry
        self._statements = Counter("hd_statements", "Statements by outcome (ok, denied, error) and failing stage.",
                                   ["outcome", "stage", "statement_kind"], registry=reg)
        self._failures = Counter("hd_statement_failures", "Failed or denied statements by stage, SQLSTATE class "
                                 "and HD_ERR code.", ["stage", "sqlstate_class", "code"], registry=reg)
        self._org_statements = Counter("hd_org_statements", "Statements per organisation by outcome.",
                                       ["org_id", "outcome"], registry=reg)
        self._duration = Histogram("hd_statement_duration_seconds", "Statement time from arrival to audit record.",
                                   ["outcome"], buckets=LATENCY_BUCKETS_SECONDS, registry=reg)
        self._rows = Counter("hd_statement_returned_rows", "Rows returned to clients.", registry=reg)
        self._bytes = Counter("hd_statement_returned_bytes", "Bytes of result data returned to clients.",
                              registry=reg)
        self._result_rows = Histogram("hd_statement_result_rows", "Rows per successful statement.",
                                      buckets=RESULT_ROW_BUCKETS, registry=reg)
        self._result_bytes = Histogram("hd_statement_result_bytes", "Result bytes per successful statement.",
                                       buckets=RESULT_BYTE_BUCKETS, registry=reg)
        self._auth_failures = Counter("hd_auth_failures", "Failed client authentications by HD_ERR code.",
                                      ["reason"], registry=reg)
        self._audit_failures = Counter("hd_audit_write_failures", "Audit records that could not be stored "
                                       "(each failed its statement).", registry=reg)
        self._readings = _Readings(self._org_label, now)
        reg.register(self._readings)

    # --- events --------------------------------------------------------------------------------

    def observe_statement(self, record: Mapping[str, object]) -> None:
        """Count one stored query audit record (the AuditWriter's `on_record`)."""
        if self._is_interim(record):
            return
        outcome, stage = statement_outcome(record)
        kind = _allowed(record.get("statement_kind") or "unknown", STATEMENT_KINDS | {"unknown"})
        self._statements.labels(outcome, stage, kind).inc()
        self._org_statements.labels(self._org_label(record.get("org_id")), outcome).inc()
        error = record.get("error")
        if isinstance(error, Mapping):
            self._failures.labels(stage, _sqlstate_class(error.get("sqlstate")), _code(error.get("code"))).inc()
        rows, size = _count(record.get("rows_returned")), _count(record.get("bytes_returned"))
        self._rows.inc(rows)
        self._bytes.inc(size)
        if outcome == "ok":
            self._result_rows.observe(rows)
            self._result_bytes.observe(size)
        timings = record.get("timings_ms")
        total_ms = timings.get("total") if isinstance(timings, Mapping) else None
        if isinstance(total_ms, int | float) and math.isfinite(total_ms) and total_ms >= 0:
            self._duration.labels(outcome).observe(total_ms / 1000)

    def audit_write_failed(self) -> None:
        """Count an audit record that could not be stored (the AuditWriter's `on_write_failure`)."""
        self._audit_failures.inc()

    def auth_failed(self, reason_code: str) -> None:
        """Count a failed authentication; `reason_code` is the HD_ERR_* code, nothing more specific."""
        self._auth_failures.labels(_code(reason_code)).inc()

    # --- scrape-time sources -------------------------------------------------------------------

    def bind_sessions(self, fn: SessionsReading) -> None:
        """Open client sessions, e.g. `lambda: server.connection_count`."""
        self._readings.bind("sessions", fn)

    def bind_gate(self, fn: GateReading) -> None:
        """The concurrency gate: {"in_flight", "queued", optional "limit", "queue_limit"}; see `gate_reading`."""
        self._readings.bind("gate", fn)

    def bind_cache(self, fn: CacheReading) -> None:
        """Object cache counters and usage, e.g. `ObjectCache.stats`."""
        self._readings.bind("cache", fn)

    def bind_quota(self, fn: QuotaReading) -> None:
        """Month-to-date credits against each organisation's limit, e.g. `quota_utilisation.quota_reader(...)`."""
        self._readings.bind("quota", fn)

    def bind_heartbeat(self, fn: HeartbeatReading) -> None:
        """The heartbeat gate's status, e.g. `ServiceGate.status`."""
        self._readings.bind("heartbeat", fn)

    def bind_certificate(self, fn: CertificateReading) -> None:
        """When the served TLS certificate expires, e.g. `CertificateReloader.not_valid_after` (a property)."""
        self._readings.bind("certificate", fn)

    # --- labels --------------------------------------------------------------------------------

    def _org_label(self, org_id: object) -> str:
        if not isinstance(org_id, str) or _ORG_ID.fullmatch(org_id) is None:
            return OTHER
        with self._lock:
            if org_id in self._orgs:
                return org_id
            if len(self._orgs) >= MAX_ORG_LABELS:
                return OTHER
            self._orgs.add(org_id)
            return org_id

    def _is_interim(self, record: Mapping[str, object]) -> bool:
        """A streamed result gets an interim record before its rows and a completion record: count the latter."""
        verdicts = record.get("verdicts")
        if not isinstance(verdicts, list) or not any(
                isinstance(v, Mapping) and v.get("stage") == "stream" for v in verdicts):
            return False
        query_id = record.get("query_id")
        with self._lock:
            if query_id in self._streaming:
                del self._streaming[query_id]
                return False
            self._streaming[query_id] = None
            while len(self._streaming) > _MAX_STREAMING:
                self._streaming.popitem(last=False)
            return True


class _Readings(Collector):
    """Gauges and counters read from bound callbacks at scrape time, plus whether each read worked."""

    def __init__(self, org_label: Callable[[object], str], now: Callable[[], datetime]) -> None:
        self._sources: dict[str, Callable[[], object]] = {}
        self._org_label = org_label
        self._now = now
        self._builders: dict[str, Callable[[object], Iterator[Metric]]] = {
            "sessions": self._sessions, "gate": self._gate, "cache": self._cache, "quota": self._quota,
            "heartbeat": self._heartbeat, "certificate": self._certificate,
        }

    def bind(self, source: str, fn: Callable[[], object]) -> None:
        self._sources = {**self._sources, source: fn}  # replaced whole: a scrape never sees a half-updated dict

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily("hd_metrics_source_up", "", labels=["source"])]

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("hd_metrics_source_up", "Whether the last scrape-time read of each bound source "
                               "worked (1) or raised (0).", labels=["source"])
        for source, fn in sorted(self._sources.items()):
            try:
                families = list(self._builders[source](fn()))
            except Exception:  # a broken source must not take the other metrics down with it
                log.warning("metrics source %s could not be read", source, exc_info=True)
                up.add_metric([source], 0.0)
                continue
            up.add_metric([source], 1.0)
            yield from families
        yield up

    @staticmethod
    def _sessions(value: object) -> Iterator[Metric]:
        yield GaugeMetricFamily("hd_sessions_active", "Open client sessions.", value=_number(value))

    @staticmethod
    def _gate(value: object) -> Iterator[Metric]:
        reading = _mapping(value)
        yield GaugeMetricFamily("hd_statements_in_flight", "Statements holding a concurrency slot.",
                                value=_number(reading["in_flight"]))
        yield GaugeMetricFamily("hd_statements_queued", "Statements waiting for a concurrency slot.",
                                value=_number(reading["queued"]))
        if "limit" in reading:
            yield GaugeMetricFamily("hd_statements_in_flight_limit", "Concurrency slots of this host.",
                                    value=_number(reading["limit"]))
        if "queue_limit" in reading:
            yield GaugeMetricFamily("hd_statements_queue_limit", "Statements that may wait for a slot.",
                                    value=_number(reading["queue_limit"]))

    @staticmethod
    def _cache(value: object) -> Iterator[Metric]:
        stats = _mapping(value)
        for key, (name, documentation) in _CACHE_COUNTERS.items():
            if key in stats:
                yield CounterMetricFamily(name, documentation, value=_number(stats[key]))
        for key, (name, documentation) in _CACHE_GAUGES.items():
            if key in stats:
                yield GaugeMetricFamily(name, documentation, value=_number(stats[key]))

    def _quota(self, value: object) -> Iterator[Metric]:
        used = GaugeMetricFamily("hd_quota_used_credits", "Month-to-date credits used.", labels=["org_id"])
        limit = GaugeMetricFamily("hd_quota_limit_credits", "Monthly credit limit.", labels=["org_id"])
        ratio = GaugeMetricFamily("hd_quota_utilisation_ratio", "Month-to-date credits / monthly limit.",
                                  labels=["org_id"])
        if not isinstance(value, Iterable):
            raise TypeError("the quota source must return an iterable of OrgQuotaUse")
        for use in value:
            if not isinstance(use, OrgQuotaUse):
                raise TypeError("the quota source must return an iterable of OrgQuotaUse")
            org = [self._org_label(use.org_id)]
            used.add_metric(org, use.used_credits)
            limit.add_metric(org, use.limit_credits)
            ratio.add_metric(org, use.ratio)
        yield from (used, limit, ratio)

    def _heartbeat(self, value: object) -> Iterator[Metric]:
        status = _mapping(value)
        state = status.get("state")
        known = {s.value for s in GateState}
        if state not in known:
            raise ValueError("the heartbeat source reported an unknown state")
        states = GaugeMetricFamily("hd_heartbeat_state", "Heartbeat gate state: 1 for the current one.",
                                   labels=["state"])
        for name in sorted(known):
            states.add_metric([name], 1.0 if name == state else 0.0)
        yield states
        grace_ends_at = _instant(status.get("grace_ends_at"))
        if grace_ends_at is not None:
            remaining = max(0.0, (grace_ends_at - self._now()).total_seconds())
            yield GaugeMetricFamily("hd_heartbeat_grace_remaining_seconds", "Seconds until the host refuses new "
                                    "connections (present only while a grace period runs).", value=remaining)
        last_ok_at = _instant(status.get("last_ok_at"))
        if last_ok_at is not None:
            yield GaugeMetricFamily("hd_heartbeat_last_ok_timestamp_seconds", "When the control plane last "
                                    "answered positively (Unix time).", value=last_ok_at.timestamp())

    @staticmethod
    def _certificate(value: object) -> Iterator[Metric]:
        if not isinstance(value, datetime):
            raise TypeError("the certificate source must return the expiry as a datetime")
        yield GaugeMetricFamily("hd_tls_certificate_expiry_timestamp_seconds", "When the TLS certificate served "
                                "to new connections expires (Unix time).", value=value.timestamp())


_CACHE_COUNTERS = {
    "hits": ("hd_cache_hits", "Cache lookups served from a local copy."),
    "misses": ("hd_cache_misses", "Cache lookups that fetched the object."),
    "refetches": ("hd_cache_refetches", "Objects fetched again because they changed at the source."),
    "evictions": ("hd_cache_evictions", "Objects evicted to stay under the high-water mark."),
    "bytes_fetched": ("hd_cache_fetched_bytes", "Bytes downloaded from the object source."),
}
_CACHE_GAUGES = {
    "usage_bytes": ("hd_cache_usage_bytes", "Bytes held in the cache."),
    "saturation": ("hd_cache_saturation_ratio", "Cache usage / capacity."),
}


def _allowed(value: object, allowed: frozenset[str]) -> str:
    return value if isinstance(value, str) and value in allowed else OTHER


def _code(value: object) -> str:
    return value if isinstance(value, str) and _CODE.fullmatch(value) else OTHER


def _sqlstate_class(value: object) -> str:
    return value[:2] if isinstance(value, str) and _SQLSTATE.fullmatch(value) else OTHER


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _mapping(value: object) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    return value


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    at = datetime.fromisoformat(value)
    if at.utcoffset() is None:
        raise ValueError("heartbeat times must be timezone-aware")
    return at
