"""The hand-written OTLP encoding against OpenTelemetry's own: decoded, they are the same."""

from __future__ import annotations

import random
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._internal import _encode_value
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from llmproxy import __version__
from llmproxy.finish import Finished
from llmproxy.tracing import protobuf
from llmproxy.tracing.otlp import OtlpEncoder, resource_attributes
from llmproxy.tracing.request import Phase, RequestTrace
from tests.tracing import sdk_spans

T0 = 1_700_000_000_000_000_000


def _finished(**fields: object) -> Finished:
    base: dict[str, object] = {
        "request_id": "r",
        "method": "POST",
        "endpoint": "/v1/chat/completions",
        "client_ip": None,
        "model": "mock-model",
        "stream": True,
        "backend": "http://127.0.0.1:9",
        "status": 200,
        "duration": 0.5,
        "ttft": 0.1,
        "prompt_tokens": 12,
        "completion_tokens": 7,
        "total_tokens": 19,
        "usage_source": "backend",
        "finish_reason": "length",
        "cancelled": False,
        "bytes_sent": 100,
        "key_id": "sha256:abc",
        "user_id": "alice",
    }
    base.update(fields)
    return Finished(**base)  # type: ignore[arg-type]


def _streamed_with_everything(rng: random.Random) -> RequestTrace:
    """A trusted client's context, every phase, a failed attempt then a good one, both events."""
    trace = RequestTrace(
        rng,
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        True,
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        T0,
        "POST",
        "/v1/chat/completions",
        "req-1",
    )
    trace.phases.append(Phase("auth", T0 + 10, T0 + 20, {"llmproxy.auth.provider": "a"}))
    trace.phases.append(Phase("limits", T0 + 20, T0 + 30, None))
    trace.phases.append(Phase("queue", T0 + 30, T0 + 1_500_000, None))
    trace.begin_attempt("http://b1")
    trace.end_attempt(502)
    trace.attempt_failed("upstream_status")
    trace.begin_attempt("http://b2")
    trace.end_attempt(200)
    trace.first_token = T0 + 2_000_000
    trace.ended(_finished(cancelled=True, model="modèle-ü"), 2**40)
    trace.end = T0 + 9_000_000
    return trace


def _bare(rng: random.Random) -> RequestTrace:
    """Refused before it was proxied: no parent, no phase, no attempt, no Finished."""
    trace = RequestTrace(rng, 7, 0, True, "", T0, "POST", "/v1/embeddings", "req-2")
    trace.status, trace.error = 401, "invalid_api_key"
    trace.end = T0 + 1
    return trace


def _failed(rng: random.Random) -> RequestTrace:
    """A 500 whose attempt never ended, not streamed, with a first token: no stream_end."""
    trace = RequestTrace(rng, 1 << 127, 0, False, "", T0, "POST", "/v1/messages", "req-3")
    trace.begin_attempt("http://b1")
    trace.first_token = T0 + 5
    trace.ended(_finished(status=500, stream=False, prompt_tokens=0, user_id=""), -1)
    trace.end = T0 + 50
    return trace


def _decoded(body: bytes) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    return message


def test_the_encoding_matches_the_sdks_field_by_field() -> None:
    """Spans, ids, parents, kinds, times, attributes, events, status, flags and scope are what
    OpenTelemetry's encoder writes for the same notes; the resource differs only in naming
    the gateway, not the SDK, as telemetry.sdk.name."""
    traces = [
        make(random.Random(n)) for n, make in enumerate((_streamed_with_everything, _bare, _failed))
    ]
    environ = {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=a%20b"}
    ours = _decoded(
        OtlpEncoder(resource_attributes("gw", environ)).encode(traces, random.Random(9))
    )
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environ.items():
            patch.setenv(name, value)
        where = sdk_spans.resource("gw")
    theirs = _decoded(sdk_spans.encode(traces, where, random.Random(9)))

    assert len(ours.resource_spans) == len(theirs.resource_spans) == 1
    (our_spans,), (their_spans,) = ours.resource_spans, theirs.resource_spans
    assert our_spans.scope_spans == their_spans.scope_spans
    assert [s.name for s in our_spans.scope_spans[0].spans] == [
        "POST /v1/chat/completions",
        "llmproxy.auth",
        "llmproxy.limits",
        "llmproxy.queue",
        "llmproxy.upstream",
        "llmproxy.upstream",
        "POST /v1/embeddings",
        "POST /v1/messages",
        "llmproxy.upstream",
    ]
    ours_resource = {a.key: a.value.string_value for a in our_spans.resource.attributes}
    theirs_resource = {a.key: a.value.string_value for a in their_spans.resource.attributes}
    assert ours_resource.pop("telemetry.sdk.name") == "llmproxy"
    assert theirs_resource.pop("telemetry.sdk.name") == "opentelemetry"
    assert ours_resource.pop("telemetry.sdk.version") == __version__
    theirs_resource.pop("telemetry.sdk.version")
    assert uuid.UUID(ours_resource.pop("service.instance.id")).version == 4
    theirs_resource.pop("service.instance.id")
    assert ours_resource == theirs_resource
    assert ours_resource["team"] == "a b"
    assert list(ours_resource)[-2:] == ["service.name", "service.version"]


def test_the_scope_spans_are_byte_for_byte_the_sdks() -> None:
    """Not only equal once decoded: the spans' bytes are the SDK's, field order included."""
    traces = [_streamed_with_everything(random.Random(1)), _failed(random.Random(2))]
    ours = _decoded(OtlpEncoder(resource_attributes("gw", {})).encode(traces, random.Random(3)))
    theirs = _decoded(sdk_spans.encode(traces, sdk_spans.resource("gw"), random.Random(3)))
    ours_bytes = ours.resource_spans[0].scope_spans[0].SerializeToString(deterministic=True)
    theirs_bytes = theirs.resource_spans[0].scope_spans[0].SerializeToString(deterministic=True)
    assert ours_bytes == theirs_bytes
    raw = OtlpEncoder(resource_attributes("gw", {})).encode(traces, random.Random(3))
    assert theirs_bytes in raw  # our own bytes, not only their re-serialisation


def test_an_empty_batch_is_a_valid_request() -> None:
    """No traces: one resource with an empty scope, still decodable."""
    message = _decoded(OtlpEncoder(resource_attributes("gw", {})).encode([], random.Random()))
    assert len(message.resource_spans[0].scope_spans[0].spans) == 0


values = st.one_of(
    st.text(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.lists(st.text(max_size=5), max_size=4).map(tuple),
)


@given(values)
def test_an_attribute_value_is_encoded_as_protobuf_does(value: protobuf.AttributeValue) -> None:
    """Strings, bools, int64s (negative ones too), doubles and string arrays: the same bytes
    as the protobuf library's AnyValue."""
    assert protobuf.any_value(value) == _encode_value(value).SerializeToString()
    assert AnyValue.FromString(protobuf.any_value(value)) == _encode_value(value)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varints_round_trip(value: int) -> None:
    """A varint is as long as it must be and reads back as the value."""
    encoded = protobuf.varint(value)
    assert len(encoded) == max(1, (value.bit_length() + 6) // 7)
    message = AnyValue.FromString(protobuf.tag(3, protobuf.VARINT) + encoded)
    assert message.int_value & 0xFFFFFFFFFFFFFFFF == value
