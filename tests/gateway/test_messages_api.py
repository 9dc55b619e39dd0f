"""Anthropic's Messages API through the gateway, with the official ``anthropic`` SDK as the client:
routed by model, keys from ``x-api-key``, limited, billed from the stream's own usage events, and
errors in Anthropic's shape so the SDK raises its typed exceptions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest

from llmproxy.config.model import Config
from tests.gateway.test_usage_e2e import _gateway, _records
from tests.harness import RunningGateway, make_config, mock_backend

KEY = "sk-messages-test"


TOOLS: list[Any] = [
    {
        "name": "lookup",
        "description": "Look something up",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]


async def _tool_round_trip(
    client: anthropic.AsyncAnthropic,
) -> tuple[anthropic.types.Message, anthropic.types.ToolUseBlock, anthropic.types.Message]:
    """Ask with a tool, answer the tool use, ask again: the two answers and the tool use."""
    question: list[Any] = [{"role": "user", "content": "what is lorem?"}]
    first = await client.messages.create(
        model="claude-local", max_tokens=50, tools=TOOLS, messages=question
    )
    use = next(block for block in first.content if block.type == "tool_use")
    history: list[Any] = [
        *question,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "ipsum"}],
        },
    ]
    second = await client.messages.create(
        model="claude-local", max_tokens=6, tools=TOOLS, messages=history
    )
    return first, use, second


def _config(mock_url: str, **sections: Any) -> Config:
    return make_config(
        [{"url": mock_url, "models": ["claude-local"]}],
        auth={
            "enabled": True,
            "pipeline": [{"name": "keys", "type": "static", "keys": [{"key": KEY, "name": "cc"}]}],
        },
        usage={"database": "usage.db"},
        **sections,
    )


def _client(gw: RunningGateway, key: str = KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)


async def test_a_message_is_answered_and_billed_from_its_usage(tmp_path: Path) -> None:
    """Non-streamed: the SDK parses the answer; the record carries the backend's counts."""
    async with (
        mock_backend(models=("claude-local",), tokens=6) as mock,
        _gateway(_config(mock.url), tmp_path) as (gw, sink),
        _client(gw) as client,
    ):
        reply = await client.messages.create(
            model="claude-local",
            max_tokens=6,
            messages=[{"role": "user", "content": "hello there"}],
        )
        (record,) = await _records(sink, 1)
    assert reply.content[0].type == "text"
    assert reply.content[0].text
    assert reply.usage.output_tokens == 6
    assert (record.prompt_tokens, record.completion_tokens) == (reply.usage.input_tokens, 6)
    assert record.usage_source == "backend"
    assert record.endpoint == "/v1/messages"
    assert record.api == "messages"
    assert record.key_name == "cc"
    assert record.status == 200


async def test_a_streamed_message_is_relayed_and_billed(tmp_path: Path) -> None:
    """The SDK's stream helper reads every event; the record is the stream's own usage."""
    async with (
        mock_backend(models=("claude-local",), tokens=9) as mock,
        _gateway(_config(mock.url), tmp_path) as (gw, sink),
        _client(gw) as client,
    ):
        async with client.messages.stream(
            model="claude-local",
            max_tokens=9,
            messages=[{"role": "user", "content": "count for me"}],
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
        (record,) = await _records(sink, 1)
    assert text
    assert final.usage.output_tokens == 9
    assert final.stop_reason is not None
    assert record.stream
    assert (record.prompt_tokens, record.completion_tokens) == (final.usage.input_tokens, 9)
    assert record.usage_source == "backend"


async def test_a_tool_use_round_trip(tmp_path: Path) -> None:
    """The model asks for a tool; its result goes back; the answer is text."""
    async with (
        mock_backend(models=("claude-local",), tokens=4) as mock,
        _gateway(_config(mock.url), tmp_path) as (gw, sink),
        _client(gw) as client,
    ):
        first, use, second = await _tool_round_trip(client)
        records = await _records(sink, 2)
    assert first.stop_reason == "tool_use"
    assert use.name == "lookup"
    assert second.content[0].type == "text"
    assert len(records) == 2


async def test_count_tokens_is_routed_and_never_billed_tokens(tmp_path: Path) -> None:
    async with (
        mock_backend(models=("claude-local",)) as mock,
        _gateway(_config(mock.url), tmp_path) as (gw, sink),
        _client(gw) as client,
    ):
        counted = await client.messages.count_tokens(
            model="claude-local", messages=[{"role": "user", "content": "hello there"}]
        )
        (record,) = await _records(sink, 1)
    assert counted.input_tokens > 0
    assert record.endpoint == "/v1/messages/count_tokens"
    assert record.completion_tokens == 0


async def test_errors_are_the_sdks_typed_exceptions(tmp_path: Path) -> None:
    """A bad key, an unknown model and a spent limit, each as Anthropic says them."""
    limits = {
        "enabled": True,
        "per_key": {"enabled": True, "requests_per_second": 0.01, "burst_size": 1},
    }
    message: list[Any] = [{"role": "user", "content": "hi"}]
    async with (
        mock_backend(models=("claude-local",)) as mock,
        _gateway(_config(mock.url, rate_limit=limits), tmp_path) as (gw, _),
    ):
        async with _client(gw, "sk-wrong") as client:
            with pytest.raises(anthropic.AuthenticationError) as refused:
                await client.messages.create(model="claude-local", max_tokens=5, messages=message)
        async with _client(gw) as client:
            with pytest.raises(anthropic.NotFoundError) as unknown:
                await client.messages.create(model="no-such-model", max_tokens=5, messages=message)
            # The one request of the burst was the unknown model's: the next is over the limit.
            with pytest.raises(anthropic.RateLimitError) as limited:
                await client.messages.create(model="claude-local", max_tokens=5, messages=message)
    body = refused.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert unknown.value.status_code == 404
    assert "no-such-model" in str(unknown.value)
    assert limited.value.response.headers.get("retry-after")


async def test_a_request_shaped_like_claude_codes_is_accepted_and_billed(tmp_path: Path) -> None:
    """``HEAD /``, then ``POST /v1/messages?beta=true`` with ``anthropic-version`` and
    ``anthropic-beta``, system blocks with ``cache_control``, many tools, a stream: the query
    string and the headers reach the backend, and the request is billed."""
    tools = [
        {
            "name": f"tool_{i}",
            "description": "does a thing " * 20,
            "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
        }
        for i in range(40)
    ]
    body = {
        "model": "claude-local",
        "max_tokens": 8,
        "stream": True,
        "system": [
            {"type": "text", "text": "You are a coding agent."},
            {
                "type": "text",
                "text": "Repository context " * 50,
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "tools": tools,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "fix the bug", "cache_control": {"type": "ephemeral"}}
                ],
            }
        ],
        "metadata": {"user_id": "user_abc"},
    }
    headers = {
        "x-api-key": KEY,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    }
    async with (
        mock_backend(models=("claude-local",), tokens=8) as mock,
        _gateway(_config(mock.url), tmp_path) as (gw, sink),
        aiohttp.ClientSession() as session,
    ):
        async with session.head(gw.url + "/") as reachable:
            assert reachable.status == 200
        async with session.post(
            gw.url + "/v1/messages?beta=true", json=body, headers=headers
        ) as response:
            assert response.status == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = (await response.read()).decode()
        (record,) = await _records(sink, 1)
    assert "event: message_stop" in events  # with its tools, the mock calls one: tool_use
    final = json.loads(events.split("event: message_delta\ndata: ")[1].split("\n")[0])
    assert final["delta"]["stop_reason"] == "tool_use"
    assert record.completion_tokens == final["usage"]["output_tokens"] > 0
    assert record.usage_source == "backend"
    assert record.prompt_tokens > 100  # the system blocks and tools count


