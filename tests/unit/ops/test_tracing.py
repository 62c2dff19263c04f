"""Statement traces and the span attribute allow list, on the real OpenTelemetry SDK (in-memory exporter)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engine_host.ops.tracing import StatementTracer
from hd_core.telemetry import span_attributes, traces_url


@dataclass
class _Statement:
    query_id: str = "q_0123456789abcdef0123"
    statement_kind: str = "select"
    error: dict[str, str] | None = None
    rows: int = 3
    verdicts: list[dict[str, str]] = field(default_factory=list)
    plan: Any = None


class _Refused(Exception):
    sqlstate, code = "58030", "HD_ERR_AUDIT_UNAVAILABLE"


@pytest.fixture
def exported() -> tuple[StatementTracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return StatementTracer(provider), exporter


def test_a_record_that_cannot_be_written_ends_the_trace_as_an_error_on_the_audit_stage(
    exported: tuple[StatementTracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = exported
    trace = tracer.begin()
    trace.open_stage("execute")
    with pytest.raises(_Refused), trace.recording(_Statement()):
        raise _Refused()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"hd.statement", "hd.stage.execute", "hd.stage.audit"}
    assert spans["hd.statement"].attributes["hd.outcome"] == "error"
    assert spans["hd.stage.audit"].attributes["db.response.status_code"] == "58030"
    assert spans["hd.stage.execute"].attributes["hd.decision"] == "allow"


def test_a_tracer_that_fails_never_fails_the_statement(exported: tuple[StatementTracer, InMemorySpanExporter],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    tracer, _ = exported

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter bug")

    monkeypatch.setattr(tracer, "emit", broken)
    written = []
    with tracer.begin().recording(_Statement()):
        written.append(True)
    assert written == [True]
    assert "its spans could not be made (RuntimeError)" in caplog.text


@pytest.mark.parametrize(("name", "value"), [
    ("hd.statement.kind", "SELECT * FROM t WHERE ssn = '123'"),
    ("hd.query_id", "q_' OR 1=1"),
    ("db.response.status_code", "42P01 secret"),
    ("hd.error.code", "HD_ERR_X: value 123-45-6789"),
    ("hd.rows", True),
    ("hd.rows", "12"),
    ("db.statement", "SELECT 1"),
    ("enduser.id", "usr_1"),
])
def test_the_allow_list_drops_unknown_names_and_values_of_the_wrong_shape(name: str, value: object) -> None:
    assert span_attributes({name: value}) == {}


def test_the_allow_list_keeps_what_it_names() -> None:
    kept = {"hd.query_id": "q_0123456789abcdef0123", "hd.statement.kind": "select", "hd.rows": 0,
            "db.response.status_code": "42P01", "hd.error.code": "HD_ERR_UNKNOWN_TABLE", "hd.outcome": "denied"}
    assert span_attributes(kept) == kept


@pytest.mark.parametrize(("endpoint", "url"), [
    ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
    ("https://collector.internal:4318/", "https://collector.internal:4318/v1/traces"),
    ("http://localhost:4318/v1/traces", "http://localhost:4318/v1/traces"),
    ("  ", None),
])
def test_the_endpoint_is_a_base_url_to_which_v1_traces_is_added(endpoint: str, url: str | None) -> None:
    assert traces_url({"HD_OTEL_ENDPOINT": endpoint}) == url
