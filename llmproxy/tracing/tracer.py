"""Where a request's trace starts and ends: head sampling, the client's context, the hand-off.

A :class:`Tracer` belongs to a config snapshot (``sample_ratio``, ``sample_errors`` and
``client_context`` change with a reload); the export it hands traces to belongs to the process
(:class:`~llmproxy.tracing.export.TraceExport`). With tracing off the snapshot has no tracer and
the request path's only cost is its ``is None`` checks.
"""

from __future__ import annotations

import random
from time import time_ns
from typing import Protocol

from llmproxy.config.model import TracingConfig
from llmproxy.http_fields import RawHeaders
from llmproxy.tracing.context import parse_traceparent, ratio_bound, sampled_by_ratio
from llmproxy.tracing.request import RequestTrace

TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
"""The client's trace context headers: never forwarded while tracing is on (the backend gets
the gateway's own ``traceparent``, and the trusted client's ``tracestate`` with it)."""


class TraceSubmit(Protocol):
    """Where ended traces go (the process's export)."""

    rng: random.Random

    def submit(self, trace: RequestTrace) -> None:
        """Queue ``trace`` for export; never blocks, drops and counts when full."""


class Tracer:
    """Begins and ends request traces for one snapshot::

    trace = tracer.begin(time_ns(), headers, trusted_peer, "POST", "/v1/chat/completions", rid)
    ...                          # phases note what happened (RequestTrace)
    tracer.end(trace)            # exported when sampled, or when it failed (sample_errors)
    """

    __slots__ = ("_bound", "_errors", "_export", "_rng", "_trust")

    def __init__(self, config: TracingConfig, export: TraceSubmit) -> None:
        self._bound = ratio_bound(config.sample_ratio)
        self._errors = config.sample_errors
        self._trust = config.client_context
        self._export = export
        self._rng = export.rng

    def begin(
        self,
        start: int,
        headers: RawHeaders,
        trusted_peer: bool,
        method: str,
        endpoint: str,
        request_id: str,
    ) -> RequestTrace | None:
        """The request's trace, or None when it is neither sampled nor kept for errors.

        A ``traceparent`` is continued only from a trusted client (``client_context``); its
        sampled flag then decides (parent-based sampling), else the trace id's ratio does.
        """
        parent = None
        trust = self._trust
        if trust == "always" or (trust == "trusted_proxies" and trusted_peer):
            found = tracestate = None
            for name, value in headers:
                if name == b"traceparent":
                    found = value
                elif name == b"tracestate":
                    tracestate = value
            if found is not None:
                parent = parse_traceparent(found, tracestate)
        if parent is not None:
            trace_id, parent_id, sampled, state = parent
        else:
            trace_id = self._rng.getrandbits(128) or 1
            parent_id, state = 0, ""
            sampled = sampled_by_ratio(trace_id, self._bound)
        if not sampled and not self._errors:
            return None
        return RequestTrace(
            self._rng, trace_id, parent_id, sampled, state, start, method, endpoint, request_id
        )

    def end(self, trace: RequestTrace) -> None:
        """The request ended: export its trace when sampled, or when it failed and failures are
        always kept."""
        trace.end = time_ns()
        if trace.sampled or (self._errors and trace.failed):
            self._export.submit(trace)
