"""The process's trace export: a bounded queue, and a thread that builds spans and sends them.

Owned by the process (:class:`~llmproxy.daemon.runtime.RuntimeState`), not by a config
snapshot: a reload must neither restart the thread nor lose what is queued. The request path
only appends an ended :class:`~llmproxy.tracing.request.RequestTrace` to a deque
(:meth:`TraceExport.submit`); the thread wakes every ``batch_delay`` (or when a batch is full),
turns the notes into spans (:mod:`llmproxy.tracing.spans`) and hands them to the OTLP/HTTP
exporter, whose timeout bounds each export. A collector that is down or hanging therefore
costs requests nothing: the queue fills, and what does not fit is dropped and counted.

OpenTelemetry is imported here lazily, in :meth:`TraceExport.start`: a gateway with tracing
off never imports it.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from llmproxy.config.model import TracingConfig
from llmproxy.tracing.request import RequestTrace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

log = logging.getLogger("llmproxy.tracing")

BATCH_SPANS = 512
"""Spans sent in one export at most (and the queue length that wakes the thread early)."""
_WARN_EVERY = 60.0
"""Seconds between two warnings about failed exports (each failure is counted)."""


class SpanSender(Protocol):
    """What sends spans: OpenTelemetry's ``SpanExporter`` (its OTLP/HTTP one by default)."""

    def export(self, spans: list[ReadableSpan]) -> object:
        """Send ``spans``; returns ``SpanExportResult``."""

    def shutdown(self) -> None:
        """Release the connection."""


Count = Callable[[str, int], None]
"""``count(result, spans)``: ``exported``, ``queue_full`` or ``export_failed``."""


class TraceExport:
    """Ended request traces, queued and exported off the event loop::

    export = TraceExport(config.tracing, metrics.trace_spans)
    export.start()                # imports the SDK, starts the thread
    export.submit(trace)          # from the request path: O(1), never blocks
    export.shutdown(timeout=5.0)  # what is queued is sent within the bound
    """

    def __init__(
        self, config: TracingConfig, count: Count, *, sender: SpanSender | None = None
    ) -> None:
        self.rng = random.Random()
        """Trace and span ids of the requests (drawn on the event loop's thread only)."""
        self._config = config
        self._count = count
        self._sender = sender
        self._queue: collections.deque[RequestTrace] = collections.deque()
        self._queued = 0
        """Spans in the queue (the bound is on spans, ``max_queue_size``)."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._warned = 0.0

    def start(self) -> None:
        """Import the SDK, build the exporter and start the export thread (once)."""
        if self._thread is not None:
            return
        from llmproxy.tracing import spans

        self._resource = spans.resource(self._config.service_name)
        if self._sender is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self._sender = OTLPSpanExporter(
                endpoint=f"{self._config.endpoint}/v1/traces",
                headers=dict(self._config.headers),
                timeout=self._config.export_timeout,
            )
        self._thread = threading.Thread(target=self._run, name="llmproxy-trace-export", daemon=True)
        self._thread.start()

    def submit(self, trace: RequestTrace) -> None:
        """Queue an ended trace; dropped and counted when the queue is full."""
        spans = trace.span_count()
        with self._lock:
            if self._queued + spans > self._config.max_queue_size:
                full = True
            else:
                full = False
                self._queued += spans
                self._queue.append(trace)
                self._idle.clear()
                wake = self._queued >= BATCH_SPANS
        if full:
            self._count("queue_full", spans)
        elif wake:
            self._wake.set()

    @property
    def queued(self) -> int:
        """Spans waiting for export."""
        return self._queued

    def flush(self, timeout: float) -> bool:
        """Export what is queued now; whether that ended within ``timeout`` seconds."""
        self._wake.set()
        return self._idle.wait(timeout)

    def shutdown(self, timeout: float) -> None:
        """Export what is queued (within ``timeout``), then stop the thread and the exporter."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        thread.join(timeout)
        self._thread = None
        if self._sender is not None:
            self._sender.shutdown()

    def _run(self) -> None:
        delay = self._config.batch_delay
        while not self._stopping:
            self._wake.wait(delay)
            self._wake.clear()
            self._drain()
        self._drain()

    def _drain(self) -> None:
        """Send everything queued, a batch at a time."""
        from llmproxy.tracing.spans import batch_spans

        ids = random.Random()
        while True:
            with self._lock:
                batch: list[RequestTrace] = []
                size = 0
                while self._queue and size < BATCH_SPANS:
                    trace = self._queue.popleft()
                    batch.append(trace)
                    size += trace.span_count()
                self._queued -= size
                if not batch:
                    self._idle.set()
                    return
            self._send(batch_spans(batch, self._resource, ids))

    def _send(self, spans: list[ReadableSpan]) -> None:
        assert self._sender is not None
        try:
            result = self._sender.export(spans)
            sent = getattr(result, "name", "") == "SUCCESS"
        except Exception:
            log.exception("trace export failed")
            sent = False
        if sent:
            self._count("exported", len(spans))
            return
        self._count("export_failed", len(spans))
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:
            self._warned = now
            log.warning(
                "trace export to %s failed; %d spans dropped (counted in "
                "llmproxy_trace_spans_dropped_total)",
                self._config.endpoint,
                len(spans),
            )
