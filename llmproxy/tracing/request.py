"""One request's trace while it runs: ids and timestamps, no OpenTelemetry object.

The OpenTelemetry SDK's span API costs tens of microseconds per span (a lock, a context, an
attribute dict, a processor call per start and end). The request path only notes what
happened and when — a few ``time.time_ns()`` calls into one slotted object — and the spans are
built from these notes at export, on the exporter's thread (:mod:`llmproxy.tracing.spans`).
The one id the request path needs early, an upstream attempt's span id, is drawn when the
attempt begins: the backend's ``traceparent`` names it as the parent of the backend's spans.
"""

from __future__ import annotations

import random
from time import time_ns

from llmproxy.finish import Finished
from llmproxy.tracing.context import format_traceparent


class Phase:
    """A child span of the request: ``auth``, ``limits`` or ``queue``."""

    __slots__ = ("attributes", "end", "name", "start")

    def __init__(
        self, name: str, start: int, end: int, attributes: dict[str, str | int] | None
    ) -> None:
        self.name = name
        self.start = start
        self.end = end
        self.attributes = attributes


class Attempt:
    """One upstream attempt: a CLIENT span whose id the backend's spans take as parent."""

    __slots__ = ("backend", "end", "error", "span_id", "start", "status")

    def __init__(self, span_id: int, backend: str, start: int) -> None:
        self.span_id = span_id
        self.backend = backend
        self.start = start
        self.end = 0
        self.status = 0
        """The backend's answer status (0: none came)."""
        self.error = ""
        """Why the attempt failed (the gateway's error code), or ""."""


class RequestTrace:
    """The notes of one traced request; see the module docstring.

    Made by :meth:`llmproxy.tracing.Tracer.begin` at the top of the request (only when tracing
    is on), extended by each phase, ended by :meth:`llmproxy.tracing.Tracer.end`.
    """

    __slots__ = (
        "_rng",
        "attempts",
        "end",
        "endpoint",
        "error",
        "finished",
        "first_token",
        "max_tokens",
        "method",
        "parent_id",
        "phases",
        "request_id",
        "sampled",
        "span_id",
        "start",
        "status",
        "trace_id",
        "tracestate",
    )

    def __init__(
        self,
        rng: random.Random,
        trace_id: int,
        parent_id: int,
        sampled: bool,
        tracestate: str,
        start: int,
        method: str,
        endpoint: str,
        request_id: str,
    ) -> None:
        self._rng = rng
        self.trace_id = trace_id
        self.span_id = rng.getrandbits(64) or 1
        """The gateway's SERVER span."""
        self.parent_id = parent_id
        """The client's span (0: the trace starts here)."""
        self.sampled = sampled
        self.tracestate = tracestate
        self.start = start
        self.end = 0
        self.method = method
        self.endpoint = endpoint
        self.request_id = request_id
        self.phases: list[Phase] = []
        self.attempts: list[Attempt] = []
        self.first_token = 0
        self.status = 0
        """The status sent to the client (0: none)."""
        self.error = ""
        """The gateway's error code when the request was refused or failed."""
        self.finished: Finished | None = None
        """The ended proxied request as the finish sinks read it (model, usage, key id...)."""
        self.max_tokens: int | None = None

    def phase(self, name: str, start: int, attributes: dict[str, str | int] | None = None) -> None:
        """A phase that began at ``start`` (``time.time_ns()``) ended now."""
        self.phases.append(Phase(name, start, time_ns(), attributes))

    def begin_attempt(self, backend: str) -> str:
        """An upstream attempt begins: the ``traceparent`` the backend gets for it."""
        attempt = Attempt(self._rng.getrandbits(64) or 1, backend, time_ns())
        self.attempts.append(attempt)
        return format_traceparent(self.trace_id, attempt.span_id, self.sampled)

    def end_attempt(self, status: int) -> None:
        """The current attempt ended; ``status`` is the backend's answer (0: none)."""
        if self.attempts and not self.attempts[-1].end:
            attempt = self.attempts[-1]
            attempt.end = time_ns()
            attempt.status = status

    def attempt_failed(self, code: str) -> None:
        """The current attempt failed in a way another backend may not (its error code)."""
        if self.attempts:
            self.attempts[-1].error = code

    def first_token_now(self) -> None:
        """The first streamed chunk went to the client."""
        if not self.first_token:
            self.first_token = time_ns()

    def ended(self, finished: Finished, max_tokens: int | None) -> None:
        """The proxied request ended as ``finished`` (its model, usage, key id, status)."""
        self.finished = finished
        self.status = finished.status
        self.max_tokens = max_tokens

    @property
    def failed(self) -> bool:
        """A server-side failure: a 5xx, or an attempt that failed (kept by ``sample_errors``)."""
        return self.status >= 500 or any(a.error for a in self.attempts)

    def span_count(self) -> int:
        """Spans this trace becomes: the server span, its phases and its attempts."""
        return 1 + len(self.phases) + len(self.attempts)
