"""Building a recording line from a captured request: bodies, shapes, redaction (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmproxy.record.capture import Captured, recorded_request, redacted, request_shape
from llmproxy.record.format import MessageShape, Outcome, RequestShape, decode_line, encode_line

SECRET = "sk-llmp-very-secret-key-0123456789"
CHAT_PATH = "/v1/chat/completions"

CHAT: dict[str, Any] = {
    "model": "llama",
    "max_tokens": 64,
    "temperature": 0.2,
    "messages": [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this picture:"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "text", "text": "and be brief"},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "cats"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Cats are mammals."},
    ],
}


def captured(body: dict[str, Any] | bytes, endpoint: str = CHAT_PATH) -> Captured:
    return Captured(
        arrival=12.5,
        endpoint=endpoint,
        model="llama",
        stream=True,
        key_id="key_42",
        body=body if isinstance(body, bytes) else json.dumps(body).encode(),
        outcome=Outcome(status=200, prompt_tokens=30, completion_tokens=7, ttft_ms=12.0),
    )


def test_body_is_recorded_as_sent() -> None:
    """With bodies on, the line carries the body unchanged, and everything else captured."""
    line = recorded_request(captured(CHAT), offset=2.5, time=1e9, bodies=True, redact=False)
    assert line.body == CHAT
    assert line.shape is None
    assert (line.offset, line.time, line.endpoint, line.model) == (2.5, 1e9, CHAT_PATH, "llama")
    assert (line.stream, line.key_id) == (True, "key_42")
    assert line.outcome == Outcome(status=200, prompt_tokens=30, completion_tokens=7, ttft_ms=12.0)
    assert decode_line(encode_line(line)) == line


def test_shape_keeps_roles_and_lengths_only() -> None:
    """Without bodies: roles, text lengths (text parts summed) and max_tokens; no text at all."""
    line = recorded_request(captured(CHAT), offset=0.0, time=0.0, bodies=False, redact=False)
    assert line.body is None
    assert line.shape == RequestShape(
        messages=(
            MessageShape("system", len("You are terse.")),
            MessageShape("user", len("Describe this picture:") + len("and be brief")),
            MessageShape("assistant", 0),
            MessageShape("tool", len("Cats are mammals.")),
        ),
        prompt_chars=0,
        max_tokens=64,
    )
    encoded = encode_line(line)
    assert b"terse" not in encoded
    assert b"mammals" not in encoded
    assert decode_line(encoded) == line


@pytest.mark.parametrize(
    ("body", "chars"),
    [
        ({"model": "m", "prompt": "Once upon a time"}, 16),
        ({"model": "m", "prompt": ["abc", "de"]}, 5),
        ({"model": "m", "prompt": [1, 2, 3]}, 0),
        ({"model": "m", "input": "embed me"}, 8),
        ({"model": "m", "input": ["a", "bcd"]}, 4),
        ({"model": "m"}, 0),
    ],
)
def test_prompt_shape(body: dict[str, Any], chars: int) -> None:
    """Completions prompts and embeddings inputs count their characters."""
    assert request_shape(body).prompt_chars == chars
    assert request_shape(body).messages == ()


def test_max_completion_tokens_and_odd_values() -> None:
    """max_completion_tokens stands in for max_tokens; booleans and odd messages do not count."""
    assert request_shape({"max_completion_tokens": 12}).max_tokens == 12
    assert request_shape({"max_tokens": True}).max_tokens is None
    odd = request_shape({"messages": ["hello", {"role": 7, "content": 3}]})
    assert odd.messages == (MessageShape("", 0), MessageShape("", 0))


def _texts(body: dict[str, Any]) -> list[str]:
    """Every text a redaction must hide, in order."""
    texts: list[str] = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [part["text"] for part in content if "text" in part]
        for call in message.get("tool_calls", []):
            texts.append(call["function"]["arguments"])
    for field in ("prompt", "input"):
        value = body.get(field)
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            texts += [item for item in value if isinstance(item, str)]
    return texts


@pytest.mark.parametrize(
    "body",
    [
        CHAT,
        {"model": "m", "prompt": "Once upon a time", "max_tokens": 5},
        {"model": "m", "prompt": ["first prompt", "second", 3]},
        {"model": "m", "input": ["embed me", "and me"]},
        {"model": "m", "messages": [{"role": "user", "content": "héllo wörld ✓"}]},
    ],
)
def test_redaction_keeps_every_length_and_no_text(body: dict[str, Any]) -> None:
    """Every text becomes as many x's; structure, roles and parameters stay as they were."""
    line = recorded_request(captured(body), offset=0.0, time=0.0, bodies=True, redact=True)
    assert line.body is not None
    before, after = _texts(body), _texts(line.body)
    assert [len(text) for text in after] == [len(text) for text in before]
    assert all(set(text) <= {"x"} for text in after)
    assert request_shape(line.body) == request_shape(body)
    encoded = encode_line(line).decode()
    for text in before:
        if text.strip("x"):
            assert text not in encoded
    assert redacted(body) != body or not any(before)
    assert {k: v for k, v in line.body.items() if k not in ("messages", "prompt", "input")} == {
        k: v for k, v in body.items() if k not in ("messages", "prompt", "input")
    }


