"""Raw SSE from the mock: event framing, order, the usage event, [DONE], and the token clock."""

from __future__ import annotations

import itertools
import time
from typing import Any

import aiohttp
import msgspec

from llmproxy.mock import MockBackend, completion_text

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def read_events(response: aiohttp.ClientResponse) -> list[tuple[float, bytes]]:
    """Each SSE data payload with the time it arrived."""
    events = []
    async for line in response.content:
        if line.startswith(b"data: "):
            events.append((time.perf_counter(), line[6:].rstrip(b"\n")))
        else:
            assert line == b"\n", line
    return events


def payloads(events: list[tuple[float, bytes]]) -> list[Any]:
    return [msgspec.json.decode(data) for _, data in events[:-1]]


async def test_chat_stream_events(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """n tokens give n events, role on the first, finish_reason on the last, then [DONE]."""
    body = {**CHAT, "max_tokens": 6}
    async with http.post(mock.url + "/v1/chat/completions", json=body) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["x-mock-backend"] == "mock"
        events = await read_events(response)
    assert len(events) == 7
    assert events[-1][1] == b"[DONE]"
    chunks = payloads(events)
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert [c["choices"][0]["delta"].get("role") for c in chunks] == ["assistant"] + [None] * 5
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["length"]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == completion_text(6)
    assert "usage" not in chunks[-1]


async def test_include_usage_event(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """include_usage adds one final event with empty choices and usage, just before [DONE]."""
    body = {**CHAT, "max_tokens": 3, "stream_options": {"include_usage": True}}
    async with http.post(mock.url + "/v1/chat/completions", json=body) as response:
        events = await read_events(response)
    assert len(events) == 5
    final = payloads(events)[-1]
    assert final["choices"] == []
    assert final["usage"] == {"prompt_tokens": 1, "total_tokens": 4, "completion_tokens": 3}


async def test_completions_stream(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """Text-completion events carry choices[0].text and the object text_completion."""
    body = {"model": "mock-model", "prompt": "x", "stream": True}
    headers = {"x-mock-tokens": "4"}
    async with http.post(mock.url + "/v1/completions", json=body, headers=headers) as response:
        events = await read_events(response)
    chunks = payloads(events)
    assert [c["choices"][0]["text"] for c in chunks] == ["lorem ", "ipsum ", "dolor ", "sit "]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_ttft_and_itl(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """x-mock-ttft delays the first token; x-mock-itl spaces the following ones."""
    headers = {"x-mock-ttft": "0.15", "x-mock-itl": "0.05", "x-mock-tokens": "5"}
    started = time.perf_counter()
    url = mock.url + "/v1/chat/completions"
    async with http.post(url, json=CHAT, headers=headers) as response:
        events = await read_events(response)
    stamps = [t for t, _ in events[:5]]
    assert stamps[0] - started >= 0.14
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(gap >= 0.04 for gap in gaps), gaps


async def test_non_streamed_wait(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """A non-streamed answer arrives after ttft + (n - 1) * itl, the time the last token took."""
    headers = {"x-mock-ttft": "0.1", "x-mock-itl": "0.05", "x-mock-tokens": "3"}
    body = {**CHAT, "stream": False}
    started = time.perf_counter()
    url = mock.url + "/v1/chat/completions"
    async with http.post(url, json=body, headers=headers) as response:
        await response.read()
    assert time.perf_counter() - started >= 0.19
