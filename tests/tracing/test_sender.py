"""OTLP/HTTP export against a real receiver on loopback: accepted, refused, hanging, gzip."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time

from llmproxy.tracing.otlp import OtlpEncoder, resource_attributes
from llmproxy.tracing.request import RequestTrace
from llmproxy.tracing.sender import OtlpHttpSender, export_settings
from tests.tracing.collector import otlp_collector


def _body() -> bytes:
    trace = RequestTrace(random.Random(1), 5, 0, True, "", 1, "POST", "/v1/embeddings", "r")
    trace.end = 2
    return OtlpEncoder(resource_attributes("gw", {})).encode([trace], random.Random(2))


async def test_an_accepted_export_is_true_and_the_connection_is_kept() -> None:
    """Two exports reach the collector as protobuf with the configured headers; both True."""
    async with otlp_collector() as collector:
        sender = OtlpHttpSender(collector.url, {"authorization": "Bearer t"}, timeout=5.0)
        try:
            assert await asyncio.to_thread(sender.send, _body())
            assert await asyncio.to_thread(sender.send, _body())
        finally:
            sender.close()
    assert [s.name for s in collector.spans] == ["POST /v1/embeddings"] * 2
    assert collector.headers[0]["authorization"] == "Bearer t"
    assert collector.headers[0]["content-type"] == "application/x-protobuf"


async def test_gzip_is_sent_when_asked() -> None:
    """compress=True: a gzip body the collector reads back (Content-Encoding: gzip)."""
    async with otlp_collector() as collector:
        sender = OtlpHttpSender(collector.url, {}, timeout=5.0, compress=True)
        try:
            assert await asyncio.to_thread(sender.send, _body())
        finally:
            sender.close()
    assert collector.headers[0]["content-encoding"] == "gzip"
    assert [s.trace_id for s in collector.spans] == [f"{5:032x}"]


async def test_a_refusing_collector_fails_within_the_timeout() -> None:
    """503 is retried with backoff only while the export's time allows: False within it."""
    async with otlp_collector() as collector:
        collector.mode = "refuse"
        sender = OtlpHttpSender(collector.url, {}, timeout=0.3)
        began = time.monotonic()
        try:
            assert not await asyncio.to_thread(sender.send, _body())
        finally:
            sender.close()
    assert time.monotonic() - began < 1.0
    assert sender.last_error == "HTTP 503"


async def test_a_retryable_answer_is_retried() -> None:
    """A 503 then an accepting collector: the export succeeds on its second try."""
    async with otlp_collector() as collector:
        collector.mode = "refuse_once"
        sender = OtlpHttpSender(collector.url, {}, timeout=5.0)
        try:
            assert await asyncio.to_thread(sender.send, _body())
        finally:
            sender.close()
    assert collector.exports == 2


async def test_a_hanging_collector_fails_within_the_timeout() -> None:
    """No answer: False once the timeout has passed, not later."""
    async with otlp_collector() as collector:
        collector.mode = "hang"
        sender = OtlpHttpSender(collector.url, {}, timeout=0.5)
        began = time.monotonic()
        try:
            assert not await asyncio.to_thread(sender.send, _body())
        finally:
            sender.close()
    assert time.monotonic() - began < 1.5
    assert "timed out" in sender.last_error


def test_nobody_listening_fails_at_once() -> None:
    """A refused connection is retried with backoff within the timeout, then False."""
    sender = OtlpHttpSender("http://127.0.0.1:9", {}, timeout=0.2)
    assert not sender.send(_body())
    assert "ConnectionRefusedError" in sender.last_error


def test_the_environment_adds_headers_and_gzip_as_the_sdk_read_them() -> None:
    """OTEL_EXPORTER_OTLP_*HEADERS apply when tracing.headers is empty; *COMPRESSION=gzip."""
    environ = {
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Basic%20eA==, x-b = 2",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip",
    }
    assert export_settings({}, environ) == ({"authorization": "Basic eA==", "x-b": "2"}, True)
    assert export_settings({"x-a": "1"}, environ) == ({"x-a": "1"}, True)
    assert export_settings({}, {}) == ({}, False)


def test_the_export_path_imports_no_opentelemetry() -> None:
    """Encoding and sending import nothing from OpenTelemetry: the gateway needs no extra."""
    code = (
        "import sys, random\n"
        "from llmproxy.tracing.export import TraceExport\n"
        "from llmproxy.config.model import TracingConfig\n"
        "from llmproxy.tracing import RequestTrace\n"
        "export = TraceExport(TracingConfig(endpoint='http://127.0.0.1:9', export_timeout=0.1),"
        " lambda result, n: None)\n"
        "export.start()\n"
        "trace = RequestTrace(export.rng, 5, 0, True, '', 1, 'POST', '/v1/embeddings', 'r')\n"
        "export.submit(trace)\n"
        "assert export.flush(5)\n"
        "export.shutdown(1)\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
