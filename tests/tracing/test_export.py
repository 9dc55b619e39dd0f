"""The trace export queue and thread, with an in-memory sender that decodes what it is sent."""

from __future__ import annotations

import random
import sys
import threading
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from llmproxy.config.loader import parse_config
from llmproxy.config.model import Config, TracingConfig
from llmproxy.tracing import RequestTrace, TraceExport, Tracer


def _trace(rng: random.Random, phases: int = 1) -> RequestTrace:
    trace = RequestTrace(rng, 7, 0, True, "", 1, "POST", "/v1/chat/completions", "r1")
    for _ in range(phases):
        trace.phase("auth", 1)
    trace.begin_attempt("b1")
    trace.end_attempt(200)
    return trace


class _Memory:
    """A sender that keeps the spans of each body it is sent (decoded as a collector would)."""

    last_error = ""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def send(self, body: bytes) -> bool:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return True

    def close(self) -> None:
        pass


class _Stuck:
    """A sender whose exports block until released (a collector that hangs)."""

    last_error = "hanging"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def send(self, body: bytes) -> bool:
        self.calls += 1
        self.release.wait(10)
        return False  # counted as export_failed

    def close(self) -> None:
        self.release.set()


def test_ended_traces_are_exported_as_linked_spans() -> None:
    """A trace's server span, phase and attempt reach the exporter, children under the server."""
    counts: dict[str, int] = {}
    memory = _Memory()
    export = TraceExport(
        TracingConfig(batch_delay=0.01),
        lambda result, n: counts.__setitem__(result, counts.get(result, 0) + n),
        sender=memory,
    )
    export.start()
    try:
        export.submit(_trace(export.rng))
        assert export.flush(5)
    finally:
        export.shutdown(5)
    spans = {s.name: s for s in memory.spans}
    server = spans["POST /v1/chat/completions"]
    for child in ("llmproxy.auth", "llmproxy.upstream"):
        assert spans[child].parent_span_id == server.span_id
        assert spans[child].trace_id == server.trace_id == (7).to_bytes(16, "big")
    assert counts == {"exported": 3}


def test_the_queue_is_bounded_while_the_collector_hangs() -> None:
    """With every export stuck, the queue never holds more than max_queue_size spans and the
    rest is counted as dropped; submit never blocks."""
    counts: dict[str, int] = {}
    stuck = _Stuck()
    export = TraceExport(
        TracingConfig(batch_delay=0.01, max_queue_size=30),
        lambda result, n: counts.__setitem__(result, counts.get(result, 0) + n),
        sender=stuck,
    )
    export.start()
    try:
        for _ in range(100):
            export.submit(_trace(export.rng))
            assert export.queued <= 30
        assert counts["queue_full"] > 0
    finally:
        export.shutdown(1)
    assert stuck.calls >= 1


def test_tracer_keeps_failures_when_not_sampled() -> None:
    """At ratio 0 a good request is not exported, a failed one is (sample_errors), and without
    sample_errors no trace is even begun."""
    submitted: list[RequestTrace] = []

    class _Queue:
        rng = random.Random(1)

        def submit(self, trace: RequestTrace) -> None:
            submitted.append(trace)

    tracer = Tracer(TracingConfig(sample_ratio=0.0), _Queue())
    good = tracer.begin(1, [], False, "POST", "/v1/chat/completions", "a")
    bad = tracer.begin(1, [], False, "POST", "/v1/chat/completions", "b")
    assert good is not None
    assert bad is not None
    bad.status = 502
    tracer.end(good)
    tracer.end(bad)
    assert submitted == [bad]
    strict = Tracer(TracingConfig(sample_ratio=0.0, sample_errors=False), _Queue())
    assert strict.begin(1, [], False, "POST", "/v1/chat/completions", "c") is None


def test_tracing_needs_no_opentelemetry_package() -> None:
    """With every opentelemetry module unimportable, tracing on is a valid config and a trace
    is encoded: the gateway writes OTLP itself."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "opentelemetry", None)
        config = parse_config(
            "backends: [{url: 'http://127.0.0.1:1'}]\ntracing: {enabled: true}\n", "c.yaml"
        )
        memory = _Memory()
        export = TraceExport(config.tracing, lambda result, n: None, sender=memory)
        export.start()
        try:
            export.submit(_trace(export.rng))
            assert export.flush(5)
        finally:
            export.shutdown(5)
    assert len(memory.spans) == 3


def test_tracing_is_off_by_default() -> None:
    """No tracing section: nothing is traced."""
    config: Any = Config.model_validate({"backends": [{"url": "http://127.0.0.1:1"}]})
    assert not config.tracing.enabled
