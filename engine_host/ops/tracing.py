"""Statement traces: a span per statement and a child per pipeline stage, only when `HD_OTEL_ENDPOINT` is set.

Unset (the default), `statement_tracer_from_environment` returns None, the governor carries no trace
on any statement, and OpenTelemetry is never imported. Set, each stage notes its start and end as
it runs (three integers on the statement's audit, no span objects on the hot path), and the spans
are made when the statement's one audit record is written: a statement that leaves a record leaves
one trace, and a plan made and then dropped (a Parse never executed) leaves none.

Spans: `hd.statement` (SERVER) from the statement's start to its record, with children
`hd.stage.<stage>` for guard, tables, policy, plan_check, rate_limit, abac, quota, concurrency,
execute (DuckDB and the rows' way to the client) and audit (the record's write). Attributes pass
`hd_core.telemetry.span_attributes`: query id, statement kind, tables count, rows, outcome,
SQLSTATE and HD_ERR code; never SQL text, a literal, a key, an identity or a row value.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from hd_core.telemetry import OTEL_ENDPOINT_ENV, span_attributes, traces_url

log = logging.getLogger(__name__)

TRACER_NAME = "hardened_duck.engine"
SERVICE_NAME = "hardened-duck-engine"
STATEMENT_SPAN = "hd.statement"
STAGE_SPAN_PREFIX = "hd.stage."


class Refusal(Protocol):
    """What a stage's failure tells a trace: its SQLSTATE and HD_ERR code (never its message)."""

    sqlstate: str
    code: str


class TracedStatement(Protocol):
    """The parts of a statement's audit a trace reads when it ends."""

    query_id: str
    statement_kind: str
    error: dict[str, str] | None
    rows: int
    verdicts: list[dict[str, str]]

    @property
    def plan(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class _Stage:
    name: str
    start_ns: int
    end_ns: int
    sqlstate: str | None = None
    code: str | None = None


class StatementTrace:
    """One statement's stage timings, turned into spans when its record is written."""

    __slots__ = ("_open", "_stages", "_tracer", "start_ns")

    def __init__(self, tracer: StatementTracer) -> None:
        self._tracer = tracer
        self.start_ns = time.time_ns()
        self._stages: list[_Stage] = []
        self._open: tuple[str, int] | None = None

    def stage(self, name: str, started_ns: int, refused: Refusal | None = None) -> None:
        """Note a stage that ran from `started_ns` until now, refusing the statement with `refused` if given."""
        self._stages.append(_Stage(name, started_ns, time.time_ns(), *_failure(refused)))

    def open_stage(self, name: str) -> None:
        """Start a stage that lasts until the statement's record is written (execution and streaming)."""
        self._close_open()
        self._open = (name, time.time_ns())

    @contextmanager
    def recording(self, statement: TracedStatement) -> Iterator[None]:
        """Around the record's write: ends an open stage, times the write as `audit`, then emits the spans."""
        self._close_open()
        began = time.time_ns()
        try:
            yield
        except Exception as exc:
            refused = exc if hasattr(exc, "sqlstate") and hasattr(exc, "code") else None
            self.stage("audit", began, refused)
            self._tracer.emit_safely(self, statement, refused)
            raise
        self.stage("audit", began)
        self._tracer.emit_safely(self, statement)

    @property
    def stages(self) -> tuple[_Stage, ...]:
        return tuple(self._stages)

    def _close_open(self) -> None:
        if self._open is not None:
            name, began = self._open
            self._open = None
            self.stage(name, began)


class StatementTracer:
    """Makes the spans of finished statements through an OpenTelemetry `TracerProvider`."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._provider = provider
        self._tracer = provider.get_tracer(TRACER_NAME)
        self._in_context = trace.set_span_in_context
        self._server, self._failed = SpanKind.SERVER, Status(StatusCode.ERROR)

    def begin(self) -> StatementTrace:
        """The trace of a statement starting now."""
        return StatementTrace(self)

    def emit_safely(self, trace: StatementTrace, statement: TracedStatement, refused: Refusal | None = None) -> None:
        """`emit`, where a failure is logged by type and never changes the statement's outcome."""
        try:
            self.emit(trace, statement, refused)
        except Exception as exc:  # noqa: BLE001 - tracing only watches; the statement has its record already
            log.error("statement %s: its spans could not be made (%s)", statement.query_id, type(exc).__name__)

    def emit(self, trace: StatementTrace, statement: TracedStatement, refused: Refusal | None = None) -> None:
        """The statement's span and its stages' spans, handed to the batch exporter."""
        end_ns = time.time_ns()
        error = statement.error
        sqlstate, code = _failure(refused) if refused is not None else (
            (error["sqlstate"], error["code"]) if error else (None, None))
        denied = any(verdict.get("decision") == "deny" for verdict in statement.verdicts)
        outcome = "ok" if sqlstate is None else "denied" if denied else "error"
        plan = statement.plan
        root = self._tracer.start_span(STATEMENT_SPAN, kind=self._server, start_time=trace.start_ns,
                                       attributes=span_attributes({
                                           "hd.query_id": statement.query_id,
                                           "hd.statement.kind": statement.statement_kind or None,
                                           "hd.tables.count": len({name for name, *_ in plan.tables}) if plan else 0,
                                           "hd.rows": statement.rows, "hd.outcome": outcome,
                                           "db.response.status_code": sqlstate, "hd.error.code": code}))
        parent = self._in_context(root)
        for stage in trace.stages:
            span = self._tracer.start_span(STAGE_SPAN_PREFIX + stage.name, context=parent, start_time=stage.start_ns,
                                           attributes=span_attributes({
                                               "hd.stage": stage.name,
                                               "hd.decision": "deny" if stage.sqlstate else "allow",
                                               "db.response.status_code": stage.sqlstate,
                                               "hd.error.code": stage.code}))
            if stage.sqlstate:
                span.set_status(self._failed)
            span.end(end_time=stage.end_ns)
        if sqlstate is not None:
            root.set_status(self._failed)
        root.end(end_time=end_ns)

    def shutdown(self) -> None:
        """Send what is batched and stop the exporter (the host's stop)."""
        self._provider.shutdown()


def statement_tracer_from_environment(environ: Mapping[str, str] | None = None, *, instance: str | None = None,
                                      configured: str | None = None) -> StatementTracer | None:
    """The tracer `configured` (a fleet host's EngineConfig.otel_endpoint) or else `HD_OTEL_ENDPOINT` asks for,
    or None (the default) when neither is set. The deployment's configuration wins over a process variable.

    Raises `TelemetryMisconfigured` for an endpoint that is not a URL or an install without `[otel]`.
    """
    source = {OTEL_ENDPOINT_ENV: configured} if configured else os.environ if environ is None else environ
    endpoint = traces_url(source)
    if endpoint is None:
        return None
    from hd_core.adapters.otlp_spans import otlp_tracer_provider

    return StatementTracer(otlp_tracer_provider(endpoint, service=SERVICE_NAME, instance=instance))


def _failure(refused: Refusal | None) -> tuple[str | None, str | None]:
    if refused is None:
        return None, None
    return str(getattr(refused, "sqlstate", "") or "") or None, str(getattr(refused, "code", "") or "") or None
