"""Metrics of a real governed engine host: statements move the counters, and no SQL or user data leaks.

The host is LocalEngineHost in-process; HostMetrics is wired in the way the serving host composes it
(the AuditWriter's observers, the credentials' failure hook, scrape-time sources) by replacing the
governor's AuditWriter and the server's authenticator after start. Statements go through psycopg
over the wire; /metrics is scraped over HTTP from a HealthServer on an ephemeral port.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine_host.ops.health_server import HealthServer
from engine_host.ops.metrics import HostMetrics, gate_reading
from engine_host.ops.quota_utilisation import quota_reader
from engine_host.pipeline.governor import AuditWriter
from engine_host.runtime.local import LocalConfig, LocalEngineHost
from engine_host.wire.credentials import EngineCredentials
from hd_core.api_keys import ApiKeyAuthenticator
from hd_core.bootstrap import ensure_pepper
from hd_core.policies import QuotaLimit
from hd_core.quotas import quota_id_for
from tests.harness import BackgroundLoop, SwitchableAuditSink

SECRET = "hdsecret7f3a9c1e5b"  # a literal that must appear in no metric: looks like a token, appears nowhere else
TABLE = "patients_q7"


class _Wired:
    """The started host, its metrics and the health endpoint."""

    def __init__(self, host: LocalEngineHost, metrics: HostMetrics, health: HealthServer, sink: SwitchableAuditSink,
                 state_dir: Path) -> None:
        self.host, self.metrics, self.health, self.sink, self.state_dir = host, metrics, health, sink, state_dir
        assert host.banner is not None and host.server is not None
        self.org_id = host.banner.org_id
        self.user = host.banner.user
        self.key = (state_dir / "owner.key").read_text().strip()
        self.dsn = (f"host=127.0.0.1 port={host.server.port} dbname=hd user={self.user} password={self.key} "
                    "sslmode=disable connect_timeout=10")

    def scrape(self) -> str:
        connection = http.client.HTTPConnection("127.0.0.1", self.health.port, timeout=10)
        try:
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            assert response.status == 200
            return response.read().decode()
        finally:
            connection.close()


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(text: str, name: str, **labels: str) -> float:
    return _samples(text).get((name, frozenset(labels.items())), 0.0)


def _sum(text: str, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in _samples(text).items()
               if sample == name and wanted <= sample_labels)


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[_Wired]:
    loop = BackgroundLoop()
    sink = SwitchableAuditSink()
    host = LocalEngineHost(LocalConfig(state_dir=tmp_path, port=0, insecure_plaintext=True), audit_sink=sink)
    loop.run(host.start())
    health: HealthServer | None = None
    try:
        engine, store = host.engine, host.store
        assert engine is not None and engine.pipeline is not None and engine.server is not None
        assert engine.policies is not None and engine.meter is not None and store is not None
        metrics = HostMetrics()
        governor = engine.pipeline.governor
        governor.audit = AuditWriter(sink, on_record=metrics.observe_statement,
                                     on_write_failure=metrics.audit_write_failed)
        server = engine.server
        credentials = EngineCredentials(ApiKeyAuthenticator(store, ensure_pepper(store)),
                                        on_failure=metrics.auth_failed)
        server.verifier.authenticate = credentials.authenticate
        metrics.bind_sessions(lambda: server.connection_count)
        metrics.bind_gate(gate_reading(governor.gate))
        metrics.bind_quota(quota_reader(engine.policies, engine.meter))
        policies = engine.policies
        health = HealthServer(metrics, "127.0.0.1", 0, {"policy_snapshot": lambda: policies.ready})
        health.start()
        yield _Wired(host, metrics, health, sink, tmp_path)
    finally:
        if health is not None:
            health.stop()
        loop.run(host.stop())
        loop.close()


def _fails(conn: psycopg.Connection[Any], sql: str) -> str | None:
    """Run `sql` expecting an error; return its HD_ERR code (DETAIL)."""
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(sql)
    return caught.value.diag.message_detail


def test_statements_move_the_counters_and_no_literal_table_or_user_reaches_the_metrics(wired: _Wired) -> None:
    with psycopg.connect(wired.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {TABLE} (id INTEGER, ssn VARCHAR)")
        conn.execute(f"INSERT INTO {TABLE} VALUES (1, '{SECRET}'), (2, 'x')")
        rows = conn.execute(f"SELECT id, ssn FROM {TABLE} WHERE ssn = '{SECRET}' OR id = 2").fetchall()
        assert len(rows) == 2
        assert _fails(conn, f"SELECT CAST('{SECRET}' AS INTEGER) FROM {TABLE}") is not None  # engine error
        assert _fails(conn, f"SELECT ssn FROM {TABLE} WHERE ssn = '{SECRET}' AND") == "HD_ERR_SYNTAX"
        assert _fails(conn, f"CREATE VIEW v_{SECRET} AS SELECT '{SECRET}'") is not None  # refused by the guard
        wired.sink.failing = True
        assert _fails(conn, f"SELECT ssn FROM {TABLE} WHERE ssn = '{SECRET}'") == "HD_ERR_AUDIT_UNAVAILABLE"
        wired.sink.failing = False
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(wired.dsn.replace(f"password={wired.key}", f"password=hd_live_{SECRET}"))
        during = wired.scrape()
    # The server notices the client's Terminate on its own task: wait for it rather than race it.
    deadline = time.monotonic() + 10
    after = wired.scrape()
    while _value(after, "hd_sessions_active") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        after = wired.scrape()

    kinds = {"statement_kind": "create_table"}
    assert _value(during, "hd_statements_total", outcome="ok", stage="none", **kinds) == 1
    assert _value(during, "hd_statements_total", outcome="ok", stage="none", statement_kind="insert") == 1
    assert _value(during, "hd_statements_total", outcome="ok", stage="none", statement_kind="select") >= 1
    assert _sum(during, "hd_statements_total", outcome="error", stage="engine") == 1
    assert _sum(during, "hd_statements_total", outcome="error", stage="syntax") == 1
    assert _sum(during, "hd_statements_total", outcome="denied", stage="guard") == 1
    assert _sum(during, "hd_statement_failures_total", stage="syntax", sqlstate_class="42", code="HD_ERR_SYNTAX") == 1
    assert _value(during, "hd_org_statements_total", org_id=wired.org_id, outcome="ok") >= 3
    assert _value(during, "hd_statement_returned_rows_total") >= 2
    assert _value(during, "hd_statement_duration_seconds_count", outcome="ok") >= 3
    assert _value(during, "hd_audit_write_failures_total") == 1
    assert _sum(during, "hd_auth_failures_total") == 1
    assert _value(during, "hd_sessions_active") == 1
    assert _value(after, "hd_sessions_active") == 0
    assert _value(during, "hd_statements_in_flight") == 0
    assert _value(during, "hd_metrics_source_up", source="quota") == 1

    secrets_of_the_run = [SECRET, TABLE, wired.user, wired.key, wired.key[:16], "127.0.0.1", str(wired.state_dir),
                          "SELECT", "INSERT", "WHERE", "Conversion", "convert", "usr_", "hd_live_", "key_"]
    key_ids = [record.key_id for record in wired.host.store.list_api_keys(wired.org_id)]  # type: ignore[union-attr]
    assert key_ids
    for text in (during, after):
        for leaked in [*secrets_of_the_run, *key_ids]:
            assert leaked not in text, f"{leaked!r} appears in the metrics"


def test_quota_utilisation_and_quota_denials_are_reported_per_organisation(wired: _Wired) -> None:
    store, engine = wired.host.store, wired.host.engine
    assert store is not None and engine is not None and engine.policies is not None
    policies = engine.policies
    with psycopg.connect(wired.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {TABLE} (id INTEGER)")
        store.put_policy(QuotaLimit(quota_id=quota_id_for(wired.org_id), org_id=wired.org_id,
                                    monthly_credits=0.0001))  # less than one statement costs
        policies.load()
        assert _fails(conn, f"SELECT id FROM {TABLE} WHERE id = 42") == "HD_ERR_QUOTA_EXCEEDED"
    text = wired.scrape()
    assert _sum(text, "hd_statements_total", outcome="denied", stage="quota") == 1
    assert _value(text, "hd_org_statements_total", org_id=wired.org_id, outcome="denied") == 1
    assert _value(text, "hd_quota_limit_credits", org_id=wired.org_id) == 0.0001
    assert _value(text, "hd_quota_utilisation_ratio", org_id=wired.org_id) > 1
    assert TABLE not in text


def test_a_streamed_result_counts_as_one_statement_with_all_its_rows(wired: _Wired) -> None:
    with psycopg.connect(wired.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {TABLE} AS SELECT i AS id FROM generate_series(1, 70000) AS s(i)")
        first = wired.scrape()
        assert len(conn.execute(f"SELECT id FROM {TABLE}").fetchall()) == 70_000  # past the audit read-ahead
    text = wired.scrape()
    selects = {"outcome": "ok", "stage": "none", "statement_kind": "select"}
    assert _value(text, "hd_statements_total", **selects) == _value(first, "hd_statements_total", **selects) + 1
    assert _value(text, "hd_statement_result_rows_count") == _value(first, "hd_statement_result_rows_count") + 1
    # Counted with all its rows, once: not the read-ahead of the interim record, and not both records.
    rows = "hd_statement_returned_rows_total"
    assert _value(text, rows) - _value(first, rows) == 70_000
    assert sum(1 for record in wired.sink.records if record.get("rows_returned") == 70_000) == 1
