"""A client leaving before its response is complete is one cancellation, wherever it left."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from llmproxy.mock import MockBackend

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}


async def assert_one_cancellation(mock: MockBackend) -> None:
    await mock.stats.wait_until("cancellations", 1)
    await asyncio.sleep(0.05)  # a second count would show up here
    assert mock.stats.cancellations == 1
    assert (mock.stats.in_flight, mock.stats.completed) == (0, 0)
    assert mock.stats.running == {"mock-model": 0}


async def test_before_first_token(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """Closing a stream after the headers but during ttft counts one cancellation."""
    headers = {"x-mock-ttft": "5"}
    url = mock.url + "/v1/chat/completions"
    response = await http.post(url, json={**CHAT, "stream": True}, headers=headers)
    assert response.status == 200
    response.close()
    await assert_one_cancellation(mock)


async def test_mid_stream(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """Closing a stream after three events counts one cancellation."""
    headers = {"x-mock-itl": "0.02", "x-mock-tokens": "500"}
    url = mock.url + "/v1/chat/completions"
    response = await http.post(url, json={**CHAT, "stream": True}, headers=headers)
    for _ in range(3):
        assert (await response.content.readline()).startswith(b"data: ")
        assert await response.content.readline() == b"\n"
    response.close()
    await assert_one_cancellation(mock)


async def test_non_streamed_wait(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """A client timing out during a non-streamed ttft wait counts one cancellation."""
    url = mock.url + "/v1/chat/completions"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await http.post(url, json=CHAT, headers={"x-mock-ttft": "5"})
    await assert_one_cancellation(mock)


async def test_finished_requests_are_not_cancellations(
    mock: MockBackend, http: aiohttp.ClientSession
) -> None:
    """Requests that run to the end, streamed or not, count as completed, never as cancelled."""
    url = mock.url + "/v1/chat/completions"
    for stream in (False, True):
        async with http.post(url, json={**CHAT, "stream": stream}) as response:
            await response.read()
    await asyncio.sleep(0.05)
    assert (mock.stats.requests, mock.stats.completed, mock.stats.cancellations) == (2, 2, 0)
