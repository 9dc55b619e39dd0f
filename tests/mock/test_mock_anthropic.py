"""Anthropic's Messages API on the mock, read by the official ``anthropic`` client and raw."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic.types import MessageParam, ToolParam
from anthropic.types.beta import BetaMessageParam

from llmproxy.mock import MockBackend, MockSettings, completion_text, estimate_tokens

SYSTEM = "You are terse."
HELLO: list[MessageParam] = [{"role": "user", "content": "Say something."}]
PROMPT_TOKENS = estimate_tokens(len(SYSTEM) + len("Say something."))
TOOLS: list[ToolParam] = [
    {
        "name": "search",
        "description": "Search the web.",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
    {"name": "fetch", "input_schema": {"type": "object"}},
]


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each frame, checking Anthropic's framing on the way."""
    events = []
    for frame in raw.decode().split("\n\n")[:-1]:
        name_line, data_line = frame.split("\n")
        name = name_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        events.append((name, data))
    return events


async def test_create(claude: anthropic.AsyncAnthropic) -> None:
    """A message cut at max_tokens has that many tokens, stop_reason max_tokens and usage."""
    message = await claude.messages.create(
        model="mock-model", max_tokens=5, system=SYSTEM, messages=HELLO
    )
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", "mock-model")
    assert len(message.content) == 1
    assert message.content[0].type == "text"
    assert message.content[0].text == completion_text(5)
    assert (message.stop_reason, message.stop_sequence) == ("max_tokens", None)
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (PROMPT_TOKENS, 5)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)


async def test_large_max_tokens_ends_turn(claude: anthropic.AsyncAnthropic) -> None:
    """A max_tokens above the tokens knob caps nothing: the answer has `tokens` tokens, end_turn."""
    message = await claude.messages.create(model="mock-model", max_tokens=4096, messages=HELLO)
    assert message.content[0].type == "text"
    assert message.content[0].text == completion_text(16)
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 16


async def test_stream_helper(claude: anthropic.AsyncAnthropic) -> None:
    """The SDK's stream helper yields one text delta per token and assembles the final message."""
    async with claude.messages.stream(
        model="mock-model", max_tokens=6, system=[{"type": "text", "text": SYSTEM}], messages=HELLO
    ) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert texts == [completion_text(i + 1)[len(completion_text(i)) :] for i in range(6)]
    assert final.content[0].type == "text"
    assert final.content[0].text == completion_text(6)
    assert final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (PROMPT_TOKENS, 6)


async def test_stream_events(claude: anthropic.AsyncAnthropic) -> None:
    """create(stream=True) yields Anthropic's event sequence, ping aside."""
    stream = await claude.messages.create(
        model="mock-model", max_tokens=3, messages=HELLO, stream=True
    )
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]
    assert start.type == "message_start"
    assert start.message.content == []
    assert (start.message.usage.input_tokens, start.message.usage.output_tokens) == (
        estimate_tokens(len("Say something.")),
        1,
    )
    delta = events[-2]
    assert delta.type == "message_delta"
    assert (delta.delta.stop_reason, delta.usage.output_tokens) == ("max_tokens", 3)


async def test_raw_sse_framing(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """Each frame is `event: <type>` then `data: <json>`; a ping follows message_start."""
    body = {"model": "mock-model", "max_tokens": 2, "messages": HELLO, "stream": True}
    async with http.post(mock.url + "/v1/messages", json=body) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["x-mock-backend"] == "mock"
        events = sse_events(await response.read())
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert events[3][1] == {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "lorem "},
    }
    assert events[6][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {"output_tokens": 2},
    }


async def test_tool_use_round_trip(claude: anthropic.AsyncAnthropic) -> None:
    """Offered tools, the model calls the first; given the tool's result, it answers in text."""
    first = await claude.messages.create(
        model="mock-model", max_tokens=100, messages=HELLO, tools=TOOLS
    )
    assert first.stop_reason == "tool_use"
    assert len(first.content) == 1
    call = first.content[0]
    assert call.type == "tool_use"
    assert call.id.startswith("toolu_")
    assert (call.name, call.input) == ("search", {"query": "lorem"})
    assert first.usage.output_tokens == 3
    follow_up: list[MessageParam] = [
        *HELLO,
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "found it"}],
        },
    ]
    second = await claude.messages.create(
        model="mock-model", max_tokens=4, messages=follow_up, tools=TOOLS
    )
    assert second.stop_reason == "max_tokens"
    assert second.content[0].type == "text"
    assert second.content[0].text == completion_text(4)
    assert second.usage.input_tokens == estimate_tokens(len("Say something.found it"))


