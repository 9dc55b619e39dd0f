"""The simulated GPU over HTTP: slots and their FIFO queue, prefill, prefix cache, vLLM metrics."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmproxy.mock import MockBackend, MockSettings
from llmproxy.mock.gpu import cached_tokens
from llmproxy.routing.signals import parse_signals

SYSTEM = "You are a careful assistant for tenant one. " * 60  # 2,640 characters


def chat(user: str) -> dict[str, Any]:
    return {
        "model": "mock-model",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        "stream": True,
    }


async def stream_times(
    http: aiohttp.ClientSession, mock: MockBackend, body: dict[str, Any], **headers: str
) -> tuple[float, float]:
    """(sent, first event) perf_counter times of a streamed chat, read to its end."""
    sent = time.perf_counter()
    async with http.post(mock.url + "/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200
        first = 0.0
        async for line in resp.content:
            if line.startswith(b"data: ") and not first:
                first = time.perf_counter()
        return sent, first


async def first_token_after(
    http: aiohttp.ClientSession, mock: MockBackend, body: dict[str, Any], **headers: str
) -> float:
    """Seconds from sending a streamed chat to its first event."""
    sent, first = await stream_times(http, mock, body, **headers)
    return first - sent


@pytest.fixture
async def gpu_mock(request: pytest.FixtureRequest) -> AsyncIterator[MockBackend]:
    async with MockBackend(MockSettings(**request.param)) as backend:
        yield backend


@pytest.mark.parametrize("gpu_mock", [{"slots": 4, "itl": 0.01, "tokens": 5}], indirect=True)
async def test_slots_never_exceeded(gpu_mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """50 concurrent streams on 4 slots: exactly 4 run at once, the rest queue, all complete."""
    mock = gpu_mock
    await asyncio.gather(*(first_token_after(http, mock, chat(f"q{i}")) for i in range(50)))
    snapshot = mock.stats.snapshot()
    assert snapshot["peak_running"] == 4
    assert snapshot["queued_peak"] > 0
    assert (snapshot["completed"], snapshot["running"], snapshot["waiting"]) == (50, 0, 0)
    assert mock.stats.waiting == {"mock-model": 0}


@pytest.mark.parametrize("gpu_mock", [{"slots": 1, "itl": 0.05, "tokens": 3}], indirect=True)
async def test_fifo_and_ttft_grows_with_the_queue(
    gpu_mock: MockBackend, http: aiohttp.ClientSession
) -> None:
    """One slot, 0.1 s per answer: requests start in arrival order, one answer apart, so the
    time to first token grows by an answer's length with each place in the queue."""
    mock = gpu_mock
    tasks = []
    for i in range(4):
        tasks.append(asyncio.create_task(stream_times(http, mock, chat(f"q{i}"))))
        await mock.stats.wait_until("requests", i + 1)  # request i arrives before request i + 1
    times = await asyncio.gather(*tasks)
    firsts = [first for _, first in times]
    for earlier, later in itertools.pairwise(firsts):
        assert 0.09 < later - earlier < 0.2  # FIFO: each starts when the one before it ends
    ttfts = [first - sent for sent, first in times]
    assert ttfts == sorted(ttfts)
    assert ttfts[-1] > 0.25  # three answers in the queue before it
    assert mock.stats.queued_peak == 3


@pytest.mark.parametrize("gpu_mock", [{"slots": 1}], indirect=True)
async def test_queued_request_cancelled_leaves_the_queue(
    gpu_mock: MockBackend, http: aiohttp.ClientSession
) -> None:
    """A client leaving while queued is one cancellation and frees its place in the queue."""
    mock = gpu_mock
    url = mock.url + "/v1/chat/completions"
    holder = asyncio.create_task(first_token_after(http, mock, chat("a"), **{"x-mock-ttft": "0.3"}))
    await mock.stats.wait_until("peak_running", 1)
    queued = await http.post(url, json=chat("b"))  # the headers come before the queue
    await mock.stats.wait_until("queued_peak", 1)
    assert mock.stats.waiting == {"mock-model": 1}
    queued.close()
    await mock.stats.wait_until("cancellations", 1)
    assert mock.stats.waiting == {"mock-model": 0}
    await holder
    assert (mock.stats.completed, mock.gpu.pool.running, mock.gpu.pool.waiting) == (1, 0, 0)


@pytest.mark.parametrize(
    "gpu_mock", [{"prefill_per_token": 0.0005, "prefix_cache_blocks": 1000}], indirect=True
)
async def test_repeated_prompt_skips_prefill(
    gpu_mock: MockBackend, http: aiohttp.ClientSession
) -> None:
    """The second identical prompt finds its blocks cached: no ~0.33 s prefill before its token."""
    mock = gpu_mock
    cold = await first_token_after(http, mock, chat("What is the weather?"))
    warm = await first_token_after(http, mock, chat("What is the weather?"))
    assert cold > 0.3
    assert warm < cold / 5
    snapshot = mock.stats.snapshot()
    tokens = snapshot["prefix_cache_queries"] // 2
    assert snapshot["prefix_cache_hits"] >= tokens - cached_tokens(1, 64)  # all but the tail


