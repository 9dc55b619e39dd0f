"""OpenTelemetry traces of requests (``tracing:``; needs ``pip install 'llmproxy[otel]'``).

The request path notes timestamps into a :class:`RequestTrace` (``request.py``), begun and
ended by the snapshot's :class:`Tracer` (``tracer.py``: sampling, the client's context); the
process's :class:`TraceExport` (``export.py``) turns ended ones into spans (``spans.py``) and
sends them over OTLP/HTTP on its own thread. ``context.py`` reads and writes W3C
``traceparent``. Only ``spans.py`` and the exporter import OpenTelemetry, and only once
tracing starts.
"""

from llmproxy.tracing.export import TraceExport
from llmproxy.tracing.request import RequestTrace
from llmproxy.tracing.tracer import TRACE_HEADERS, Tracer

__all__ = ["TRACE_HEADERS", "RequestTrace", "TraceExport", "Tracer"]