async def test_tool_choice(claude: anthropic.AsyncAnthropic) -> None:
    """A named tool_choice picks the tool called; tool_choice none gets text."""
    named = await claude.messages.create(
        model="mock-model",
        max_tokens=10,
        messages=HELLO,
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "fetch"},
    )
    assert named.content[0].type == "tool_use"
    assert named.content[0].name == "fetch"
    none = await claude.messages.create(
        model="mock-model", max_tokens=2, messages=HELLO, tools=TOOLS, tool_choice={"type": "none"}
    )
    assert none.content[0].type == "text"
    assert none.stop_reason == "max_tokens"


async def test_tool_use_stream(claude: anthropic.AsyncAnthropic) -> None:
    """A streamed tool call arrives as input_json_delta pieces the SDK assembles into the input."""
    async with claude.messages.stream(
        model="mock-model", max_tokens=100, messages=HELLO, tools=TOOLS
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_message()
    pieces = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert "".join(pieces) == '{"query": "lorem"}'
    assert len(pieces) == 3
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use"
    assert (final.content[0].name, final.content[0].input) == ("search", {"query": "lorem"})
    assert final.usage.output_tokens == 3


async def test_count_tokens(claude: anthropic.AsyncAnthropic) -> None:
    """count_tokens bills the system prompt, text blocks and tool results' text, not images."""
    messages: list[MessageParam] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "abcdefgh"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "search", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [{"type": "text", "text": "1234"}],
                }
            ],
        },
    ]
    counted = await claude.messages.count_tokens(
        model="mock-model", system=SYSTEM, messages=messages, tools=TOOLS
    )
    assert counted.input_tokens == estimate_tokens(len(SYSTEM) + len("abcdefgh") + len("1234"))
    message = await claude.messages.create(
        model="mock-model", max_tokens=1, system=SYSTEM, messages=messages
    )
    assert message.usage.input_tokens == counted.input_tokens


async def test_beta_query_string(
    mock: MockBackend, http: aiohttp.ClientSession, claude: anthropic.AsyncAnthropic
) -> None:
    """The beta client's /v1/messages?beta=true is the same endpoint."""
    hello: list[BetaMessageParam] = [{"role": "user", "content": "Say something."}]
    message = await claude.beta.messages.create(model="mock-model", max_tokens=2, messages=hello)
    assert message.content[0].type == "text"
    assert message.content[0].text == completion_text(2)
    counted = await claude.beta.messages.count_tokens(model="mock-model", messages=hello)
    assert counted.input_tokens == estimate_tokens(len("Say something."))
    assert mock.stats.by_path == {"/v1/messages": 1, "/v1/messages/count_tokens": 1}
    body = {"model": "mock-model", "max_tokens": 1, "messages": hello}
    async with http.post(mock.url + "/v1/messages?beta=true", json=body) as response:
        assert response.status == 200
        assert (await response.json())["content"] == [{"type": "text", "text": "lorem "}]


async def test_unknown_model(claude: anthropic.AsyncAnthropic) -> None:
    """A model the mock does not serve is Anthropic's 404 not_found_error."""
    with pytest.raises(anthropic.NotFoundError) as caught:
        await claude.messages.create(model="claude-x", max_tokens=5, messages=HELLO)
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The model `claude-x` does not exist."},
    }


@pytest.mark.parametrize(
    "body",
    [
        {"model": "mock-model", "messages": HELLO},  # max_tokens is required
        {"model": "mock-model", "max_tokens": 0, "messages": HELLO},
        {"model": "mock-model", "max_tokens": 5, "messages": [{"role": "user", "content": 3}]},
    ],
)
async def test_bad_body(mock: MockBackend, http: aiohttp.ClientSession, body: Any) -> None:
    """A body that does not fit the Messages API is a 400 invalid_request_error."""
    async with http.post(mock.url + "/v1/messages", json=body) as response:
        assert response.status == 400
        error = await response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(("Object missing", "Expected"))


