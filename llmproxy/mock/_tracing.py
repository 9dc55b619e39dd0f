"""The mock backend's own spans, as vLLM started with ``--otlp-traces-endpoint`` makes them.

One SERVER span per ``/v1`` request whose parent is the request's W3C ``traceparent`` (read by
OpenTelemetry's own propagator, so a test proves the gateway's header is the standard one),
exported over OTLP/HTTP. OpenTelemetry is imported only when a mock is given an endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Serve = Callable[[], Awaitable[web.StreamResponse]]


class MockTracing:
    """Spans of the mock's requests, exported to ``<endpoint>/v1/traces`` every 100 ms."""

    def __init__(self, endpoint: str, name: str) -> None:
        self._provider = TracerProvider(resource=Resource.create({"service.name": f"mock-{name}"}))
        exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces", timeout=2)
        self._provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=100))
        self._tracer = self._provider.get_tracer("llmproxy.mock")
        self._propagator = TraceContextTextMapPropagator()

    async def traced(self, request: web.BaseRequest, serve: Serve) -> web.StreamResponse:
        """Serve ``request`` inside a SERVER span continuing its ``traceparent``."""
        parent = self._propagator.extract(request.headers)
        with self._tracer.start_as_current_span(
            f"{request.method} {request.path}", context=parent, kind=SpanKind.SERVER
        ) as span:
            response = await serve()
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(StatusCode.ERROR)
            return response

    def shutdown(self) -> None:
        """Export what is left and stop (blocking: call it off the event loop)."""
        self._provider.shutdown()
