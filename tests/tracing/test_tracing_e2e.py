"""Tracing end to end: the real gateway and mock backend on loopback, a real OTLP/HTTP
collector, the official OpenAI client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import openai
from prometheus_client import CollectorRegistry

from llmproxy.daemon.runtime import Runtime, RuntimeState
from llmproxy.metrics import GatewayMetrics
from llmproxy.mock import MockBackend, MockSettings
from tests.harness import make_config, serve_state
from tests.tracing.collector import Collector, ReceivedSpan, otlp_collector

SECRET = "sk-trace-secret-0123456789"
BODY: dict[str, Any] = {
    "model": "mock-model",
    "max_tokens": 7,
    "messages": [{"role": "user", "content": "hi"}],
}
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
SERVER, CLIENT = 2, 3  # OTLP span kinds


def _config(mock: MockBackend, collector: Collector, **tracing: Any) -> Any:
    return make_config(
        [{"url": mock.url}],
        auth={
            "enabled": True,
            "pipeline": [{"name": "inline", "type": "static", "keys": [{"key": SECRET}]}],
        },
        rate_limit={"enabled": True},
        tracing={"enabled": True, "endpoint": collector.url, "batch_delay": "50ms", **tracing},
    )


class _Running:
    """A gateway with its own metrics registry (to read the trace counters)."""

    def __init__(self, config: Any) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self.state = RuntimeState(Runtime(config), metrics=self.metrics)

    def counter(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return value or 0.0


def _client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=SECRET, max_retries=0)


def _gateway_server(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.service == "llmproxy" and s.kind == SERVER]


def _mock(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.service.startswith("mock-")]


async def test_one_trace_holds_the_gateway_phases_and_the_backend_span() -> None:
    """A streamed chat completion is one trace: the gateway's server span, its auth, limits
    and upstream attempt children, and the backend's span whose parent is the attempt."""
    async with otlp_collector() as collector:
        mock = MockBackend(MockSettings(tokens=5), otlp_endpoint=collector.url)
        await mock.start()
        running = _Running(_config(mock, collector))
        try:
            async with serve_state(running.state) as gw, _client(gw.url) as client:
                stream = await client.chat.completions.create(**BODY, stream=True)
                async for _ in stream:
                    pass
                await collector.wait_for(lambda s: bool(_gateway_server(s)) and bool(_mock(s)))
        finally:
            await mock.stop()
    (server,) = _gateway_server(collector.spans)
    spans = collector.trace(server.trace_id)
    by_name = {s.name: s for s in spans}
    assert set(by_name) >= {"llmproxy.auth", "llmproxy.limits", "llmproxy.upstream"}
    for name in ("llmproxy.auth", "llmproxy.limits", "llmproxy.upstream"):
        assert by_name[name].parent_id == server.span_id, name
    attempt = by_name["llmproxy.upstream"]
    assert attempt.kind == CLIENT
    (backend,) = _mock(spans)
    assert backend.kind == SERVER
    assert backend.parent_id == attempt.span_id
    assert server.start <= attempt.start <= backend.start <= backend.end <= server.end
    assert server.name == "POST /v1/chat/completions"
    assert server.parent_id == ""  # no client context: the trace starts at the gateway
    attributes = server.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "mock-model"
    assert attributes["gen_ai.response.model"] == "mock-model"
    assert attributes["gen_ai.request.max_tokens"] == 7
    assert attributes["gen_ai.usage.output_tokens"] == 7  # as many as max_tokens asked
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["http.response.status_code"] == 200
    assert attributes["llmproxy.attempts"] == 1
    assert attributes["llmproxy.backend"] == mock.url
    assert attributes["llmproxy.key_id"].startswith("sha256:")
    assert "first_token" in server.events
    assert "stream_end" in server.events
    every_value = repr([s.attributes for s in spans])
    assert SECRET not in every_value


async def test_a_trusted_client_context_is_continued_and_replaced_upstream() -> None:
    """With client_context: always, the client's traceparent is the gateway span's parent and
    the trace keeps its id; the backend's parent is the gateway's attempt, never the client's
    span."""
    async with otlp_collector() as collector:
        mock = MockBackend(MockSettings(), otlp_endpoint=collector.url)
        await mock.start()
        running = _Running(_config(mock, collector, client_context="always"))
        try:
            async with serve_state(running.state) as gw, _client(gw.url) as client:
                await client.chat.completions.create(
                    **BODY, extra_headers={"traceparent": CLIENT_PARENT, "tracestate": "v=1"}
                )
                await collector.wait_for(lambda s: bool(_gateway_server(s)) and bool(_mock(s)))
        finally:
            await mock.stop()
    (server,) = _gateway_server(collector.spans)
    assert server.trace_id == CLIENT_TRACE
    assert server.parent_id == CLIENT_SPAN
    (attempt,) = [s for s in collector.trace(CLIENT_TRACE) if s.name == "llmproxy.upstream"]
    (backend,) = _mock(collector.spans)
    assert backend.trace_id == CLIENT_TRACE
    assert backend.parent_id == attempt.span_id != CLIENT_SPAN


