"""The trace export queue and thread, with OpenTelemetry's in-memory exporter as the sender."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llmproxy.config.errors import ConfigError
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


class _Stuck:
    """A sender whose exports block until released (a collector that hangs)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def export(self, spans: list[ReadableSpan]) -> object:
        self.calls += 1
        self.release.wait(10)
        return None  # not SUCCESS: counted as export_failed

    def shutdown(self) -> None:
        self.release.set()


def test_ended_traces_are_exported_as_linked_spans() -> None:
    """A trace's server span, phase and attempt reach the exporter, children under the server."""
    counts: dict[str, int] = {}
    memory = InMemorySpanExporter()
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
    spans = {s.name: s for s in memory.get_finished_spans()}
    server = spans["POST /v1/chat/completions"]
    assert server.context is not None
    for child in ("llmproxy.auth", "llmproxy.upstream"):
        parent = spans[child].parent
        assert parent is not None
        assert parent.span_id == server.context.span_id
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


def test_enabled_without_the_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracing on without the otel extra is a config error naming pip install 'llmproxy[otel]'."""
    monkeypatch.setitem(__import__("sys").modules, "opentelemetry.exporter.otlp.proto.http", None)
    with pytest.raises(ConfigError) as error:
        parse_config(
            "backends: [{url: 'http://127.0.0.1:1'}]\ntracing: {enabled: true}\n", "c.yaml"
        )
    assert "pip install 'llmproxy[otel]'" in str(error.value)
    assert "c.yaml:2" in str(error.value)


def test_tracing_is_off_by_default() -> None:
    """No tracing section: nothing is traced."""
    config: Any = Config.model_validate({"backends": [{"url": "http://127.0.0.1:1"}]})
    assert not config.tracing.enabled