@pytest.mark.parametrize("gpu_mock", [{"prefix_cache_blocks": 1000}], indirect=True)
async def test_shared_prefix_hits_only_shared_blocks(
    gpu_mock: MockBackend, http: aiohttp.ClientSession
) -> None:
    """Another question after the same system prompt hits the system prompt's full blocks only."""
    mock = gpu_mock
    await first_token_after(http, mock, chat("Q" * 400))
    await http.post(mock.url + "/mock/reset")
    await first_token_after(http, mock, chat("R" * 400))
    shared = len("system\x1f" + SYSTEM + "\x1euser\x1f")  # the prompt text both start with
    assert mock.stats.snapshot()["prefix_cache_hits"] == cached_tokens(shared // 64, 64)
    assert mock.stats.snapshot()["prefix_cache_queries"] == (len(SYSTEM) + 400 + 3) // 4


@pytest.mark.parametrize("gpu_mock", [{"prefix_cache_blocks": 1000}], indirect=True)
async def test_cache_flush_starts_cold(gpu_mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """POST /mock/cache/flush empties the prefix cache; /mock/reset zeroes its counters only."""
    mock = gpu_mock
    await first_token_after(http, mock, chat("x"))
    await http.post(mock.url + "/mock/reset")
    await first_token_after(http, mock, chat("x"))
    assert mock.stats.snapshot()["prefix_cache_hits"] > 0
    async with http.post(mock.url + "/mock/cache/flush") as response:
        assert await response.json() == {"prefix_cache_blocks_used": 0}
    await http.post(mock.url + "/mock/reset")
    await first_token_after(http, mock, chat("x"))
    assert mock.stats.snapshot()["prefix_cache_hits"] == 0


@pytest.mark.parametrize("gpu_mock", [{"slots": 2, "prefix_cache_blocks": 100}], indirect=True)
async def test_metrics_while_queued(gpu_mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """With 2 slots busy and 3 requests queued, /metrics says so in vLLM's names."""
    mock = gpu_mock
    headers = {"x-mock-ttft": "5"}
    url = mock.url + "/v1/chat/completions"
    pending = []
    for i in range(5):
        pending.append(await http.post(url, json=chat(f"q{i}"), headers=headers))
    await mock.stats.wait_until("queued_peak", 3)
    async with http.get(mock.url + "/metrics") as response:
        text = await response.text()
    signals = parse_signals(text)
    assert (signals.running, signals.waiting, signals.kv_cache_usage) == (2, 3, 1.0)
    counters = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert counters["vllm:kv_cache_usage_perc"] == 1.0
    assert counters["vllm:prefix_cache_queries_total"] > 0  # the two that started
    assert counters["vllm:prefix_cache_hits_total"] > 0  # the second found the system prompt
    for response in pending:
        response.close()
    await mock.stats.wait_until("cancellations", 5)
    signals = parse_signals(await (await http.get(mock.url + "/metrics")).text())
    assert (signals.running, signals.waiting, signals.kv_cache_usage) == (0, 0, 0.0)


@pytest.mark.parametrize("gpu_mock", [{"slots": 1, "itl": 0.01}], indirect=True)
async def test_runtime_gpu_knobs(gpu_mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """POST /mock/settings changes slots (letting the queue in), itl and the cache at run time."""
    mock = gpu_mock
    headers = {"x-mock-ttft": "5"}
    url = mock.url + "/v1/chat/completions"
    first = await http.post(url, json=chat("a"), headers=headers)
    second = await http.post(url, json=chat("b"), headers=headers)
    await mock.stats.wait_until("queued_peak", 1)
    assert (mock.stats.running, mock.stats.waiting) == ({"mock-model": 1}, {"mock-model": 1})
    change = {"slots": 2, "itl": 0.03, "prefix_cache_blocks": 10, "prefill_per_token": 0.001}
    async with http.post(mock.url + "/mock/settings", json=change) as response:
        assert response.status == 200
    await asyncio.sleep(0.05)
    assert (mock.stats.running, mock.stats.waiting) == ({"mock-model": 2}, {"mock-model": 0})
    assert (mock.settings.itl, mock.gpu.cache.capacity) == (0.03, 10)
    for response in (first, second):
        response.close()
    for bad in ({"slots": -1}, {"block_chars": 2}, {"prefill_per_token": -1.0}):
        async with http.post(mock.url + "/mock/settings", json=bad) as response:
            assert response.status == 400, bad
    await mock.stats.wait_until("cancellations", 2)
