"""Ended requests' notes as one OTLP ``ExportTraceServiceRequest`` (protobuf bytes).

The spans of one request::

    POST /v1/chat/completions       SERVER  the request, arrival to last byte; its parent is
    │                                       the trusted client's span, if any
    ├─ llmproxy.auth                INTERNAL  key recognised (cache or provider)
    ├─ llmproxy.limits              INTERNAL  the key's admission (buckets, slots, tokens)
    ├─ llmproxy.queue               INTERNAL  waiting for a backend slot (admission queue)
    └─ llmproxy.upstream            CLIENT    one per attempt; the backend's own spans (vLLM
                                              with --otlp-traces-endpoint) are its children

Events on the server span: ``first_token`` (time to first token) and ``stream_end``.
Attribute names follow OpenTelemetry's GenAI and HTTP semantic conventions where one exists
(``gen_ai.*``, ``http.*``, ``error.type``); the gateway's own are under ``llmproxy.``.

The message is written straight from the :class:`~llmproxy.tracing.request.RequestTrace`
notes with :mod:`llmproxy.tracing.protobuf` — no OpenTelemetry object, no SDK — in the field
order and with the fields OpenTelemetry's own encoder writes (``tests/tracing/test_otlp.py``
decodes both and compares them), so a collector cannot tell the difference. Field numbers
are opentelemetry-proto's ``trace.proto``, ``common.proto`` and ``resource.proto``. Used by
the export thread only.
"""

from __future__ import annotations

import functools
import os
import random
import struct
import uuid
from collections.abc import Mapping, Sequence
from urllib.parse import unquote

from llmproxy import __version__
from llmproxy.apis import ENDPOINT_API
from llmproxy.tracing import protobuf as pb
from llmproxy.tracing.protobuf import AttributeValue
from llmproxy.tracing.request import RequestTrace

OPERATION = {
    "chat": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "messages": "chat",
    "responses": "chat",
}
"""``gen_ai.operation.name`` of each model API."""

SCOPE_NAME = "llmproxy"
"""The instrumentation scope of the gateway's spans (its version is the gateway's)."""
SDK_NAME = "llmproxy"
"""``telemetry.sdk.name``: the gateway writes its spans itself, with no OpenTelemetry SDK."""

# Span kinds (trace.proto Span.SpanKind) and status codes (Status.StatusCode).
INTERNAL, SERVER, CLIENT = 1, 2, 3
STATUS_ERROR = 2
# Span.flags: bit 8 says bit 9 is meaningful; bit 9, that the parent is remote (the client's).
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200

_PACK64 = struct.Struct("<Q").pack
_TRACE_ID = pb.tag(1, pb.LENGTH) + b"\x10"  # Span.trace_id, 16 bytes
_SPAN_ID = pb.tag(2, pb.LENGTH) + b"\x08"  # Span.span_id, 8 bytes
_PARENT_ID = pb.tag(4, pb.LENGTH) + b"\x08"  # Span.parent_span_id
_START = pb.tag(7, pb.FIXED64)
_END = pb.tag(8, pb.FIXED64)
_ATTRIBUTE = 9
_EVENT = 11
_KIND = {kind: pb.tag(6, pb.VARINT) + pb.varint(kind) for kind in (INTERNAL, SERVER, CLIENT)}
_UNSET = pb.length_delimited(15, b"")  # Span.status, always present (as the SDK writes it)
_ERROR = pb.length_delimited(15, pb.tag(3, pb.VARINT) + pb.varint(STATUS_ERROR))
_LOCAL_PARENT = pb.fixed32(16, _HAS_IS_REMOTE)
_REMOTE_PARENT = pb.fixed32(16, _HAS_IS_REMOTE | _IS_REMOTE)
_SPAN = 2  # ScopeSpans.spans
_UPSTREAM = pb.string(5, "llmproxy.upstream")


def _event(name: str) -> tuple[bytes, bytes]:
    """An event's constant parts: its time's tag, and its name field after the time."""
    return pb.tag(_EVENT, pb.LENGTH), pb.string(2, name)


