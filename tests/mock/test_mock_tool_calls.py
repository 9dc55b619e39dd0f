"""Chat completions offered tools answer with a tool call, streamed or not."""

from __future__ import annotations

import json

import aiohttp
import openai
from openai.types.chat import (
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from llmproxy.mock import MockBackend, completion_text, estimate_tokens

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Find it."}]
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "other"}},
]


async def test_tool_call(client: openai.AsyncOpenAI) -> None:
    """The first tool is called with {"query": "lorem"}, finish_reason tool_calls, 3 tokens."""
    result = await client.chat.completions.create(
        model="mock-model", messages=MESSAGES, tools=TOOLS, max_tokens=50
    )
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_")
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.type == "function"
    assert call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"query": "lorem"}
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (
        estimate_tokens(len("Find it.")),
        3,
    )


async def test_tool_result_gets_text(client: openai.AsyncOpenAI) -> None:
    """After the tool's result (last message role tool), the answer is text again."""
    first = await client.chat.completions.create(model="mock-model", messages=MESSAGES, tools=TOOLS)
    assert first.choices[0].message.tool_calls is not None
    call = first.choices[0].message.tool_calls[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    follow_up: list[ChatCompletionMessageParam] = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "lookup", "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "found"},
    ]
    second = await client.chat.completions.create(
        model="mock-model", messages=follow_up, tools=TOOLS, max_tokens=3
    )
    assert second.choices[0].message.content == completion_text(3)
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].finish_reason == "length"


async def test_tool_choice(client: openai.AsyncOpenAI) -> None:
    """A named tool_choice picks the function; tool_choice none gets text."""
    named = await client.chat.completions.create(
        model="mock-model",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "other"}},
    )
    assert named.choices[0].message.tool_calls is not None
    call = named.choices[0].message.tool_calls[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "other"
    none = await client.chat.completions.create(
        model="mock-model", messages=MESSAGES, tools=TOOLS, tool_choice="none", max_tokens=2
    )
    assert none.choices[0].message.content == completion_text(2)


async def test_tool_call_stream(client: openai.AsyncOpenAI) -> None:
    """Streamed: the call opens with id and name, arguments follow in pieces, then usage."""
    stream = await client.chat.completions.create(
        model="mock-model",
        messages=MESSAGES,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 6  # the opening, 3 argument pieces, the finish, the usage
    opening = chunks[0].choices[0].delta
    assert opening.role == "assistant"
    assert opening.tool_calls is not None
    call = opening.tool_calls[0]
    assert call.index == 0
    assert call.id is not None
    assert call.id.startswith("call_")
    assert call.type == "function"
    assert call.function is not None
    assert (call.function.name, call.function.arguments) == ("lookup", "")
    pieces = []
    for chunk in chunks[1:4]:
        tool_calls = chunk.choices[0].delta.tool_calls
        assert tool_calls is not None
        assert tool_calls[0].function is not None
        assert (tool_calls[0].index, tool_calls[0].id, tool_calls[0].function.name) == (
            0,
            None,
            None,
        )
        pieces.append(tool_calls[0].function.arguments or "")
    assert "".join(pieces) == '{"query": "lorem"}'
    assert [c.choices[0].finish_reason for c in chunks[:5]] == [None] * 4 + ["tool_calls"]
    assert chunks[4].choices[0].delta.tool_calls is None
    assert chunks[5].choices == []
    assert chunks[5].usage is not None
    assert chunks[5].usage.completion_tokens == 3


async def test_tool_call_stream_raw(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """The raw stream ends with [DONE]; every event is a chat.completion.chunk of one id."""
    body = {"model": "mock-model", "messages": MESSAGES, "tools": TOOLS, "stream": True}
    async with http.post(mock.url + "/v1/chat/completions", json=body) as response:
        raw = await response.read()
    frames = raw.split(b"\n\n")
    assert frames[-2:] == [b"data: [DONE]", b""]
    chunks = [json.loads(frame.removeprefix(b"data: ")) for frame in frames[:-2]]
    assert len(chunks) == 5
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