async def test_unknown_path_and_bad_header(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """Errors the server itself raises under /v1/messages are in Anthropic's shape too."""
    async with http.get(mock.url + "/v1/messages") as response:
        assert response.status == 404
        assert (await response.json())["error"]["type"] == "not_found_error"
    body = {"model": "mock-model", "max_tokens": 1, "messages": HELLO}
    headers = {"x-mock-ttft": "soon"}
    async with http.post(mock.url + "/v1/messages", json=body, headers=headers) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert "x-mock-ttft" in error["message"]


@pytest.mark.parametrize(
    ("fault", "status", "error_type", "exception"),
    [
        ("500", 500, "api_error", anthropic.InternalServerError),
        ("429", 429, "rate_limit_error", anthropic.RateLimitError),
        ("529", 529, "overloaded_error", anthropic.OverloadedError),
    ],
)
async def test_error_faults(
    mock: MockBackend,
    http: aiohttp.ClientSession,
    claude: anthropic.AsyncAnthropic,
    fault: str,
    status: int,
    error_type: str,
    exception: type[anthropic.APIStatusError],
) -> None:
    """The status faults answer in Anthropic's error shape (429 with retry-after)."""
    body = {"model": "mock-model", "max_tokens": 5, "messages": HELLO}
    headers = {"x-mock-fault": fault}
    async with http.post(mock.url + "/v1/messages", json=body, headers=headers) as response:
        assert response.status == status
        error = await response.json()
        assert (response.headers.get("Retry-After") == "1") == (fault == "429")
        assert response.headers["x-mock-backend"] == "mock"
    assert error["error"]["type"] == error_type
    with pytest.raises(exception) as caught:
        await claude.messages.create(
            model="mock-model", max_tokens=5, messages=HELLO, extra_headers=headers
        )
    assert caught.value.status_code == status


async def test_reset_mid(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """reset_mid drops a stream after fault_after deltas; message_stop never arrives."""
    body = {"model": "mock-model", "max_tokens": 10, "messages": HELLO, "stream": True}
    headers = {"x-mock-fault": "reset_mid", "x-mock-fault-after": "3"}
    lines: list[bytes] = []

    async def read_all() -> None:
        url = mock.url + "/v1/messages"
        async with http.post(url, json=body, headers=headers) as response:
            async for line in response.content:
                lines.append(line)

    with pytest.raises(aiohttp.ClientPayloadError):
        await read_all()
    assert lines.count(b"event: content_block_delta\n") == 3
    assert b"event: message_stop\n" not in lines
    assert mock.stats.cancellations == 0


async def test_stream_clock(mock: MockBackend, claude: anthropic.AsyncAnthropic) -> None:
    """ttft delays the first event, itl spaces the token deltas, as for a chat."""
    headers = {"x-mock-ttft": "0.1", "x-mock-itl": "0.05"}
    started = time.perf_counter()
    stamps = []
    async with claude.messages.stream(
        model="mock-model", max_tokens=3, messages=HELLO, extra_headers=headers
    ) as stream:
        async for _ in stream.text_stream:
            stamps.append(time.perf_counter() - started)
    assert stamps[0] >= 0.09
    assert stamps[2] - stamps[0] >= 0.09


async def test_api_key_header() -> None:
    """With api_key set, Anthropic's x-api-key is accepted; a wrong one is authentication_error."""
    async with MockBackend(MockSettings(api_key="sk-good")) as mock:
        async with anthropic.AsyncAnthropic(
            base_url=mock.url, api_key="sk-bad", max_retries=0
        ) as bad:
            with pytest.raises(anthropic.AuthenticationError) as caught:
                await bad.messages.create(model="mock-model", max_tokens=1, messages=HELLO)
            assert caught.value.body == {
                "type": "error",
                "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
            }
        async with anthropic.AsyncAnthropic(
            base_url=mock.url, api_key="sk-good", max_retries=0
        ) as good:
            message = await good.messages.create(model="mock-model", max_tokens=1, messages=HELLO)
            assert message.usage.output_tokens == 1
