"""Several gateway processes (stores with their own clients) sharing one key through Redis."""

from __future__ import annotations

import asyncio
import random
import time

from llmproxy.limits import KeyPolicy, Rate


async def test_request_rate_is_accurate_across_processes(redis_stores):
    """Four processes hammering one key at 50 req/s for 3 s admit burst + 50 × 3 (±5 %)."""
    policy = KeyPolicy(requests=Rate(per_second=50.0, burst=10))
    admitted = 0
    started = time.monotonic()
    stop = started + 3.0

    async def hammer(store) -> None:
        nonlocal admitted
        while time.monotonic() < stop:
            admission = await store.admit("k", policy, 0)  # not `admitted += await ...`:
            admitted += admission.allowed  # that reads `admitted` before the await
            await asyncio.sleep(0.001)

    await asyncio.gather(*(hammer(store) for store in redis_stores for _ in range(4)))
    expected = 10 + 50.0 * (time.monotonic() - started)
    assert abs(admitted - expected) <= 0.05 * expected, (admitted, expected)


async def test_concurrency_limit_holds_under_500_simultaneous_admits(redis_stores):
    """max_concurrent 20 is never exceeded by 500 simultaneous admits from four processes."""
    policy = KeyPolicy(max_concurrent=20)
    holding = peak = admitted = 0
    peak_seen_by_redis = 0

    async def request(store) -> None:
        nonlocal holding, peak, admitted
        for _ in range(3):
            admission = await store.admit("k", policy, 0)
            if admission.allowed:
                assert admission.lease is not None
                holding += 1
                admitted += 1
                peak = max(peak, holding)
                await asyncio.sleep(random.uniform(0.005, 0.03))
                holding -= 1
                await store.settle("k", policy, admission.lease, 0, 0)
                return
            await asyncio.sleep(random.uniform(0.01, 0.05))

    async def watch() -> None:
        nonlocal peak_seen_by_redis
        while True:
            peak_seen_by_redis = max(peak_seen_by_redis, await redis_stores[0].in_flight("k"))
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(request(redis_stores[n % 4]) for n in range(500)))
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    assert admitted >= 20
    assert peak == 20
    assert peak_seen_by_redis <= 20
    assert await redis_stores[0].in_flight("k") == 0


async def test_quota_is_exact_across_processes(redis_stores):
    """64 admits from four processes against a quota for 10 reservations admit exactly 10, and
    the counted usage is the sum of what they used."""
    policy = KeyPolicy(total_quota=1000, tokens_per_minute=10**6)
    stores = [redis_stores[n % 4] for n in range(64)]
    answers = await asyncio.gather(*(store.admit("k", policy, 100) for store in stores))
    admitted = [(store, a) for store, a in zip(stores, answers, strict=True) if a.allowed]
    assert len(admitted) == 10
    usage = [random.randint(0, 100) for _ in admitted]
    await asyncio.gather(
        *(
            store.settle("k", policy, a.lease, 100, used)
            for (store, a), used in zip(admitted, usage, strict=True)
        )
    )
    assert await redis_stores[3].quota_used("k") == sum(usage)
    assert await redis_stores[2].in_flight("k") == 0