async def test_a_client_that_leaves_mid_stream_is_billed_what_it_got(tmp_path: Path) -> None:
    """Cut after a few deltas: the prompt as the backend counted it, the deltas relayed."""
    async with (
        mock_backend(models=("claude-local",), tokens=200, itl=0.01) as mock,
        _gateway(_config(mock.url), tmp_path) as (gw, sink),
        aiohttp.ClientSession() as session,
    ):
        body = {
            "model": "claude-local",
            "max_tokens": 200,
            "stream": True,
            "messages": [{"role": "user", "content": "go on"}],
        }
        received = 0
        async with session.post(
            gw.url + "/v1/messages", json=body, headers={"x-api-key": KEY}
        ) as response:
            async for line in response.content:
                received += line.startswith(b"event: content_block_delta")
                if received == 5:
                    break
        (record,) = await _records(sink, 1)
    assert record.cancelled
    assert record.usage_source == "counted"
    assert 5 <= record.completion_tokens < 200
    assert record.prompt_tokens > 0


def _chat_only(mock_url: str) -> Config:
    """A backend that speaks the OpenAI API only: Messages requests are translated for it."""
    return make_config(
        [{"url": mock_url, "models": ["claude-local"], "apis": ["chat_completions"]}],
        auth={
            "enabled": True,
            "pipeline": [{"name": "keys", "type": "static", "keys": [{"key": KEY, "name": "cc"}]}],
        },
        usage={"database": "usage.db"},
    )


async def test_a_chat_only_backend_serves_messages_translated(tmp_path: Path) -> None:
    """Create, stream and a tool round trip, through a backend that only speaks chat
    completions: the SDK reads proper Messages answers, the backend only ever saw chat
    requests, and each request is billed from the backend's chat usage."""
    async with (
        mock_backend(models=("claude-local",), tokens=6) as mock,
        _gateway(_chat_only(mock.url), tmp_path) as (gw, sink),
        _client(gw) as client,
    ):
        reply = await client.messages.create(
            model="claude-local",
            max_tokens=6,
            system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": "hello there"}],
        )
        async with client.messages.stream(
            model="claude-local", max_tokens=6, messages=[{"role": "user", "content": "again"}]
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            streamed = await stream.get_final_message()
        first, use, second = await _tool_round_trip(client)
        document: list[Any] = [{"role": "user", "content": [{"type": "document", "source": {}}]}]
        with pytest.raises(anthropic.BadRequestError):
            # A block chat completions cannot carry: refused, never sent without it.
            await client.messages.create(model="claude-local", max_tokens=6, messages=document)
        records = await _records(sink, 5)
    assert mock.stats.by_path.get("/v1/messages", 0) == 0
    assert mock.stats.by_path["/v1/chat/completions"] == 4
    assert reply.content[0].type == "text"
    assert reply.usage.output_tokens == 6
    assert reply.stop_reason == "max_tokens"
    assert text
    assert streamed.usage.output_tokens == 6
    assert first.stop_reason == "tool_use"
    assert use.name == "lookup"
    assert use.input == {"query": "lorem"}
    assert second.content[0].type == "text"
    billed = sorted(
        (r.stream, r.completion_tokens, r.usage_source) for r in records if r.status == 200
    )
    # The tool call costs the mock 3 tokens; the refused document reached no backend.
    assert billed == [
        (False, 3, "backend"),
        (False, 6, "backend"),
        (False, 6, "backend"),
        (True, 6, "backend"),
    ]
    assert {r.api for r in records} == {"messages"}
    # Recorded in the client's API's words, as a passed-through Messages answer is.
    reasons = {r.finish_reason for r in records if r.status == 200}
    assert reasons == {"max_tokens", "tool_use"}, reasons
