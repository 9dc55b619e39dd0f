"""Injected faults: each misbehaves exactly as documented, per request or for the whole backend."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from llmproxy.mock import MockBackend, MockSettings

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("fault", "status", "error_type"),
    [("500", 500, "InternalServerError"), ("429", 429, "RateLimitError")],
)
async def test_error_status_faults(
    mock: MockBackend, http: aiohttp.ClientSession, fault: str, status: int, error_type: str
) -> None:
    """x-mock-fault 500/429 answer that status with an OpenAI error body (429 with Retry-After)."""
    url = mock.url + "/v1/chat/completions"
    async with http.post(url, json=CHAT, headers={"x-mock-fault": fault}) as response:
        assert response.status == status
        body = await response.json()
    assert body["error"]["type"] == error_type
    assert body["error"]["code"] == status
    assert (response.headers.get("Retry-After") == "1") == (fault == "429")


async def test_reset_before(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """reset_before closes the connection without any response and is not a cancellation."""
    url = mock.url + "/v1/chat/completions"
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await http.post(url, json=CHAT, headers={"x-mock-fault": "reset_before"})
    await asyncio.sleep(0.05)
    assert (mock.stats.requests, mock.stats.cancellations, mock.stats.completed) == (1, 0, 0)
    assert mock.stats.in_flight == 0


async def test_reset_mid(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """reset_mid streams exactly fault_after token events, then breaks the stream (no [DONE])."""
    headers = {"x-mock-fault": "reset_mid", "x-mock-fault-after": "3"}
    events: list[bytes] = []

    async def read_all() -> None:
        url = mock.url + "/v1/chat/completions"
        async with http.post(url, json={**CHAT, "stream": True}, headers=headers) as response:
            async for line in response.content:  # appends one by one: the read ends in an error
                if line.startswith(b"data: "):
                    events.append(line)

    with pytest.raises(aiohttp.ClientPayloadError):
        await read_all()
    assert len(events) == 3
    assert mock.stats.cancellations == 0


async def test_reset_mid_non_streamed(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """A non-streamed reset_mid drops the connection after the generation wait, body unsent."""
    headers = {"x-mock-fault": "reset_mid"}
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await http.post(mock.url + "/v1/completions", json={"prompt": "x"}, headers=headers)


async def test_stall(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """stall never answers; the client giving up is then counted as one cancellation."""
    url = mock.url + "/v1/chat/completions"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await http.post(url, json=CHAT, headers={"x-mock-fault": "stall"})
    await mock.stats.wait_until("cancellations", 1)
    assert mock.stats.cancellations == 1
    assert mock.stats.in_flight == 0


async def test_configured_fault_and_per_request_off(http: aiohttp.ClientSession) -> None:
    """A fault in the settings hits every request, health included, unless x-mock-fault: none."""
    async with MockBackend(MockSettings(fault="500")) as mock:
        async with http.get(mock.url + "/health") as response:
            assert response.status == 500
        async with http.get(mock.url + "/v1/models") as response:
            assert response.status == 500
        headers = {"x-mock-fault": "none"}
        async with http.get(mock.url + "/v1/models", headers=headers) as response:
            assert response.status == 200
        async with http.get(mock.url + "/metrics") as response:
            assert response.status == 200


async def test_bad_override_header(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """An x-mock-* header that does not parse is a 400 naming the header, not a crash."""
    url = mock.url + "/v1/chat/completions"
    for name, value in (("x-mock-ttft", "soon"), ("x-mock-fault", "explode")):
        async with http.post(url, json=CHAT, headers={name: value}) as response:
            assert response.status == 400
            error = (await response.json())["error"]
        assert error["type"] == "BadRequestError"
        assert name.removeprefix("x-mock-").replace("-", "_") in error["message"]
