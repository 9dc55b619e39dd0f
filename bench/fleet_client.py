"""The I/O of the fleet benchmark: the open-loop client and the mock replicas' control endpoints.

The client sends each request at its scheduled time whether or not earlier ones have answered (an
open loop: a slow fleet does not slow the arrivals down, it builds queues, as real traffic does),
and measures the time to the first streamed event *from the scheduled time*, so a late send counts
against the fleet, not in its favour. It runs on the bench's own event loop; ``send_lag`` reports
how late it was, to show it was not the bottleneck.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.fleet_workload import Turn

REQUEST_TIMEOUT = 120.0


@dataclass(slots=True)
class Result:
    """How one request went; times in seconds from the run's start."""

    scheduled: float
    tenant: int
    send_lag: float = 0.0
    """How late the request left compared to its schedule."""
    ttft: float | None = None
    """From the scheduled time to the first ``data:`` event."""
    total: float | None = None
    replica: str | None = None
    """The ``x-mock-backend`` header the gateway passed on: which replica served it."""
    error: str | None = None


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    result: Result,
    start: float,
    api_key: str | None = None,
) -> None:
    scheduled = start + result.scheduled
    result.send_lag = max(0.0, time.perf_counter() - scheduled)
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        async with session.post(url, data=body, headers=headers) as response:
            result.replica = response.headers.get("x-mock-backend")
            if response.status != 200:
                result.error = f"HTTP {response.status}"
                await response.read()
                return
            done = False
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                if result.ttft is None:
                    result.ttft = time.perf_counter() - scheduled
                done = line.startswith(b"data: [DONE]")
            if not done:
                result.error = "stream ended without [DONE]"
                return
            result.total = time.perf_counter() - scheduled
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.error = type(exc).__name__


async def drive(
    session: aiohttp.ClientSession,
    url: str,
    requests: Sequence[tuple[float, Turn]],
    *,
    start: float,
    model: str = "mock-model",
    at: dict[float, asyncio.Event] | None = None,
    api_key: str | None = None,
) -> list[Result]:
    """Send ``requests`` (send time, turn) to ``url`` + ``/v1/chat/completions``, open loop, and
    wait for all of them. Send times count from ``start`` (a ``time.perf_counter()`` value a
    little ahead, so the bodies are encoded before the clock runs). ``at`` maps run times to
    events set when the run reaches them: the caller's cue to act at a given moment. ``api_key``
    goes in an ``Authorization: Bearer`` header when given."""
    endpoint = url + "/v1/chat/completions"
    bodies = [turn.body(model) for _, turn in requests]
    cues = sorted((at or {}).items())
    results: list[Result] = []
    tasks: list[asyncio.Task[None]] = []
    for (when, turn), body in zip(requests, bodies, strict=True):
        while cues and cues[0][0] <= when:
            await _sleep_until(start + cues[0][0])
            cues.pop(0)[1].set()
        await _sleep_until(start + when)
        result = Result(when, turn.tenant)
        results.append(result)
        tasks.append(asyncio.create_task(_one(session, endpoint, body, result, start, api_key)))
    for when, event in cues:
        await _sleep_until(start + when)
        event.set()
    await asyncio.gather(*tasks)
    return results


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


def client_session() -> aiohttp.ClientSession:
    """Unlimited connections (an open loop must never wait for one) and a generous timeout."""
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


async def mock_stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + "/mock/stats") as response:
        response.raise_for_status()
        stats: dict[str, Any] = await response.json()
        return stats


async def prefix_counters(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(queried, hit) prompt tokens from the replica's ``/metrics``, by vLLM's counter names,
    as a benchmark of a real vLLM fleet would read them."""
    async with session.get(url + "/metrics") as response:
        response.raise_for_status()
        text = await response.text()
    queries = hits = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:prefix_cache_queries_total":
                queries += sample.value
            elif sample.name == "vllm:prefix_cache_hits_total":
                hits += sample.value
    return queries, hits


async def reset(session: aiohttp.ClientSession, url: str, *, flush_cache: bool) -> None:
    """Zero the replica's counters (and peaks); with ``flush_cache`` also empty its prefix cache."""
    if flush_cache:
        async with session.post(url + "/mock/cache/flush") as response:
            response.raise_for_status()
    async with session.post(url + "/mock/reset") as response:
        response.raise_for_status()


async def change_settings(session: aiohttp.ClientSession, url: str, **knobs: Any) -> None:
    async with session.post(url + "/mock/settings", json=knobs) as response:
        response.raise_for_status()


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of a replica's ``/mock/stats`` during a run (``at``: seconds from start)."""

    at: float
    requests: int
    running: int
    waiting: int


async def sample_replicas(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    interval: float,
    stop: asyncio.Event,
    *,
    start: float,
) -> dict[str, list[Sample]]:
    """Read every replica's counters every ``interval`` seconds from ``start`` (perf_counter)
    until ``stop`` is set; sample times count from ``start``."""
    samples: dict[str, list[Sample]] = {url: [] for url in urls}
    await _sleep_until(start)
    while True:
        at = time.perf_counter() - start
        readings = await asyncio.gather(
            *(mock_stats(session, url) for url in urls), return_exceptions=True
        )
        for url, stats in zip(urls, readings, strict=True):
            if isinstance(stats, dict):
                samples[url].append(
                    Sample(at, stats["requests"], stats["running"], stats["waiting"])
                )
        try:
            await asyncio.wait_for(stop.wait(), interval)
            return samples
        except TimeoutError:
            pass
