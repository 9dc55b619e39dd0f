"""Zero-buffer relay: each upstream chunk reaches the client as soon as the backend writes it."""

from __future__ import annotations

import asyncio
import itertools
import re
import time

import aiohttp
from aiohttp import web

from tests.harness import gateway, make_config, mock_backend

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def _arrival_times(url: str, tokens: int, itl: float) -> list[float]:
    """Seconds from the request to each SSE event's arrival."""
    times: list[float] = []
    buffer = b""
    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()
        async with session.post(
            url + "/v1/chat/completions",
            json={**CHAT, "max_tokens": tokens},
            headers={"x-mock-itl": str(itl)},
        ) as response:
            assert response.status == 200
            assert response.content_type == "text/event-stream"
            async for chunk in response.content.iter_any():
                buffer += chunk
                while b"\n\n" in buffer:
                    _event, buffer = buffer.split(b"\n\n", 1)
                    times.append(time.perf_counter() - start)
    return times


async def test_each_token_arrives_when_the_backend_writes_it() -> None:
    """With a token every 50 ms, each event arrives ~50 ms after the last one, not in a batch."""
    async with mock_backend() as mock, gateway(make_config([{"url": mock.url}])) as gw:
        direct = await _arrival_times(mock.url, tokens=8, itl=0.05)
        proxied = await _arrival_times(gw.url, tokens=8, itl=0.05)
    assert len(proxied) == len(direct) == 9  # 8 tokens + [DONE]
    for index, (through, straight) in enumerate(zip(proxied, direct, strict=True)):
        # Each event reaches the client within a few ms of when it arrives directly.
        assert abs(through - straight) < 0.02, (index, through, straight)
    gaps = [b - a for a, b in itertools.pairwise(proxied[:-1])]
    assert all(0.035 < gap < 0.09 for gap in gaps), gaps


async def test_stream_bytes_are_relayed_unchanged() -> None:
    """The client receives exactly the bytes the backend sent (no re-encoding)."""
    body = {**CHAT, "max_tokens": 4, "seed": 1}
    async with (
        mock_backend() as mock,
        gateway(make_config([{"url": mock.url}])) as gw,
        aiohttp.ClientSession() as session,
    ):
        async with session.post(mock.url + "/v1/chat/completions", json=body) as response:
            direct = await response.read()
        async with session.post(gw.url + "/v1/chat/completions", json=body) as response:
            proxied = await response.read()
    assert _normalized(proxied) == _normalized(direct)
    assert proxied.endswith(b"data: [DONE]\n\n")


def _normalized(stream: bytes) -> bytes:
    """The stream with the per-response id and timestamp blanked out."""
    return re.sub(rb'"created":\d+', b'"created":0', re.sub(rb'"id":"[^"]*"', b'"id":""', stream))


async def test_a_non_sse_answer_is_relayed_as_it_arrives() -> None:
    """An answer that is not SSE but arrives in parts (Ollama-style NDJSON, a large JSON body
    written in pieces) is relayed part by part: the client reads the first line while the
    backend still holds back the second. Nothing is held whole."""
    second_may_go = asyncio.Event()

    async def ndjson(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(b'{"line": 1}\n')
        await asyncio.wait_for(second_may_go.wait(), 5)
        await response.write(b'{"line": 2}\n')
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", ndjson)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        config = make_config([{"url": f"http://127.0.0.1:{port}"}])
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            async with session.post(gw.url + "/v1/chat/completions", json=CHAT) as response:
                assert response.status == 200
                first = await asyncio.wait_for(response.content.readline(), 2)
                assert first == b'{"line": 1}\n'
                second_may_go.set()
                assert await response.content.read() == b'{"line": 2}\n'
    finally:
        await runner.cleanup()
