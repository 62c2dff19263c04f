"""HostMetrics: statement metrics from audit records, scrape-time sources, and the hooks that feed them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from engine_host.data import ObjectCache
from engine_host.ops import metrics as metrics_module
from engine_host.ops.metrics import HostMetrics, gate_reading, statement_outcome
from engine_host.ops.quota_utilisation import OrgQuotaUse, quota_reader, quota_utilisation
from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.gates import ConcurrencyGate
from engine_host.pipeline.governor import AuditWriter, StatementAudit
from engine_host.pipeline.policy_state import PolicyState
from engine_host.wire.credentials import EngineCredentials
from hd_core.adapters.local_objects import LocalFolderObjectSource
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.api_keys import ApiKeyAuthenticator, ApiKeyHasher
from hd_core.audit import QueryAuditRecord
from hd_core.bootstrap import LocalOwner, bootstrap_local_owner, ensure_pepper
from hd_core.errors import AuthenticationFailed, HdError
from hd_core.heartbeat import HeartbeatVerdict, ServiceGate
from hd_core.metering import UsageMeter
from hd_core.models import Role
from hd_core.policies import PolicySnapshot, QuotaLimit
from hd_core.policy_eval import Subject

ORG = "org_acme"


def _record(*, kind: str | None = "select", verdicts: tuple[tuple[str, str], ...] = (("guard", "allow"),),
            error: tuple[str, str] | None = None, rows: int = 0, size: int = 0, total_ms: float | None = 12.0,
            org_id: str = ORG, query_id: str | None = None) -> dict[str, object]:
    """A query audit record as the AuditWriter stores it (built through QueryAuditRecord itself)."""
    record = QueryAuditRecord.begin(sql="SELECT 1", org_id=org_id, user_id="usr_1", key_id="key_1",
                                    role="analyst", source_ip="10.0.0.9", statement_kind=kind, query_id=query_id)
    for stage, decision in verdicts:
        record.add_verdict(stage, decision, "")  # type: ignore[arg-type]
    if error is not None:
        record.fail(sqlstate=error[0], code=error[1], message="boom")
    record.rows_returned, record.bytes_returned = rows, size
    if total_ms is not None:
        record.timings_ms["total"] = total_ms
    return record.to_dict()


def _value(metrics: HostMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# --- statements ------------------------------------------------------------------------------------------


def test_successful_statement_counts_outcome_rows_bytes_and_latency() -> None:
    metrics = HostMetrics()
    metrics.observe_statement(_record(rows=3, size=120, total_ms=42.0))
    assert _value(metrics, "hd_statements_total", outcome="ok", stage="none", statement_kind="select") == 1
    assert _value(metrics, "hd_org_statements_total", org_id=ORG, outcome="ok") == 1
    assert _value(metrics, "hd_statement_returned_rows_total") == 3
    assert _value(metrics, "hd_statement_returned_bytes_total") == 120
    assert _value(metrics, "hd_statement_duration_seconds_count", outcome="ok") == 1
    assert _value(metrics, "hd_statement_duration_seconds_sum", outcome="ok") == pytest.approx(0.042)
    assert _value(metrics, "hd_statement_duration_seconds_bucket", outcome="ok", le="0.05") == 1
    assert _value(metrics, "hd_statement_duration_seconds_bucket", outcome="ok", le="0.025") == 0
    assert _value(metrics, "hd_statement_result_rows_bucket", le="10.0") == 1
    assert _value(metrics, "hd_statement_result_rows_bucket", le="1.0") == 0


def test_policy_denial_is_counted_as_denied_at_its_stage_with_sqlstate_class_and_code() -> None:
    metrics = HostMetrics()
    metrics.observe_statement(_record(verdicts=(("guard", "allow"), ("tables", "allow"), ("policy", "deny")),
                                      error=("42501", "HD_ERR_CROSS_TENANT")))
    assert _value(metrics, "hd_statements_total", outcome="denied", stage="policy", statement_kind="select") == 1
    assert _value(metrics, "hd_statement_failures_total", stage="policy", sqlstate_class="42",
                  code="HD_ERR_CROSS_TENANT") == 1
    assert _value(metrics, "hd_statement_result_rows_count") == 0  # result size histograms: successes only


@pytest.mark.parametrize(("verdicts", "error", "expected"), [
    ((("guard", "deny"),), ("42601", "HD_ERR_SYNTAX"), ("error", "syntax")),
    ((("guard", "allow"), ("quota", "deny")), ("53400", "HD_ERR_QUOTA_EXCEEDED"), ("denied", "quota")),
    ((("concurrency", "deny"),), ("53300", "HD_ERR_SERVER_BUSY"), ("denied", "concurrency")),
    ((("guard", "allow"),), ("22012", "HD_ERR_DIVISION_BY_ZERO"), ("error", "engine")),
    ((("guard", "allow"),), ("57014", "HD_ERR_STATEMENT_TIMEOUT"), ("error", "timeout")),
    ((("guard", "allow"),), ("53400", "HD_ERR_MAX_ROWS_EXCEEDED"), ("denied", "max_rows")),
    ((("guard", "allow"),), ("42501", "HD_ERR_ROW_FILTER_CHECK"), ("denied", "row_filter")),
    ((), ("28000", "HD_ERR_CREDENTIAL_REVOKED"), ("denied", "credential")),
    ((("guard", "allow"),), ("58030", "HD_ERR_AUDIT_UNAVAILABLE"), ("error", "audit")),
    ((("guard", "allow"),), None, ("ok", "none")),
])
def test_outcome_and_stage_follow_the_deny_verdict_or_the_error_code(
        verdicts: tuple[tuple[str, str], ...], error: tuple[str, str] | None, expected: tuple[str, str]) -> None:
    assert statement_outcome(_record(verdicts=verdicts, error=error)) == expected


def test_streamed_statement_is_counted_once_from_its_completion_record() -> None:
    metrics = HostMetrics()
    streamed = (("guard", "allow"), ("stream", "allow"))
    metrics.observe_statement(_record(verdicts=streamed, rows=65_536, query_id="q_1"))  # before the first row
    assert _value(metrics, "hd_statements_total", outcome="ok", stage="none", statement_kind="select") is None
    metrics.observe_statement(_record(verdicts=streamed, rows=100_000, query_id="q_1"))  # completion
    assert _value(metrics, "hd_statements_total", outcome="ok", stage="none", statement_kind="select") == 1
    assert _value(metrics, "hd_statement_returned_rows_total") == 100_000


def test_label_values_outside_the_allowlists_become_other() -> None:
    metrics = HostMetrics()
    record = _record(kind="select ssn from patients", verdicts=(("policy where x='4111'", "deny"),),
                     error=("4111-1111", "password is hunter2"), org_id="org acme; DROP TABLE x")
    metrics.observe_statement(record)
    metrics.auth_failed("wrong secret for key key_abc from 10.1.2.3")
    text = generate_latest(metrics.registry).decode()
    assert _value(metrics, "hd_statements_total", outcome="denied", stage="other", statement_kind="other") == 1
    assert _value(metrics, "hd_statement_failures_total", stage="other", sqlstate_class="other", code="other") == 1
    assert _value(metrics, "hd_org_statements_total", org_id="other", outcome="denied") == 1
    assert _value(metrics, "hd_auth_failures_total", reason="other") == 1
    for leaked in ("patients", "4111", "hunter2", "DROP", "key_abc", "10.1.2.3", "boom", "usr_1", "SELECT 1"):
        assert leaked not in text


def test_organisation_labels_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "MAX_ORG_LABELS", 2)
    metrics = HostMetrics()
    for org in ("org_a", "org_b", "org_c", "org_a"):
        metrics.observe_statement(_record(org_id=org))
    assert _value(metrics, "hd_org_statements_total", org_id="org_a", outcome="ok") == 2
    assert _value(metrics, "hd_org_statements_total", org_id="org_b", outcome="ok") == 1
    assert _value(metrics, "hd_org_statements_total", org_id="org_c", outcome="ok") is None
    assert _value(metrics, "hd_org_statements_total", org_id="other", outcome="ok") == 1


def test_auth_and_audit_failures_are_counted() -> None:
    metrics = HostMetrics()
    metrics.auth_failed("HD_ERR_AUTH_FAILED")
    metrics.auth_failed("HD_ERR_AUTH_FAILED")
    metrics.auth_failed("HD_ERR_INVALID_API_KEY_FORMAT")
    metrics.audit_write_failed()
    assert _value(metrics, "hd_auth_failures_total", reason="HD_ERR_AUTH_FAILED") == 2
    assert _value(metrics, "hd_auth_failures_total", reason="HD_ERR_INVALID_API_KEY_FORMAT") == 1
    assert _value(metrics, "hd_audit_write_failures_total") == 1


def test_metrics_live_in_their_own_registry_not_the_global_one() -> None:
    first, second = HostMetrics(), HostMetrics()  # a second instance must not clash with the first
    first.observe_statement(_record())
    assert REGISTRY.get_sample_value("hd_statements_total",
                                     {"outcome": "ok", "stage": "none", "statement_kind": "select"}) is None
    assert _value(second, "hd_statements_total", outcome="ok", stage="none", statement_kind="select") is None


# --- scrape-time sources ------------------------------------------------------------------------------------


def test_unbound_sources_are_absent() -> None:
    text = generate_latest(HostMetrics().registry).decode()
    for name in ("hd_sessions_active", "hd_statements_in_flight", "hd_cache_hits", "hd_quota_", "hd_heartbeat_",
                 "hd_metrics_source_up{"):
        assert name not in text


def test_sessions_and_gate_are_read_at_scrape_time() -> None:
    metrics = HostMetrics()
    sessions = [3]
    gate = ConcurrencyGate(limit=1, queue=1, wait_seconds=5)
    metrics.bind_sessions(lambda: sessions[0])
    metrics.bind_gate(gate_reading(gate))
    gate.acquire()

    async def scrape_while_one_waits() -> None:  # statements queue on the event loop
        waiter = asyncio.create_task(gate.enter())
        await asyncio.sleep(0.01)
        try:
            assert _value(metrics, "hd_sessions_active") == 3
            assert _value(metrics, "hd_statements_in_flight") == 1
            assert _value(metrics, "hd_statements_queued") == 1
            assert _value(metrics, "hd_statements_in_flight_limit") == 1
            assert _value(metrics, "hd_statements_queue_limit") == 1
        finally:
            gate.release()
            await waiter
            gate.release()

    asyncio.run(scrape_while_one_waits())
    sessions[0] = 0
    assert _value(metrics, "hd_sessions_active") == 0
    assert _value(metrics, "hd_statements_queued") == 0
    assert _value(metrics, "hd_metrics_source_up", source="gate") == 1


def test_cache_stats_become_counters_and_gauges(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    (bucket / "sales").mkdir(parents=True)
    (bucket / "sales" / "orders.parquet").write_bytes(b"x" * 400)
    cache = ObjectCache(LocalFolderObjectSource(bucket), tmp_path / "cache", capacity_bytes=1000)
    metrics = HostMetrics()
    metrics.bind_cache(cache.stats)
    cache.path_for("sales/orders.parquet")
    cache.path_for("sales/orders.parquet")
    assert _value(metrics, "hd_cache_misses_total") == 1
    assert _value(metrics, "hd_cache_hits_total") == 1
    assert _value(metrics, "hd_cache_fetched_bytes_total") == 400
    assert _value(metrics, "hd_cache_evictions_total") == 0
    assert _value(metrics, "hd_cache_refetches_total") == 0
    assert _value(metrics, "hd_cache_usage_bytes") == 400
    assert _value(metrics, "hd_cache_saturation_ratio") == pytest.approx(0.4)
    assert "orders" not in generate_latest(metrics.registry).decode()


def test_heartbeat_state_and_grace_remaining_follow_the_gate_clock() -> None:
    clock = [datetime(2026, 1, 1, 12, 0, tzinfo=UTC)]
    gate = ServiceGate(now=lambda: clock[0])
    metrics = HostMetrics(now=lambda: clock[0])
    metrics.bind_heartbeat(gate.status)
    gate.record(HeartbeatVerdict(allowed=True, org_active=True, reason="ok"))
    assert _value(metrics, "hd_heartbeat_state", state="serving") == 1
    assert _value(metrics, "hd_heartbeat_state", state="degraded") == 0
    assert _value(metrics, "hd_heartbeat_grace_remaining_seconds") is None
    assert _value(metrics, "hd_heartbeat_last_ok_timestamp_seconds") == clock[0].timestamp()
    gate.record(None, error="timeout talking to control plane at 10.0.0.5")
    clock[0] += timedelta(hours=1)
    assert _value(metrics, "hd_heartbeat_state", state="degraded") == 1
    assert _value(metrics, "hd_heartbeat_grace_remaining_seconds") == 3 * 3600
    clock[0] += timedelta(hours=5)
    assert _value(metrics, "hd_heartbeat_state", state="refusing") == 1
    assert _value(metrics, "hd_heartbeat_grace_remaining_seconds") == 0
    assert "10.0.0.5" not in generate_latest(metrics.registry).decode()


def test_quota_utilisation_is_exposed_per_organisation() -> None:
    metrics = HostMetrics()
    metrics.bind_quota(lambda: [OrgQuotaUse("org_a", 25.0, 100.0), OrgQuotaUse("org_b", 0.0, 0.0)])
    assert _value(metrics, "hd_quota_used_credits", org_id="org_a") == 25
    assert _value(metrics, "hd_quota_limit_credits", org_id="org_a") == 100
    assert _value(metrics, "hd_quota_utilisation_ratio", org_id="org_a") == 0.25
    assert _value(metrics, "hd_quota_utilisation_ratio", org_id="org_b") == 1.0


def test_a_failing_source_is_reported_down_and_the_rest_still_scrape(caplog: pytest.LogCaptureFixture) -> None:
    metrics = HostMetrics()

    def broken() -> Mapping[str, float]:
        raise OSError("cache mount gone")

    metrics.bind_cache(broken)
    metrics.bind_sessions(lambda: 2)
    metrics.bind_heartbeat(lambda: {"state": "dancing"})
    with caplog.at_level(logging.WARNING):
        assert _value(metrics, "hd_sessions_active") == 2
    assert _value(metrics, "hd_metrics_source_up", source="cache") == 0
    assert _value(metrics, "hd_metrics_source_up", source="heartbeat") == 0
    assert _value(metrics, "hd_metrics_source_up", source="sessions") == 1
    assert "metrics source cache could not be read" in caplog.text


def test_full_exposition_parses_with_unique_metric_names(tmp_path: Path) -> None:
    metrics = HostMetrics()
    (tmp_path / "src").mkdir()
    cache = ObjectCache(LocalFolderObjectSource(tmp_path / "src"), tmp_path / "cache", capacity_bytes=10)
    metrics.bind_sessions(lambda: 1)
    metrics.bind_gate(gate_reading(ConcurrencyGate()))
    metrics.bind_cache(cache.stats)
    metrics.bind_quota(lambda: [OrgQuotaUse("org_a", 1.0, 2.0)])
    metrics.bind_heartbeat(ServiceGate().status)
    metrics.observe_statement(_record())
    metrics.auth_failed("HD_ERR_AUTH_FAILED")
    metrics.audit_write_failed()
    names = [family.name for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())]
    assert len(names) == len(set(names))
    assert all(name.startswith("hd_") for name in names)
    assert {"hd_statements", "hd_cache_hits", "hd_heartbeat_state", "hd_quota_utilisation_ratio",
            "hd_metrics_source_up"} <= set(names)


# --- quota utilisation ----------------------------------------------------------------------------------------


class _FailingUsageStore:
    """A usage store whose reads fail (the control store is unreachable)."""

    def add_usage(self, deltas: object) -> None:
        raise OSError("unreachable")

    def usage(self, org_id: str, start: object, end: object) -> list[object]:
        raise OSError("unreachable")


def test_quota_utilisation_reports_orgs_with_a_monthly_limit(tmp_path: Path) -> None:
    store = SqliteControlStore(tmp_path / "control.sqlite3")
    now = datetime(2026, 3, 10, tzinfo=UTC)
    meter = UsageMeter(store)
    meter.record("org_a", "usr_1", None, 30.0, 10, 100, now)
    meter.flush()
    meter.record("org_a", "usr_1", None, 10.0, 10, 100, now)  # not yet flushed: still counted
    snapshot = PolicySnapshot(version=1, quotas=(
        QuotaLimit(quota_id="quota_org_a", org_id="org_a", monthly_credits=80.0),
        QuotaLimit(quota_id="quota_org_b", org_id="org_b", max_rows_per_query=10),  # no credit limit
    ))
    assert quota_utilisation(snapshot, meter, now) == [OrgQuotaUse("org_a", 40.0, 80.0)]
    assert quota_utilisation(snapshot, meter, now)[0].ratio == 0.5
    store.close()


def test_quota_utilisation_leaves_out_orgs_whose_usage_cannot_be_read() -> None:
    snapshot = PolicySnapshot(version=1, quotas=(QuotaLimit(quota_id="q", org_id="org_a", monthly_credits=5.0),))
    meter = UsageMeter(_FailingUsageStore())  # type: ignore[arg-type]
    assert quota_utilisation(snapshot, meter, datetime(2026, 3, 10, tzinfo=UTC)) == []


def test_quota_reader_is_empty_until_the_policy_snapshot_is_loaded(tmp_path: Path) -> None:
    store = SqliteControlStore(tmp_path / "control.sqlite3")
    store.put_policy(QuotaLimit(quota_id="quota_org_a", org_id="org_a", monthly_credits=10.0))
    policies = PolicyState(store)
    read = quota_reader(policies, UsageMeter(store), now=lambda: datetime(2026, 3, 10, tzinfo=UTC))
    assert read() == []
    policies.load()
    assert read() == [OrgQuotaUse("org_a", 0.0, 10.0)]
    store.close()


# --- the hooks: AuditWriter observers and EngineCredentials.on_failure ---------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.records: list[Mapping[str, object]] = []
        self.failing = False

    def write(self, record: Mapping[str, object]) -> None:
        if self.failing:
            raise HdError("audit storage unavailable")
        self.records.append(record)


def _subject() -> Subject:
    return Subject(user_id="usr_1", org_id=ORG, role=Role.ANALYST, scopes=(), key_id="key_1", env="live")


def _audit() -> StatementAudit:
    audit = StatementAudit(query_id="q_test", sql="SELECT 1", dialect="postgres", started=time.perf_counter())
    audit.allow("guard")
    audit.timings_ms["total"] = 1.0
    return audit


def test_audit_writer_tells_the_observer_each_stored_record() -> None:
    sink, seen = _Sink(), list[object]()
    writer = AuditWriter(sink, on_record=seen.append, on_write_failure=lambda: seen.append("failed"))
    writer.write(_subject(), {}, _audit())
    assert seen == sink.records
    assert sink.records[0]["query_id"] == "q_test"


def test_audit_writer_reports_a_failed_write_and_still_fails_closed() -> None:
    sink, seen = _Sink(), list[object]()
    sink.failing = True
    writer = AuditWriter(sink, on_record=seen.append, on_write_failure=lambda: seen.append("failed"))
    with pytest.raises(QueryError) as caught:
        writer.write(_subject(), {}, _audit())
    assert caught.value.code == "HD_ERR_AUDIT_UNAVAILABLE"
    assert seen == ["failed"]


def test_a_raising_audit_observer_never_changes_the_statement(caplog: pytest.LogCaptureFixture) -> None:
    def explode(*_: object) -> None:
        raise RuntimeError("observer bug")

    sink = _Sink()
    with caplog.at_level(logging.ERROR):
        AuditWriter(sink, on_record=explode).write(_subject(), {}, _audit())
    assert len(sink.records) == 1
    assert "audit record observer failed" in caplog.text
    sink.failing = True
    with pytest.raises(QueryError) as caught:
        AuditWriter(sink, on_write_failure=explode).write(_subject(), {}, _audit())
    assert caught.value.code == "HD_ERR_AUDIT_UNAVAILABLE"


OwnerCredentials = tuple[SqliteControlStore, ApiKeyAuthenticator, LocalOwner]


@pytest.fixture
def owner_credentials(tmp_path: Path) -> Iterator[OwnerCredentials]:
    store = SqliteControlStore(tmp_path / "control.sqlite3")
    hasher = ApiKeyHasher()
    owner = bootstrap_local_owner(store, hasher)
    yield store, ApiKeyAuthenticator(store, ensure_pepper(store), hasher=hasher), owner
    store.close()


def test_engine_credentials_report_each_failure_code_and_nothing_on_success(
        owner_credentials: OwnerCredentials) -> None:
    _, authenticator, owner = owner_credentials
    assert owner.api_key_plaintext is not None
    codes: list[str] = []
    credentials = EngineCredentials(authenticator, on_failure=codes.append)
    assert credentials.authenticate(owner.user.user_id, owner.api_key_plaintext).user_id == owner.user.user_id
    assert codes == []
    wrong = owner.api_key_plaintext[:-4] + ("AAAA" if not owner.api_key_plaintext.endswith("AAAA") else "BBBB")
    for password in (wrong, "not-a-key", "eyJhbGciOi.eyJzdWIi.c2ln"):
        with pytest.raises(AuthenticationFailed):
            credentials.authenticate(owner.user.user_id, password)
    assert len(codes) == 3
    assert all(code.startswith("HD_ERR_") for code in codes)


def test_a_raising_failure_hook_leaves_authentication_failed_as_it_was(owner_credentials: OwnerCredentials) -> None:
    _, authenticator, owner = owner_credentials

    def explode(code: str) -> None:
        raise RuntimeError("metrics bug")

    credentials = EngineCredentials(authenticator, on_failure=explode)
    with pytest.raises(AuthenticationFailed) as caught:
        credentials.authenticate(owner.user.user_id, "not-a-key")
    assert str(caught.value) == AuthenticationFailed.generic_message
