"""A real OTLP/HTTP trace receiver on loopback, for tests: what a collector would get."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

Mode = Literal["accept", "hang", "refuse", "refuse_once"]


@dataclass
class ReceivedSpan:
    """One span as the collector decoded it (ids as lower-case hex, like traceparent)."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    events: list[str]
    start: int
    end: int
    status_code: int


@dataclass
class Collector:
    """Spans received by ``/v1/traces``; ``mode`` says how the next exports are answered."""

    url: str = ""
    mode: Mode = "accept"
    spans: list[ReceivedSpan] = field(default_factory=list)
    exports: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    """Each export's request headers (lower-case names)."""

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]

    async def wait_for(
        self, found: Callable[[list[ReceivedSpan]], bool], within: float = 10.0
    ) -> None:
        """Until ``found(spans)`` holds (an AssertionError after ``within`` seconds)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not found(self.spans):
            assert loop.time() < deadline, [(s.service, s.name) for s in self.spans]
            await asyncio.sleep(0.02)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        kind=span.kind,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        events=[e.name for e in span.events],
                        start=span.start_time_unix_nano,
                        end=span.end_time_unix_nano,
                        status_code=span.status.code,
                    )
                )
    return out


@contextlib.asynccontextmanager
async def otlp_collector() -> AsyncIterator[Collector]:
    """An OTLP/HTTP receiver (protobuf) on a free loopback port."""
    collector = Collector()

    async def traces(request: web.Request) -> web.Response:
        collector.exports += 1
        collector.headers.append({k.lower(): v for k, v in request.headers.items()})
        if collector.mode == "hang":
            await asyncio.sleep(30)
        if collector.mode == "refuse":
            return web.Response(status=503)
        if collector.mode == "refuse_once":
            collector.mode = "accept"
            return web.Response(status=503)
        collector.spans.extend(_decode(await request.read()))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    collector.url = f"http://127.0.0.1:{port}"
    try:
        yield collector
    finally:
        await runner.cleanup()