_FIRST_TOKEN = _event("first_token")
_STREAM_END = _event("stream_end")

# Attribute keys, encoded once (KeyValue.key).
_attribute = functools.partial(pb.key_value_field, _ATTRIBUTE)
"""``_attribute(key_prefix, value)``: one ``Span.attributes`` entry."""
_K_METHOD = pb.key_prefix("http.request.method")
_K_PATH = pb.key_prefix("url.path")
_K_REQUEST_ID = pb.key_prefix("llmproxy.request_id")
_K_STATUS = pb.key_prefix("http.response.status_code")
_K_ERROR = pb.key_prefix("error.type")
_K_MAX_TOKENS = pb.key_prefix("gen_ai.request.max_tokens")
_K_ATTEMPTS = pb.key_prefix("llmproxy.attempts")
_K_QUEUE_WAIT = pb.key_prefix("llmproxy.queue.wait")
_K_REQUEST_MODEL = pb.key_prefix("gen_ai.request.model")
_K_RESPONSE_MODEL = pb.key_prefix("gen_ai.response.model")
_K_BACKEND = pb.key_prefix("llmproxy.backend")
_K_KEY_ID = pb.key_prefix("llmproxy.key_id")
_K_USER = pb.key_prefix("enduser.id")
_K_INPUT_TOKENS = pb.key_prefix("gen_ai.usage.input_tokens")
_K_OUTPUT_TOKENS = pb.key_prefix("gen_ai.usage.output_tokens")
_K_USAGE_SOURCE = pb.key_prefix("llmproxy.usage.source")
_K_FINISH_REASONS = pb.key_prefix("gen_ai.response.finish_reasons")
_K_ATTEMPT = pb.key_prefix("llmproxy.attempt")
_OPERATION = {
    api: pb.key_value_field(_ATTRIBUTE, pb.key_prefix("gen_ai.operation.name"), operation)
    for api, operation in OPERATION.items()
}
_STREAMED = pb.key_value_field(_ATTRIBUTE, pb.key_prefix("llmproxy.stream"), True)
_NOT_STREAMED = pb.key_value_field(_ATTRIBUTE, pb.key_prefix("llmproxy.stream"), False)
_CANCELLED = pb.key_value_field(_ATTRIBUTE, pb.key_prefix("llmproxy.cancelled"), True)


