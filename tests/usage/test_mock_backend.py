"""Against the project's fake vLLM over real HTTP: the usage found equals the one it sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from llmproxy.gateway.request_body import peek_body, with_usage_requested
from llmproxy.mock import MockBackend, MockSettings, estimate_tokens
from llmproxy.usage import StreamUsage, Usage, estimate_prompt_tokens, usage_from_body

PROMPT = "Tell me about the weather in Zürich, please."
CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": PROMPT}]}
COMPLETION = {"model": "mock-model", "prompt": PROMPT}


def request_with_usage(body: bytes) -> bytes:
    """``body`` asking for the usage event, as the gateway sends it."""
    return with_usage_requested(body, peek_body(body, model_required=True))


@pytest.fixture
async def mock() -> AsyncIterator[MockBackend]:
    async with MockBackend(MockSettings(tokens=16)) as backend:
        yield backend


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def relay(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    meter: StreamUsage,
    headers: dict[str, str] | None = None,
) -> tuple[bytes, bytes]:
    """Stream ``body`` to ``url`` feeding the meter each chunk as it arrives: (raw, relayed)."""
    raw, relayed = [], []
    headers = {"Content-Type": "application/json", **(headers or {})}
    async with http.post(url, data=body, headers=headers) as response:
        assert response.status == 200
        try:
            async for chunk in response.content.iter_any():
                raw.append(chunk)
                relayed.append(meter.feed(chunk))
        except aiohttp.ClientPayloadError:
            pass  # the reset_mid fault: the backend died mid-stream
    relayed.append(meter.finish())
    return b"".join(raw), b"".join(relayed)


def mock_usage_event(raw: bytes) -> tuple[bytes, dict[str, Any]]:
    """The mock's usage-only event in a raw stream, and its usage object."""
    events = [e + b"\n\n" for e in raw.split(b"\n\n") if e]
    found = [e for e in events if b'"choices":[]' in e]
    assert len(found) == 1
    return found[0], msgspec.json.decode(found[0][len(b"data: ") :])["usage"]


@pytest.mark.parametrize("itl", [0.0, 0.001])
async def test_client_asked_for_usage(
    mock: MockBackend, http: aiohttp.ClientSession, itl: float
) -> None:
    """The client's own include_usage: the stream is relayed as is, usage is the mock's."""
    original = msgspec.json.encode(
        {**CHAT, "stream": True, "max_tokens": 40, "stream_options": {"include_usage": True}}
    )
    assert peek_body(original, model_required=True).include_usage
    body = original
    meter = StreamUsage(strip_usage_event=False)
    url = mock.url + "/v1/chat/completions"
    raw, relayed = await relay(http, url, body, meter, {"x-mock-itl": str(itl)})
    assert relayed == raw
    _, sent = mock_usage_event(raw)
    assert sent["completion_tokens"] == 40
    assert meter.usage(prompt_estimate=1) == Usage(
        sent["prompt_tokens"], 40, sent["total_tokens"], "backend", "length"
    )
    assert (meter.events, meter.done) == (41, True)


async def test_gateway_asked_for_usage(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """Usage the gateway asked for is read and cut from what the client gets."""
    body = request_with_usage(msgspec.json.encode({**CHAT, "stream": True}))
    meter = StreamUsage(strip_usage_event=True)
    raw, relayed = await relay(http, mock.url + "/v1/chat/completions", body, meter)
    event, sent = mock_usage_event(raw)
    assert relayed == raw.replace(event, b"")
    assert b'"usage"' not in relayed
    assert relayed.endswith(b"data: [DONE]\n\n")
    assert meter.usage(prompt_estimate=1) == Usage(
        sent["prompt_tokens"], 16, sent["total_tokens"], "backend", "stop"
    )


async def test_completions_stream(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """A text-completions stream is read the same way."""
    body = request_with_usage(msgspec.json.encode({**COMPLETION, "stream": True}))
    meter = StreamUsage(strip_usage_event=True)
    raw, relayed = await relay(http, mock.url + "/v1/completions", body, meter)
    event, sent = mock_usage_event(raw)
    assert relayed == raw.replace(event, b"")
    assert meter.usage(prompt_estimate=1) == Usage(
        sent["prompt_tokens"], 16, sent["total_tokens"], "backend", "stop"
    )


async def test_no_usage_counts_events(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """Without a usage event: one completion token per event, the prompt estimated."""
    body = msgspec.json.encode({**CHAT, "stream": True, "max_tokens": 25})
    meter = StreamUsage(strip_usage_event=False)
    raw, relayed = await relay(http, mock.url + "/v1/chat/completions", body, meter)
    assert relayed == raw
    prompt = estimate_prompt_tokens(body, 4.0)
    assert prompt == estimate_tokens(len(PROMPT))  # the mock's own count, same rule
    assert meter.usage(prompt) == Usage(prompt, 25, prompt + 25, "estimated", "length")


async def test_stream_cut_off(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """A backend dying after 5 tokens bills the 5 events it sent and the estimate."""
    body = request_with_usage(msgspec.json.encode({**CHAT, "stream": True}))
    meter = StreamUsage(strip_usage_event=True)
    headers = {"x-mock-fault": "reset_mid", "x-mock-fault-after": "5"}
    raw, relayed = await relay(http, mock.url + "/v1/chat/completions", body, meter, headers)
    assert relayed == raw
    assert meter.usage(prompt_estimate=11) == Usage(11, 5, 16, "estimated", None)
    assert (meter.events, meter.done) == (5, False)


async def test_non_streamed(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """Chat, completions and embeddings bodies give the usage the mock put in them."""
    cases = [
        ("/v1/chat/completions", {**CHAT, "max_tokens": 9}, "length"),
        ("/v1/completions", COMPLETION, "stop"),
        ("/v1/embeddings", {"model": "mock-model", "input": [PROMPT, "x"]}, None),
    ]
    for path, request, finish_reason in cases:
        async with http.post(mock.url + path, json=request) as response:
            body = await response.read()
        sent = msgspec.json.decode(body)["usage"]
        completion = sent.get("completion_tokens", 0)
        assert usage_from_body(body) == Usage(
            sent["prompt_tokens"], completion, sent["total_tokens"], "backend", finish_reason
        )