def test_redaction_does_not_touch_the_original() -> None:
    """The parsed body is copied, never changed in place."""
    body = json.loads(json.dumps(CHAT))
    redacted(body)
    assert body == CHAT


def test_the_key_never_reaches_the_line() -> None:
    """Only the key id is captured: the line has no secret and no Authorization anywhere."""
    line = recorded_request(captured(CHAT), offset=0.0, time=0.0, bodies=True, redact=False)
    encoded = encode_line(line)
    assert SECRET.encode() not in encoded
    assert b"authorization" not in encoded.lower()
    assert b'"key_id":"key_42"' in encoded


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"text"'])
def test_a_body_that_is_no_object_becomes_an_empty_shape(raw: bytes) -> None:
    """Defensive: the gateway refuses such bodies, but a line is still valid if one gets here."""
    line = recorded_request(captured(raw), offset=0.0, time=0.0, bodies=True, redact=True)
    assert line.body is None
    assert line.shape == RequestShape()
    assert decode_line(encode_line(line)) == line


def test_messages_and_responses_bodies_are_shaped_and_redacted() -> None:
    """Anthropic's ``system`` and blocks (text, tool use, tool result, thinking) and the
    Responses API's ``instructions`` and input items: sized in the shape, their text replaced
    by ``x``s of the same length, nothing else changed."""
    messages = {
        "model": "m",
        "max_tokens": 9,
        "system": [{"type": "text", "text": "secret system", "cache_control": {"type": "x"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "my password"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"q": "private"}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "result!"}],
            },
        ],
    }
    shape = request_shape(messages)
    assert [(m.role, m.chars) for m in shape.messages] == [
        ("system", 13), ("user", 11), ("assistant", 0), ("user", 0),
    ]  # fmt: skip
    assert shape.max_tokens == 9
    hidden = redacted(messages)
    text = json.dumps(hidden)
    for secret in ("secret system", "my password", "hmm", "private", "result!"):
        assert secret not in text
    assert hidden["system"][0]["cache_control"] == {"type": "x"}
    assert hidden["messages"][1]["content"][1]["name"] == "f"

    responses = {
        "model": "m",
        "instructions": "be nice",
        "max_output_tokens": 4,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "tell me"}]}],
    }
    shape = request_shape(responses)
    assert [(m.role, m.chars) for m in shape.messages] == [("system", 7), ("user", 7)]
    assert shape.max_tokens == 4
    hidden = redacted(responses)
    assert hidden["instructions"] == "x" * 7
    assert hidden["input"][0]["content"][0]["text"] == "x" * 7
