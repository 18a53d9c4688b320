"""OpenTelemetry: one server span per request, child of the caller's `traceparent`."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tenantry.api.tracing import tracer_from_environment
from tests.api.conftest import ServeApi, auth

pytestmark = pytest.mark.integration

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


async def test_each_request_is_a_server_span_under_the_callers_trace(
    serve_api: ServeApi, database_url: str, redis_url: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with serve_api(
        database_url=database_url, redis_url=redis_url, tracer=provider.get_tracer("test")
    ) as api:
        response = await api.client.get(
            "/v1/limits",
            headers={**auth(api.key("alpha")), "traceparent": f"00-{TRACE}-{PARENT}-01"},
        )
        assert response.status_code == 200
        await api.client.get("/v1/limits")
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    first, second = spans
    assert first.name == "GET /v1/limits"
    assert first.kind is SpanKind.SERVER
    assert format(first.context.trace_id, "032x") == TRACE
    assert first.parent is not None
    assert format(first.parent.span_id, "016x") == PARENT
    assert first.attributes is not None
    assert first.attributes["http.response.status_code"] == 200
    assert first.attributes["tenantry.tenant"] == "team-t/alpha"
    assert second.parent is None  # no traceparent: a new trace
    assert second.attributes is not None
    assert second.attributes["http.response.status_code"] == 401


def test_no_endpoint_means_no_tracer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert tracer_from_environment() is None


def test_an_endpoint_turns_tracing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert tracer_from_environment() is not None
