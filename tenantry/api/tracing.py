"""OpenTelemetry spans of the API, when an OTLP endpoint is configured.

OpenTelemetry's own variable turns tracing on: with `OTEL_EXPORTER_OTLP_ENDPOINT` set (and the
`otel` extra installed) every request gets a server span, child of the caller's W3C
`traceparent`, exported over OTLP/HTTP in batches. Without it, nothing is created per request.
The exporter reads the rest of its configuration (`OTEL_EXPORTER_OTLP_HEADERS`,
`OTEL_SERVICE_NAME`, ...) from the environment the way every OpenTelemetry SDK does.
"""

from __future__ import annotations

import os

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = structlog.get_logger("tenantry.api.tracing")

ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"
propagator = TraceContextTextMapPropagator()


def tracer_from_environment() -> trace.Tracer | None:
    """A tracer exporting over OTLP, or None when no endpoint is configured."""
    if not os.environ.get(ENDPOINT_VARIABLE):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("tracing_unavailable", reason="install the `otel` extra: tenantry[otel]")
        return None
    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", "tenantry-api")}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("tracing_enabled", endpoint=os.environ[ENDPOINT_VARIABLE])
    return provider.get_tracer("tenantry.api")


def parent_context(traceparent: str | None) -> Context | None:
    """The caller's trace context, from an already validated `traceparent`."""
    if traceparent is None:
        return None
    return propagator.extract({"traceparent": traceparent})