def resource_attributes(
    service_name: str, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The gateway's resource: ``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k2=v2``, URL-encoded values)
    adds to it, and ``service.name``/``service.version`` win — the order and precedence of the
    OpenTelemetry SDK's ``Resource.create``. ``service.instance.id`` is a new UUID per call
    (one per process: the export calls it once), telling a worker's spans from another's."""
    attributes = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": SDK_NAME,
        "telemetry.sdk.version": __version__,
        "service.instance.id": str(uuid.uuid4()),
    }
    for item in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, equals, value = item.partition("=")
        if equals and key.strip():
            attributes[key.strip()] = unquote(value.strip())
    if environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = environ["OTEL_SERVICE_NAME"]
    attributes["service.name"] = service_name
    attributes["service.version"] = __version__
    return attributes


class OtlpEncoder:
    """Ended traces as one export's body, for the export thread::

    encoder = OtlpEncoder(resource_attributes("llmproxy"))
    body = encoder.encode(traces, ids)  # POST to <endpoint>/v1/traces (application/x-protobuf)

    The resource and scope are encoded once; so is every attribute key the gateway writes.
    ``ids`` draws the phases' span ids (nothing outside the trace refers to them, so they are
    drawn here, off the request path).
    """

    def __init__(self, resource: Mapping[str, str]) -> None:
        attributes = b"".join(
            pb.length_delimited(1, pb.key_value(pb.key_prefix(k), v)) for k, v in resource.items()
        )
        self._resource = pb.length_delimited(1, attributes)  # ResourceSpans.resource
        scope = pb.string(1, SCOPE_NAME) + pb.string(2, __version__)
        self._scope = pb.length_delimited(1, scope)  # ScopeSpans.scope
        self._keys: dict[str, bytes] = {}
        """The phases' attribute keys, encoded on first use."""
        self._names: dict[str, bytes] = {}
        """Phase span names, encoded (``llmproxy.auth``...)."""

    def encode(self, traces: Sequence[RequestTrace], ids: random.Random) -> bytes:
        """The ``ExportTraceServiceRequest`` of ``traces``: one resource, one scope."""
        return self.request([self.spans(trace, ids) for trace in traces])

    def spans(self, trace: RequestTrace, ids: random.Random) -> bytes:
        """The spans of one request, encoded (``ScopeSpans.spans`` fields, one after another):
        what :meth:`request` joins."""
        out: list[bytes] = []
        self._request(trace, ids, out)
        return b"".join(out)

    def request(self, spans: Sequence[bytes]) -> bytes:
        """The ``ExportTraceServiceRequest`` holding requests' :meth:`spans`.

        One join: the nested messages' lengths are summed first, so a batch (~100 kB) is
        copied once rather than once per level of nesting."""
        size = len(self._scope) + sum(map(len, spans))
        scope_spans = pb.tag(2, pb.LENGTH) + pb.varint(size)  # ResourceSpans.scope_spans
        resource_spans = len(self._resource) + len(scope_spans) + size
        return b"".join(
            (
                pb.tag(1, pb.LENGTH),  # ExportTraceServiceRequest.resource_spans
                pb.varint(resource_spans),
                self._resource,
                scope_spans,
                self._scope,
                *spans,
            )
        )

    def _request(self, trace: RequestTrace, ids: random.Random, out: list[bytes]) -> None:
        """Append the spans of one request (see the module docstring) to ``out``."""
        trace_id = _TRACE_ID + trace.trace_id.to_bytes(16, "big")
        state = pb.string(3, trace.tracestate) if trace.tracestate else b""
        own = trace.span_id.to_bytes(8, "big")
        under_own = _PARENT_ID + own
        events = b""
        if trace.first_token:
            events = _encode_event(_FIRST_TOKEN, trace.first_token)
            finished = trace.finished
            if finished is not None and finished.stream:
                events += _encode_event(_STREAM_END, trace.end)
        parent = _PARENT_ID + trace.parent_id.to_bytes(8, "big") if trace.parent_id else b""
        out.append(
            pb.length_delimited(
                _SPAN,
                b"".join(
                    (
                        trace_id,
                        _SPAN_ID,
                        own,
                        state,
                        parent,
                        pb.string(5, f"{trace.method} {trace.endpoint}"),
                        _KIND[SERVER],
                        _START,
                        _PACK64(trace.start),
                        _END,
                        _PACK64(trace.end),
                        _server_attributes(trace),
                        events,
                        _ERROR if trace.status >= 500 else _UNSET,
                        _REMOTE_PARENT if trace.parent_id else _LOCAL_PARENT,
                    )
                ),
            )
        )
        for phase in trace.phases:
            name = self._names.get(phase.name)
            if name is None:
                name = self._names[phase.name] = pb.string(5, f"llmproxy.{phase.name}")
            span_id = (ids.getrandbits(64) or 1).to_bytes(8, "big")
            attributes = self._attributes(phase.attributes) if phase.attributes else b""
            out.append(
                pb.length_delimited(
                    _SPAN,
                    b"".join(
                        (
                            trace_id,
                            _SPAN_ID,
                            span_id,
                            state,
                            under_own,
                            name,
                            _KIND[INTERNAL],
                            _START,
                            _PACK64(phase.start),
                            _END,
                            _PACK64(phase.end),
                            attributes,
                            _UNSET,
                            _LOCAL_PARENT,
                        )
                    ),
                )
            )
        for number, attempt in enumerate(trace.attempts, 1):
            attributes = _attribute(_K_BACKEND, attempt.backend) + _attribute(_K_ATTEMPT, number)
            if attempt.status:
                attributes += _attribute(_K_STATUS, attempt.status)
            if attempt.error:
                attributes += _attribute(_K_ERROR, attempt.error)
            failed = attempt.error or attempt.status >= 500
            out.append(
                pb.length_delimited(
                    _SPAN,
                    b"".join(
                        (
                            trace_id,
                            _SPAN_ID,
                            attempt.span_id.to_bytes(8, "big"),
                            state,
                            under_own,
                            _UPSTREAM,
                            _KIND[CLIENT],
                            _START,
                            _PACK64(attempt.start),
                            _END,
                            _PACK64(attempt.end or trace.end),
                            attributes,
                            _ERROR if failed else _UNSET,
                            _LOCAL_PARENT,
                        )
                    ),
                )
            )

    def _attributes(self, attributes: Mapping[str, AttributeValue]) -> bytes:
        """Span attributes (``Span.attributes``, repeated KeyValue), keys encoded once."""
        keys = self._keys
        out = []
        for key, value in attributes.items():
            prefix = keys.get(key)
            if prefix is None:
                prefix = keys[key] = pb.key_prefix(key)
            out.append(pb.key_value_field(_ATTRIBUTE, prefix, value))
        return b"".join(out)


