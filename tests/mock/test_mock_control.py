"""Control and plumbing endpoints: stats, reset, settings, metrics, echo, health, errors, load."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai

from llmproxy.mock import MockBackend

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}


async def test_stats_and_reset(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """/mock/stats counts /v1 calls (by_path also health), and /mock/reset zeroes the totals."""
    async with http.post(mock.url + "/v1/chat/completions", json=CHAT) as response:
        assert response.status == 200
    async with http.get(mock.url + "/health") as response:
        assert response.status == 200
    async with http.get(mock.url + "/mock/stats") as response:
        stats = await response.json()
    assert stats == {
        "requests": 1,
        "cancellations": 0,
        "in_flight": 0,
        "peak_in_flight": 1,
        "completed": 1,
        "by_path": {"/v1/chat/completions": 1, "/health": 1},
        "running": 0,
        "waiting": 0,
        "peak_running": 1,
        "queued_peak": 0,
        "prefix_cache_queries": 0,
        "prefix_cache_hits": 0,
    }
    async with http.post(mock.url + "/mock/reset") as response:
        assert (await response.json())["requests"] == 0
    assert mock.stats.snapshot()["by_path"] == {}


async def test_runtime_settings(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """POST /mock/settings changes only the knobs it names; invalid or unknown knobs get 400."""
    change = {"tokens": 3, "models": ["a", "b"], "name": "gpu-2"}
    async with http.post(mock.url + "/mock/settings", json=change) as response:
        assert response.status == 200
        assert (await response.json())["embedding_dim"] == 8
    assert mock.settings.models == ("a", "b")
    async with http.post(mock.url + "/v1/completions", json={"prompt": "x"}) as response:
        assert response.headers["x-mock-backend"] == "gpu-2"
        body = await response.json()
    assert (body["model"], body["usage"]["completion_tokens"]) == ("a", 3)
    for bad in ({"ttft": -1}, {"fault": "boom"}, {"colour": "red"}, {"tokens": "many"}):
        async with http.post(mock.url + "/mock/settings", json=bad) as response:
            assert response.status == 400, bad
    async with http.post(mock.url + "/mock/settings", data=b"{") as response:
        assert response.status == 400
    async with http.get(mock.url + "/mock/settings") as response:
        assert (await response.json())["tokens"] == 3


async def test_metrics(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """/metrics exposes the vLLM gauges per model and the mock's own counters."""
    headers = {"x-mock-ttft": "5"}
    url = mock.url + "/v1/chat/completions"
    slow = asyncio.create_task(http.post(url, json=CHAT, headers=headers))
    await mock.stats.wait_until("in_flight", 1)
    async with http.get(mock.url + "/metrics") as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    slow.cancel()
    assert 'vllm:num_requests_running{model_name="mock-model"} 1\n' in text
    assert 'vllm:num_requests_waiting{model_name="mock-model"} 0\n' in text
    assert 'vllm:gpu_cache_usage_perc{model_name="mock-model"}' in text
    assert "mock_requests_total 1\n" in text
    assert "mock_cancellations_total 0\n" in text
    await mock.stats.wait_until("cancellations", 1)


async def test_echo(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """/mock/echo and /v1/echo return the method, path, query, lowercased headers and body."""
    for path in ("/mock/echo", "/v1/echo"):
        headers = {"X-Custom": "1", "Authorization": "Bearer k"}
        url = mock.url + path + "?a=1&b=2"
        async with http.post(url, data=b"payload", headers=headers) as response:
            echoed = await response.json()
        assert echoed["method"] == "POST"
        assert (echoed["path"], echoed["query"], echoed["body"]) == (path, "a=1&b=2", "payload")
        assert echoed["headers"]["x-custom"] == "1"
        assert echoed["headers"]["authorization"] == "Bearer k"


async def test_request_errors(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """Malformed JSON and wrong field types are 400, unknown paths 404, all as OpenAI errors."""
    url = mock.url + "/v1/chat/completions"
    for data in (b"{not json", b'{"model": "mock-model", "messages": [], "max_tokens": "9"}'):
        async with http.post(url, data=data) as response:
            assert response.status == 400
            assert (await response.json())["error"]["type"] == "BadRequestError"
    for path in ("/v1/nothing", "/elsewhere"):
        async with http.get(mock.url + path) as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == 404
            assert response.headers["x-mock-backend"] == "mock"


async def test_fifty_parallel_requests(mock: MockBackend, client: openai.AsyncOpenAI) -> None:
    """50 concurrent streamed chats all complete, served in parallel rather than one by one."""

    async def one() -> str:
        stream = await client.chat.completions.create(
            model="mock-model",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            max_tokens=8,
            extra_headers={"x-mock-ttft": "0.2", "x-mock-itl": "0.01"},
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    started = time.perf_counter()
    texts = await asyncio.gather(*(one() for _ in range(50)))
    assert time.perf_counter() - started < 5.0  # one by one would take over 14 s
    assert len(set(texts)) == 1
    assert (mock.stats.completed, mock.stats.cancellations, mock.stats.in_flight) == (50, 0, 0)
