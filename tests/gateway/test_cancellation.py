"""A client that leaves closes the upstream request at once, so the GPU stops generating."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

import aiohttp

from tests.harness import gateway, make_config, mock_backend

BODY = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}


async def _leave_after(
    url: str, body: Mapping[str, object], headers: dict[str, str], seconds: float
) -> None:
    """Send a request on a raw socket, wait ``seconds``, then drop the connection."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n{head}\r\n"
        ).encode()
        + payload
    )
    await writer.drain()
    await asyncio.sleep(seconds)
    writer.close()
    await writer.wait_closed()
    del reader


async def test_disconnect_before_first_token_cancels_upstream() -> None:
    """A client gone during the time to first token cancels the backend request."""
    async with mock_backend() as mock, gateway(make_config([{"url": mock.url}])) as gw:
        body = {**BODY, "stream": True}
        await _leave_after(gw.url, body, {"x-mock-ttft": "5"}, 0.3)
        await mock.stats.wait_until("cancellations", 1, within=2.0)
        await asyncio.sleep(0.1)
        assert mock.stats.cancellations == 1
        assert mock.stats.in_flight == 0
        assert gw.runtime.backends[0].in_flight == 0


async def test_disconnect_mid_stream_cancels_upstream() -> None:
    """A client gone mid-stream cancels the backend request before it finishes."""
    async with mock_backend() as mock, gateway(make_config([{"url": mock.url}])) as gw:
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                gw.url + "/v1/chat/completions",
                json={**BODY, "stream": True, "max_tokens": 200},
                headers={"x-mock-itl": "0.02"},
            )
            await response.content.readuntil(b"\n\n")
            await response.content.readuntil(b"\n\n")
            response.close()
        await mock.stats.wait_until("cancellations", 1, within=2.0)
        assert mock.stats.completed == 0
        assert mock.stats.cancellations == 1


async def test_disconnect_during_non_streamed_call_cancels_upstream() -> None:
    """A client gone while a non-streamed answer is generated cancels the backend request."""
    async with mock_backend() as mock, gateway(make_config([{"url": mock.url}])) as gw:
        await _leave_after(gw.url, BODY, {"x-mock-ttft": "5"}, 0.3)
        await mock.stats.wait_until("cancellations", 1, within=2.0)
        assert mock.stats.cancellations == 1


async def test_many_aborted_streams_leave_nothing_in_flight() -> None:
    """After 100 streams aborted by their clients, no backend slot stays taken."""
    async with mock_backend() as mock, gateway(make_config([{"url": mock.url}])) as gw:
        body = {**BODY, "stream": True}
        await asyncio.gather(
            *(_leave_after(gw.url, body, {"x-mock-ttft": "5"}, 0.2) for _ in range(100))
        )
        await mock.stats.wait_until("cancellations", 100, within=5.0)
        assert gw.runtime.backends[0].in_flight == 0
        assert gw.state.current.in_flight == 0
        assert mock.stats.in_flight == 0