def _encode_event(event: tuple[bytes, bytes], time: int) -> bytes:
    """A span event with no attributes: ``Event.time_unix_nano`` (1), then ``name`` (2)."""
    field, name = event
    payload = b"\x09" + _PACK64(time) + name  # \x09: field 1, fixed64
    return field + pb.varint(len(payload)) + payload


def _server_attributes(trace: RequestTrace) -> bytes:
    """The server span's attributes (``Span.attributes``), written as they are found."""
    out = [
        _attribute(_K_METHOD, trace.method),
        _attribute(_K_PATH, trace.endpoint),
        _attribute(_K_REQUEST_ID, trace.request_id),
    ]
    status = trace.status
    if status:
        out.append(_attribute(_K_STATUS, status))
    if trace.error:
        out.append(_attribute(_K_ERROR, trace.error))
    elif status >= 500:
        out.append(_attribute(_K_ERROR, str(status)))
    api = ENDPOINT_API.get(trace.endpoint)
    if api is not None:
        out.append(_OPERATION[api])
    if trace.max_tokens is not None:
        out.append(_attribute(_K_MAX_TOKENS, trace.max_tokens))
    if trace.attempts:
        out.append(_attribute(_K_ATTEMPTS, len(trace.attempts)))
    if trace.phases:
        waited = sum(p.end - p.start for p in trace.phases if p.name == "queue")
        if waited:
            out.append(_attribute(_K_QUEUE_WAIT, waited / 1e9))
    done = trace.finished
    if done is not None:
        if done.model:
            model = _attribute(_K_REQUEST_MODEL, done.model)
            out.append(model)
            if done.served:
                # The gateway forwards the model as named; the backend answers for that model.
                out.append(_attribute(_K_RESPONSE_MODEL, done.model))
        if done.backend:
            out.append(_attribute(_K_BACKEND, done.backend))
        if done.key_id:
            out.append(_attribute(_K_KEY_ID, done.key_id))  # the key's id, never its secret
        if done.user_id:
            out.append(_attribute(_K_USER, done.user_id))
        out.append(_STREAMED if done.stream else _NOT_STREAMED)
        if done.served or done.prompt_tokens:
            out.append(_attribute(_K_INPUT_TOKENS, done.prompt_tokens))
            out.append(_attribute(_K_OUTPUT_TOKENS, done.completion_tokens))
            out.append(_attribute(_K_USAGE_SOURCE, done.usage_source))
        if done.finish_reason:
            out.append(_attribute(_K_FINISH_REASONS, (done.finish_reason,)))
        if done.cancelled:
            out.append(_CANCELLED)
    return b"".join(out)
