"""Spans out over OTLP/HTTP with the OpenTelemetry SDK: built only when `HD_OTEL_ENDPOINT` is set.

The SDK is imported here and nowhere else, on first use, so a base install (no `[otel]` extra) and
every process that leaves tracing off never pay for the import.
"""

from __future__ import annotations

from typing import Any

from hd_core.telemetry import TelemetryMisconfigured


def otlp_tracer_provider(endpoint: str, *, service: str, instance: str | None = None) -> Any:
    """A `TracerProvider` whose spans are batched to the OTLP/HTTP traces URL `endpoint`.

    Its own, never the global one: a library that traces through the global provider sends nothing.
    Sampling and batching follow the SDK's standard `OTEL_TRACES_SAMPLER` / `OTEL_BSP_*` variables.
    """
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise TelemetryMisconfigured(
            "HD_OTEL_ENDPOINT is set but the OpenTelemetry SDK is not installed: "
            "pip install 'hardened-duck[otel]', or unset HD_OTEL_ENDPOINT") from None
    attributes = {"service.name": service}
    if instance:
        attributes["service.instance.id"] = instance
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider
