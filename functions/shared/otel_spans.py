"""Control-plane spans, off by default: with `HD_OTEL_ENDPOINT` set, one OpenTelemetry span per invocation.

`hd.request` (SERVER) around an API request and `hd.scheduled` (INTERNAL) around a scheduled or
queued run, sent over OTLP/HTTP by the OpenTelemetry SDK and flushed before the invocation returns
(Lambda freezes the container after it, with any batch still in memory). In AWS the endpoint is
usually the ADOT collector extension's `http://localhost:4318` (README: OpenTelemetry). Attributes
pass `hd_core.telemetry.span_attributes`: the function, trigger, HTTP method and status, outcome and
HD_ERR code. Never a path (it holds ids), a header, a body or a caller.

Unset, `invocation_spans()` is None and OpenTelemetry is never imported. Beside X-Ray (Powertools'
Tracer), never instead of it: each follows its own switch.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hd_core.errors import HdError
from hd_core.telemetry import span_attributes, traces_url

log = logging.getLogger(__name__)

REQUEST_SPAN = "hd.request"
SCHEDULED_SPAN = "hd.scheduled"
TRACER_NAME = "hardened_duck.control"
SERVICE_NAME = "hardened-duck-control"  # the resource; which function is the span's `hd.function`
# The collector (ADOT's extension) is local and answers in about a millisecond; one that is down or slow
# must not hold every response for the exporter's own 10 s timeout. Spans not sent by then are dropped.
FLUSH_TIMEOUT_MILLIS = 500

_lock = threading.Lock()
_current: tuple[str | None, InvocationSpans | None] | None = None  # (endpoint it was built for, spans)


class InvocationSpans:
    """Makes one span per invocation through its own `TracerProvider` and flushes it before returning."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._provider = provider
        self._tracer = provider.get_tracer(TRACER_NAME)
        self._kinds = {REQUEST_SPAN: SpanKind.SERVER, SCHEDULED_SPAN: SpanKind.INTERNAL}
        self._failed = Status(StatusCode.ERROR)

    @contextmanager
    def span(self, name: str, service: str, attributes: dict[str, object]) -> Iterator[Callable[..., None]]:
        """A span around the block; the block calls the yielded function with its outcome's attributes."""
        span = self._tracer.start_span(name, kind=self._kinds[name], attributes=span_attributes(
            {"hd.function": service, **attributes}))
        ended: dict[str, object] = {}
        try:
            yield ended.update
        except Exception as error:
            ended.setdefault("hd.outcome", "error")
            ended.setdefault("hd.error.code", getattr(error, "code", None))  # an HD_ERR code or nothing
            raise
        finally:
            span.set_attributes(span_attributes(ended))
            if ended.get("hd.outcome", "ok") != "ok":
                span.set_status(self._failed)
            span.end()
            self._provider.force_flush(FLUSH_TIMEOUT_MILLIS)

    def shutdown(self) -> None:
        self._provider.shutdown()


@contextmanager
def invocation_span(name: str, service: str, attributes: dict[str, object]) -> Iterator[Callable[..., None]]:
    """`InvocationSpans.span` when tracing is on; otherwise the block runs as it is, its outcome ignored."""
    spans = invocation_spans()
    if spans is None:
        yield _ignore
        return
    with spans.span(name, service, attributes) as outcome:
        yield outcome


def _ignore(_: dict[str, object]) -> None:
    return None


def invocation_spans() -> InvocationSpans | None:
    """This container's span maker for `HD_OTEL_ENDPOINT`, or None (the default) when it is unset.

    Read at each invocation (one environment lookup) and built once per endpoint. An unusable endpoint
    or an install without the `[otel]` extra is logged once and leaves tracing off: the API keeps serving.
    """
    global _current
    raw = os.environ.get("HD_OTEL_ENDPOINT", "").strip() or None
    with _lock:
        if _current is not None and _current[0] == raw:
            return _current[1]
        if _current is not None and _current[1] is not None:
            _current[1].shutdown()
        spans = None
        if raw is not None:
            try:
                endpoint = traces_url({"HD_OTEL_ENDPOINT": raw})
                assert endpoint is not None
                from hd_core.adapters.otlp_spans import otlp_tracer_provider

                spans = InvocationSpans(otlp_tracer_provider(endpoint, service=SERVICE_NAME))
            except HdError as error:
                log.error("OpenTelemetry is off (%s): %s", error.code, error)
        _current = (raw, spans)
        return spans


def http_outcome(response: dict[str, Any]) -> dict[str, object]:
    """The allow-listed facts of an API response: status, outcome and the error body's HD_ERR code."""
    status = int(response.get("statusCode", 500))
    code = None
    if status >= 400:
        try:
            code = json.loads(response.get("body") or "{}").get("error", {}).get("code")
        except (ValueError, AttributeError):
            code = None
    outcome = "ok" if status < 400 else "denied" if status in (401, 403) else "error"
    return {"http.response.status_code": status, "hd.outcome": outcome, "hd.error.code": code}
