"""Recorded lines turned into requests: bodies as recorded, shapes with made-up text."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from llmproxy.record.format import RecordedRequest, RequestShape
from llmproxy.replay.outgoing import from_recorded, unrebuildable
from tests.replay.recordings import chat_body, with_body, with_shape


def _body(request: RecordedRequest, **kwargs: Any) -> dict[str, Any]:
    outgoing = from_recorded(request, **kwargs)
    assert outgoing.body is not None
    return msgspec.json.decode(outgoing.body, type=dict[str, Any])


def test_a_recorded_body_is_sent_as_recorded_asking_for_usage() -> None:
    recorded = chat_body(stream=True)
    body = _body(with_body(0.0, recorded))
    assert body == {**recorded, "stream_options": {"include_usage": True}}


def test_an_unstreamed_body_is_untouched() -> None:
    recorded = {**chat_body(stream=False), "temperature": 0.3, "seed": 4}
    assert _body(with_body(0.0, recorded)) == recorded


def test_existing_stream_options_are_kept() -> None:
    recorded = {**chat_body(), "stream_options": {"include_usage": False, "x": 1}}
    assert _body(with_body(0.0, recorded))["stream_options"] == {"include_usage": True, "x": 1}


def test_model_override() -> None:
    request = with_body(0.0, chat_body("llama"))
    outgoing = from_recorded(request, model="qwen", line=7)
    assert outgoing.model == "qwen"
    assert msgspec.json.decode(outgoing.body or b"")["model"] == "qwen"
    assert (outgoing.line, outgoing.offset) == (7, 0.0)
    assert from_recorded(request).model == "llama"


def test_a_chat_shape_gets_messages_of_the_recorded_sizes() -> None:
    request = with_shape(1.5, messages=(("system", 40), ("user", 200)), max_tokens=32)
    outgoing = from_recorded(request, salt=3)
    body = msgspec.json.decode(outgoing.body or b"")
    assert [(m["role"], len(m["content"])) for m in body["messages"]] == [
        ("system", 40),
        ("user", 200),
    ]
    assert body["max_tokens"] == 32
    assert "stream" not in body
    assert (outgoing.endpoint, outgoing.model, outgoing.offset) == (
        "/v1/chat/completions",
        "mock-model",
        1.5,
    )


def test_a_shape_without_max_tokens_asks_for_the_recorded_answer_length() -> None:
    """So the server does about the work the original answer cost."""
    body = _body(with_shape(0.0, completion_tokens=57))
    assert body["max_tokens"] == 57
    assert "max_tokens" not in _body(with_shape(0.0))


def test_a_streamed_shape_streams_and_asks_for_usage() -> None:
    request = with_shape(0.0, stream=True)
    outgoing = from_recorded(request)
    body = msgspec.json.decode(outgoing.body or b"")
    assert outgoing.stream is True
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_completion_and_embedding_shapes() -> None:
    completion = _body(with_shape(0.0, "/v1/completions", prompt_chars=90, messages=()))
    assert len(completion["prompt"]) == 90
    embedding = _body(with_shape(0.0, "/v1/embeddings", prompt_chars=30, messages=(), stream=True))
    assert len(embedding["input"]) == 30
    assert "stream" not in embedding


def test_made_up_text_differs_per_request() -> None:
    first = _body(with_shape(0.0), salt=1)["messages"][1]["content"]
    second = _body(with_shape(0.0), salt=2)["messages"][1]["content"]
    assert first != second


def test_a_get_has_no_body() -> None:
    request = RecordedRequest(offset=0.0, method="GET", endpoint="/v1/models", shape=RequestShape())
    outgoing = from_recorded(request)
    assert (outgoing.method, outgoing.body, outgoing.stream) == ("GET", None, False)


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        (with_shape(0.0, "/v1/audio/speech"), "/v1/audio/speech"),
        (with_body(0.0, chat_body(), endpoint="v1/chat"), "not a path"),
    ],
)
def test_unrebuildable(request_: RecordedRequest, problem: str) -> None:
    reason = unrebuildable(request_)
    assert reason is not None
    assert problem in reason


def test_rebuildable() -> None:
    assert unrebuildable(with_body(0.0, chat_body(), endpoint="/v1/responses")) is None
    assert unrebuildable(with_shape(0.0)) is None
