"""The process's trace export: a bounded queue, and a thread that encodes spans and sends them.

Owned by the process (:class:`~llmproxy.daemon.runtime.RuntimeState`), not by a config
snapshot: a reload must neither restart the thread nor lose what is queued. The request path
only appends an ended :class:`~llmproxy.tracing.request.RequestTrace` to a deque
(:meth:`TraceExport.submit`); the thread wakes every ``batch_delay`` (or when a batch is full),
writes the notes as one OTLP protobuf body (:mod:`llmproxy.tracing.otlp`) and POSTs it
(:mod:`llmproxy.tracing.sender`), each export bounded by ``export_timeout``. A collector that
is down or hanging therefore costs requests nothing: the queue fills, and what does not fit is
dropped and counted.

No OpenTelemetry package is needed: the gateway writes OTLP itself.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Protocol

from llmproxy.config.model import TracingConfig
from llmproxy.tracing.otlp import OtlpEncoder, resource_attributes
from llmproxy.tracing.request import RequestTrace
from llmproxy.tracing.sender import OtlpHttpSender, export_settings

log = logging.getLogger("llmproxy.tracing")

BATCH_SPANS = 512
"""Spans sent in one export at most (and the queue length that wakes the thread early)."""
_WARN_EVERY = 60.0
"""Seconds between two warnings about failed exports (each failure is counted)."""


class SpanSender(Protocol):
    """What sends an export's body (an ``ExportTraceServiceRequest``): OTLP/HTTP by default
    (:class:`~llmproxy.tracing.sender.OtlpHttpSender`)."""

    last_error: str
    """Why the last failed send failed."""

    def send(self, body: bytes) -> bool:
        """Deliver ``body`` within the export timeout; whether the collector accepted it."""

    def close(self) -> None:
        """Stop retrying and release the connection."""


Count = Callable[[str, int], None]
"""``count(result, spans)``: ``exported``, ``queue_full`` or ``export_failed``."""


class TraceExport:
    """Ended request traces, queued and exported off the event loop::

    export = TraceExport(config.tracing, metrics.trace_spans)
    export.start()                # starts the thread
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
        # Spans counted three times, each count written by one thread only, so the request
        # path takes no lock: queued = submitted - taken (the bound, ``max_queue_size``).
        self._submitted = 0
        """Spans ever queued (written by the request path's thread)."""
        self._taken = 0
        """Spans ever taken from the queue for export (written by the export thread)."""
        self._ended = 0
        """Spans whose export ended, sent or not (export thread, under ``_done``)."""
        self._done = threading.Condition()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._warned = 0.0
        self._encoder = OtlpEncoder(resource_attributes(config.service_name))
        self._ids = random.Random()
        """The phases' span ids (drawn on the export thread only)."""

    def start(self) -> None:
        """Build the encoder and the sender and start the export thread (once)."""
        if self._thread is not None:
            return
        if self._sender is None:
            headers, compress = export_settings(self._config.headers)
            self._sender = OtlpHttpSender(
                self._config.endpoint,
                headers,
                self._config.export_timeout,
                compress=compress,
            )
        self._thread = threading.Thread(target=self._run, name="llmproxy-trace-export", daemon=True)
        self._thread.start()

    def submit(self, trace: RequestTrace) -> None:
        """Queue an ended trace; dropped and counted when the queue is full.

        Called from one thread (the event loop's): a deque append and two integer reads, no
        lock; the export thread is woken early only when a batch is full."""
        spans = trace.span_count()
        queued = self._submitted - self._taken + spans
        if queued > self._config.max_queue_size:
            self._count("queue_full", spans)
            return
        self._queue.append(trace)
        self._submitted += spans
        if queued >= BATCH_SPANS and not self._wake.is_set():
            self._wake.set()

    @property
    def queued(self) -> int:
        """Spans waiting for export."""
        return self._submitted - self._taken

    def flush(self, timeout: float) -> bool:
        """Export what is queued now; whether that ended within ``timeout`` seconds."""
        target = self._submitted
        self._wake.set()
        with self._done:
            return self._done.wait_for(lambda: self._ended >= target, timeout)

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
            self._sender.close()

    def _run(self) -> None:
        delay = self._config.batch_delay
        while not self._stopping:
            self._wake.wait(delay)
            self._wake.clear()
            self._drain()
        self._drain()

    def _drain(self) -> None:
        """Send everything queued, a batch at a time."""
        queue = self._queue
        while queue:
            batch: list[RequestTrace] = []
            size = 0
            while queue and size < BATCH_SPANS:
                trace = queue.popleft()
                batch.append(trace)
                size += trace.span_count()
            self._taken += size
            self._send(batch, size)
            with self._done:
                self._ended += size
                self._done.notify_all()

    def _send(self, batch: list[RequestTrace], spans: int) -> None:
        sender = self._sender
        assert sender is not None
        try:
            sent = sender.send(self._encoder.encode(batch, self._ids))
        except Exception:
            log.exception("trace export failed")
            sent = False
        if sent:
            self._count("exported", spans)
            return
        self._count("export_failed", spans)
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:
            self._warned = now
            log.warning(
                "trace export to %s/v1/traces failed (%s); %d spans dropped (counted in "
                "llmproxy_trace_spans_dropped_total)",
                self._config.endpoint,
                sender.last_error or "not accepted",
                spans,
            )
