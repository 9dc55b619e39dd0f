"""W3C Trace Context (``traceparent``, ``tracestate``): parsed and written. Pure functions.

``traceparent`` is ``00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>``
(https://www.w3.org/TR/trace-context/). A header the gateway cannot read is ignored, as the
spec asks: the request then starts a trace of its own.
"""

from __future__ import annotations

from typing import NamedTuple

SAMPLED = 0x01
"""The ``sampled`` bit of the trace flags."""

_MAX_TRACESTATE = 512
"""Longest ``tracestate`` passed on (the spec lets a vendor truncate; 512 is its minimum)."""


class ParentContext(NamedTuple):
    """A client's trace context: the trace and span it continues, and whether it samples."""

    trace_id: int
    span_id: int
    sampled: bool
    tracestate: str


def parse_traceparent(value: bytes, tracestate: bytes | None = None) -> ParentContext | None:
    """The context in a ``traceparent`` header value, or None when it is not one.

    Version ``00`` must be exactly 55 characters; a later version is read by its first four
    fields, as the spec tells a version-00 reader to. All-zero ids and version ``ff`` are invalid.
    """
    if len(value) < 55 or value[2:3] != b"-" or value[35:36] != b"-" or value[52:53] != b"-":
        return None
    version = value[:2]
    if version == b"ff" or (version == b"00" and len(value) != 55):
        return None
    if len(value) > 55 and value[55:56] != b"-":
        return None
    try:
        int(version, 16)
        trace_id = int(value[3:35], 16)
        span_id = int(value[36:52], 16)
        flags = int(value[53:55], 16)
    except ValueError:
        return None
    if not _lower_hex(value[:55]) or trace_id == 0 or span_id == 0:
        return None
    state = ""
    if tracestate:
        text = tracestate.decode("latin-1").strip()
        if len(text) <= _MAX_TRACESTATE and text.isprintable():
            state = text
    return ParentContext(trace_id, span_id, bool(flags & SAMPLED), state)


def _lower_hex(value: bytes) -> bool:
    """The spec's ids are lower-case hex (``int(..., 16)`` also takes ``+``, ``_``, spaces)."""
    return value.replace(b"-", b"").strip(b"0123456789abcdef") == b""


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    """The ``traceparent`` value for a request the gateway sends as span ``span_id``."""
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def ratio_bound(ratio: float) -> int:
    """The trace-id bound of head sampling at ``ratio``: a trace is kept when the low 64 bits
    of its id are below it — OpenTelemetry's ``TraceIdRatioBased``, so every service that
    samples by ratio on the same trace id agrees."""
    return round(ratio * (1 << 64))


def sampled_by_ratio(trace_id: int, bound: int) -> bool:
    """Whether ``trace_id`` falls under :func:`ratio_bound`'s ``bound``."""
    return trace_id & 0xFFFFFFFFFFFFFFFF < bound
