"""OpenTelemetry traces of requests (``tracing:``), written and sent without the OpenTelemetry SDK.

The request path notes timestamps into a :class:`RequestTrace` (``request.py``), begun and
ended by the snapshot's :class:`Tracer` (``tracer.py``: sampling, the client's context); the
process's :class:`TraceExport` (``export.py``) encodes ended ones as OTLP protobuf
(``otlp.py`` over ``protobuf.py``) and POSTs them (``sender.py``) on its own thread.
``context.py`` reads and writes W3C ``traceparent``. No module here imports OpenTelemetry:
the SDK's span objects and encoder cost several times what the gateway's requests do.
"""

from llmproxy.tracing.export import TraceExport
from llmproxy.tracing.request import RequestTrace
from llmproxy.tracing.tracer import TRACE_HEADERS, Tracer

__all__ = ["TRACE_HEADERS", "RequestTrace", "TraceExport", "Tracer"]
