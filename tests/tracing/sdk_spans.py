"""The reference: a request's notes as OpenTelemetry SDK spans, encoded by the SDK's encoder.

This was the gateway's export path before it wrote OTLP itself (llmproxy.tracing.otlp); it is
kept here, unchanged in what it builds, so tests can decode both and compare them field by
field. The span tree and attributes are documented in llmproxy/tracing/otlp.py.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util.types import AttributeValue

from llmproxy import __version__
from llmproxy.apis import ENDPOINT_API
from llmproxy.tracing.otlp import OPERATION
from llmproxy.tracing.request import RequestTrace

_SCOPE = InstrumentationScope("llmproxy", __version__)
_FLAGS = TraceFlags(TraceFlags.SAMPLED)
_ERROR = Status(StatusCode.ERROR)
_UNSET = Status(StatusCode.UNSET)


def resource(service_name: str) -> Resource:
    """The gateway's resource (``OTEL_RESOURCE_ATTRIBUTES`` adds to it)."""
    return Resource.create({"service.name": service_name, "service.version": __version__})


def request_spans(trace: RequestTrace, where: Resource, ids: random.Random) -> list[ReadableSpan]:
    """The spans of one ended request (see the module docstring). A phase's span id is drawn
    from ``ids`` here, off the request path: nothing outside the trace refers to it."""
    state = TraceState.from_header([trace.tracestate]) if trace.tracestate else TraceState()
    trace_id = trace.trace_id
    own = SpanContext(trace_id, trace.span_id, False, _FLAGS, state)
    parent = None
    if trace.parent_id:
        parent = SpanContext(trace_id, trace.parent_id, True, _FLAGS, state)
    events = []
    if trace.first_token:
        events.append(Event("first_token", None, trace.first_token))
    finished = trace.finished
    if finished is not None and finished.stream and trace.first_token:
        events.append(Event("stream_end", None, trace.end))
    failed = trace.status >= 500
    spans = [
        ReadableSpan(
            f"{trace.method} {trace.endpoint}",
            own,
            parent,
            where,
            _server_attributes(trace),
            events,
            kind=SpanKind.SERVER,
            status=_ERROR if failed else _UNSET,
            start_time=trace.start,
            end_time=trace.end,
            instrumentation_scope=_SCOPE,
        )
    ]
    for phase in trace.phases:
        context = SpanContext(trace_id, ids.getrandbits(64) or 1, False, _FLAGS, state)
        spans.append(
            ReadableSpan(
                f"llmproxy.{phase.name}",
                context,
                own,
                where,
                phase.attributes,
                kind=SpanKind.INTERNAL,
                start_time=phase.start,
                end_time=phase.end,
                instrumentation_scope=_SCOPE,
            )
        )
    for number, attempt in enumerate(trace.attempts, 1):
        attributes: dict[str, AttributeValue] = {
            "llmproxy.backend": attempt.backend,
            "llmproxy.attempt": number,
        }
        if attempt.status:
            attributes["http.response.status_code"] = attempt.status
        if attempt.error:
            attributes["error.type"] = attempt.error
        spans.append(
            ReadableSpan(
                "llmproxy.upstream",
                SpanContext(trace_id, attempt.span_id, False, _FLAGS, state),
                own,
                where,
                attributes,
                kind=SpanKind.CLIENT,
                status=_ERROR if attempt.error or attempt.status >= 500 else _UNSET,
                start_time=attempt.start,
                end_time=attempt.end or trace.end,
                instrumentation_scope=_SCOPE,
            )
        )
    return spans


def _server_attributes(trace: RequestTrace) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "http.request.method": trace.method,
        "url.path": trace.endpoint,
        "llmproxy.request_id": trace.request_id,
    }
    if trace.status:
        attributes["http.response.status_code"] = trace.status
    if trace.error:
        attributes["error.type"] = trace.error
    elif trace.status >= 500:
        attributes["error.type"] = str(trace.status)
    api = ENDPOINT_API.get(trace.endpoint)
    if api is not None:
        attributes["gen_ai.operation.name"] = OPERATION[api]
    if trace.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = trace.max_tokens
    if trace.attempts:
        attributes["llmproxy.attempts"] = len(trace.attempts)
    waited = sum(p.end - p.start for p in trace.phases if p.name == "queue")
    if waited:
        attributes["llmproxy.queue.wait"] = waited / 1e9
    done = trace.finished
    if done is None:
        return attributes
    if done.model:
        attributes["gen_ai.request.model"] = done.model
        if done.served:
            # The gateway forwards the model as named; the backend answers for that model.
            attributes["gen_ai.response.model"] = done.model
    if done.backend:
        attributes["llmproxy.backend"] = done.backend
    if done.key_id:
        attributes["llmproxy.key_id"] = done.key_id  # the key's id, never its secret
    if done.user_id:
        attributes["enduser.id"] = done.user_id
    attributes["llmproxy.stream"] = done.stream
    if done.served or done.prompt_tokens:
        attributes["gen_ai.usage.input_tokens"] = done.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = done.completion_tokens
        attributes["llmproxy.usage.source"] = done.usage_source
    if done.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = (done.finish_reason,)
    if done.cancelled:
        attributes["llmproxy.cancelled"] = True
    return attributes


def batch_spans(
    traces: Sequence[RequestTrace], where: Resource, ids: random.Random
) -> list[ReadableSpan]:
    """The spans of several ended requests, for one export."""
    return [span for trace in traces for span in request_spans(trace, where, ids)]


def encode(traces: Sequence[RequestTrace], where: Resource, ids: random.Random) -> bytes:
    """What the gateway sent before: the SDK's spans through the SDK's OTLP encoder."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return bytes(encode_spans(batch_spans(traces, where, ids)).SerializeToString())