async def test_an_untrusted_client_context_starts_a_new_trace() -> None:
    """By default (trusted_proxies, none configured) a client's traceparent is not continued:
    a new trace, and the backend never sees the client's context."""
    async with otlp_collector() as collector:
        mock = MockBackend(MockSettings(), otlp_endpoint=collector.url)
        await mock.start()
        running = _Running(_config(mock, collector))
        try:
            async with serve_state(running.state) as gw, _client(gw.url) as client:
                await client.chat.completions.create(
                    **BODY, extra_headers={"traceparent": CLIENT_PARENT}
                )
                await collector.wait_for(lambda s: bool(_gateway_server(s)) and bool(_mock(s)))
        finally:
            await mock.stop()
    (server,) = _gateway_server(collector.spans)
    assert server.trace_id != CLIENT_TRACE
    assert server.parent_id == ""
    (backend,) = _mock(collector.spans)
    assert backend.trace_id == server.trace_id


async def test_ratio_zero_exports_nothing_but_errors() -> None:
    """sample_ratio 0: a good request exports nothing; a request the backend fails (500) is
    exported anyway (sample_errors), its failed attempts included."""
    async with otlp_collector() as collector:
        mock = MockBackend(MockSettings())
        await mock.start()
        running = _Running(_config(mock, collector, sample_ratio=0.0))
        try:
            async with serve_state(running.state) as gw, _client(gw.url) as client:
                for _ in range(5):
                    await client.chat.completions.create(**BODY)
                failing = MockSettings(fault="500")
                mock.settings = failing
                with contextlib.suppress(openai.InternalServerError):
                    await client.chat.completions.create(**BODY)
                await collector.wait_for(lambda s: bool(_gateway_server(s)))
                await asyncio.sleep(0.3)  # time for an export of the good ones, were there any
        finally:
            await mock.stop()
    (server,) = _gateway_server(collector.spans)
    assert server.attributes["http.response.status_code"] == 500
    attempts = [s for s in collector.trace(server.trace_id) if s.name == "llmproxy.upstream"]
    assert attempts
    assert all(a.attributes["http.response.status_code"] == 500 for a in attempts)
    assert running.counter("llmproxy_trace_spans_exported_total") == len(collector.spans)


async def test_a_hanging_collector_never_slows_requests() -> None:
    """The collector hangs: requests stay fast and 200, the queue stays bounded, and what does
    not fit is counted as dropped."""
    async with otlp_collector() as collector:
        collector.mode = "hang"
        mock = MockBackend(MockSettings())
        await mock.start()
        running = _Running(
            _config(mock, collector, max_queue_size=40, export_timeout="1s", batch_delay="10ms")
        )
        try:
            async with serve_state(running.state) as gw, aiohttp.ClientSession() as session:
                headers = {"Authorization": f"Bearer {SECRET}"}
                slowest = 0.0
                for _ in range(60):
                    began = time.monotonic()
                    async with session.post(
                        gw.url + "/v1/chat/completions", json=BODY, headers=headers
                    ) as response:
                        assert response.status == 200
                        await response.read()
                    slowest = max(slowest, time.monotonic() - began)
                traces = running.state.traces
                assert traces is not None
                assert traces.queued <= 40
        finally:
            await mock.stop()
    assert slowest < 0.5  # the export waits 1 s on the collector: never in a request
    assert collector.exports >= 1
    assert running.counter("llmproxy_trace_spans_dropped_total", reason="queue_full") > 0


async def test_a_collector_refusing_exports_counts_them_dropped() -> None:
    """The collector answers 503: the spans are counted as export_failed, requests are 200."""
    async with otlp_collector() as collector:
        collector.mode = "refuse"
        mock = MockBackend(MockSettings())
        await mock.start()
        running = _Running(_config(mock, collector, export_timeout="300ms"))
        try:
            async with serve_state(running.state) as gw, _client(gw.url) as client:
                for _ in range(3):
                    await client.chat.completions.create(**BODY)
                deadline = time.monotonic() + 10
                failed = {"reason": "export_failed"}
                while running.counter("llmproxy_trace_spans_dropped_total", **failed) == 0:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
        finally:
            await mock.stop()
    assert collector.spans == []
