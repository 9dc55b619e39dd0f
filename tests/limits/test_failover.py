"""Redis going away and coming back, under each redis_failure policy, on a private redis-server
that the tests pause (a hang) and kill (connections refused)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from llmproxy.limits import (
    UNLIMITED,
    FailoverLimitStore,
    FailurePolicy,
    KeyPolicy,
    LimitsUnavailable,
    Rate,
    RedisLimitStore,
)

TIMEOUT = 0.3
SLACK = 0.2  # event loop and scheduling, on a busy two-core machine
POLICY = KeyPolicy(requests=Rate(per_second=0.01, burst=10), max_concurrent=4)


@pytest.fixture
async def make_store(private_redis, clients) -> AsyncIterator[Callable[..., Any]]:
    """Builds failover stores on the private Redis; resumes and closes everything afterwards."""
    made: list[FailoverLimitStore] = []

    async def make(policy: FailurePolicy, instances: int = 1) -> FailoverLimitStore:
        client = await clients.new(private_redis.addr, wait=TIMEOUT)
        primary = RedisLimitStore(client, prefix="t:", timeout=TIMEOUT)
        store = FailoverLimitStore(
            primary, policy=policy, instances=instances, retry_after_failure=0.5
        )
        made.append(store)
        return store

    try:
        yield make
    finally:
        if private_redis.paused:
            private_redis.resume()
        for store in made:
            await store.close()


@contextlib.asynccontextmanager
async def outage(private_redis, kind: str) -> AsyncIterator[None]:
    """Redis hangs (SIGSTOP) or refuses connections (killed) inside the block."""
    if kind == "hang":
        private_redis.pause()
    else:
        private_redis.kill()
    try:
        yield
    finally:
        if kind == "hang":
            private_redis.resume()
        else:
            private_redis.start()


async def timed(call: Awaitable[Any]) -> tuple[Any, float]:
    started = time.monotonic()
    try:
        result = await call
    except LimitsUnavailable as exc:
        result = exc
    return result, time.monotonic() - started


@pytest.mark.parametrize("kind", ["hang", "refused"])
async def test_open_lets_requests_through_without_headers(make_store, private_redis, kind):
    """redis_failure open: allowed, nothing to settle, no limit headers, within the timeout."""
    store = await make_store("open")
    assert (await store.admit("k", POLICY, 0)).lease.startswith("r:")  # connected first
    async with outage(private_redis, kind):
        for call in (store.admit("k", POLICY, 0), store.check_global(Rate(0.01, 1))):
            answer, took = await timed(call)
            assert answer == UNLIMITED
            assert took < TIMEOUT + SLACK
        assert store.redis_down


@pytest.mark.parametrize("kind", ["hang", "refused"])
async def test_closed_refuses_with_limits_unavailable(make_store, private_redis, kind):
    """redis_failure closed: LimitsUnavailable (the gateway's 503, never a 429), in bounded time."""
    store = await make_store("closed")
    await store.in_flight("k")
    async with outage(private_redis, kind):
        for call in (
            store.admit("k", POLICY, 0),
            store.check_global(Rate(0.01, 1)),
            store.admit("k", POLICY, 0),
        ):
            answer, took = await timed(call)
            assert isinstance(answer, LimitsUnavailable)
            assert took < TIMEOUT + SLACK


@pytest.mark.parametrize("kind", ["hang", "refused"])
async def test_local_enforces_this_process_share(make_store, private_redis, kind):
    """redis_failure local: limits hold in this process at 1/instances of each."""
    store = await make_store("local", instances=2)
    await store.in_flight("k")
    async with outage(private_redis, kind):
        answers = [await store.admit("k", POLICY, 0) for _ in range(3)]
        assert [a.allowed for a in answers] == [True, True, False]
        assert answers[2].reason == "concurrency"  # 4 slots / 2 instances
        assert all(a.lease.startswith("m:") for a in answers[:2])
        assert answers[1].requests_limit == 5  # burst 10 / 2 instances
        global_rate = Rate(per_second=0.01, burst=6)
        assert sum([(await store.check_global(global_rate)).allowed for _ in range(5)]) == 3
        for admission in answers[:2]:
            await store.settle("k", POLICY, admission.lease, 0, 0)
        assert await store.in_flight("k") == 0


async def test_dead_redis_is_not_asked_on_every_request(make_store, private_redis):
    """After one bounded failure, calls skip Redis at once until the backoff has passed."""
    store = await make_store("local")
    await store.in_flight("k")
    async with outage(private_redis, "hang"):
        _, first = await timed(store.admit("k", POLICY, 0))
        assert TIMEOUT - 0.05 < first < TIMEOUT + SLACK
        started = time.monotonic()
        answers = await asyncio.gather(*(store.admit(f"k{n}", POLICY, 0) for n in range(50)))
        assert time.monotonic() - started < 0.1
        assert all(a.allowed and a.lease.startswith("m:") for a in answers)


async def test_one_probe_at_a_time_after_the_backoff(make_store, private_redis):
    """Once the backoff has passed one call probes the hung Redis; the others do not wait."""
    store = await make_store("open")
    await store.in_flight("k")
    async with outage(private_redis, "hang"):
        await store.admit("k", POLICY, 0)
        await asyncio.sleep(0.6)  # past retry_after_failure
        results = await asyncio.gather(*(timed(store.admit("k", POLICY, 0)) for _ in range(20)))
        waits = sorted(took for _, took in results)
        assert waits[-1] < TIMEOUT + SLACK
        assert waits[-1] > TIMEOUT - 0.05  # the probe
        assert waits[-2] < 0.1  # everyone else


async def test_back_to_redis_within_a_few_seconds(make_store, private_redis):
    """When Redis returns, admissions go to it again within a few seconds; leases issued by the
    local fallback are still settled locally."""
    store = await make_store("local")
    policy = KeyPolicy(max_concurrent=4)
    await store.in_flight("k")
    private_redis.kill()
    local = await store.admit("k", policy, 0)
    assert local.lease.startswith("m:")
    private_redis.start()
    restarted = time.monotonic()
    while True:
        admission = await store.admit("k", policy, 0)
        assert admission.lease is not None
        if admission.lease.startswith("r:"):
            break
        assert time.monotonic() - restarted < 3.0
        await store.settle("k", policy, admission.lease, 0, 0)
        await asyncio.sleep(0.05)
    assert not store.redis_down
    assert await store.in_flight("k") == 2  # one in Redis, one local
    await store.settle("k", policy, local.lease, 0, 0)
    assert await store.local.in_flight("k") == 0
    await store.settle("k", policy, admission.lease, 0, 0)
    assert await store.in_flight("k") == 0


async def test_redis_lease_settled_during_an_outage_is_delivered(make_store, private_redis):
    """A Redis lease settled while Redis hangs does not raise, and reaches Redis after it
    returns: the slot is freed and the usage counted."""
    store = await make_store("closed")
    policy = KeyPolicy(max_concurrent=1, total_quota=1000)
    admitted = await store.admit("k", policy, 100)
    async with outage(private_redis, "hang"):
        _, took = await timed(store.settle("k", policy, admitted.lease, 100, 70))
        assert took < TIMEOUT + SLACK
        await store.settle("k", policy, admitted.lease, 100, 70)  # queued, not attempted
    deadline = time.monotonic() + 3.0
    while True:
        with contextlib.suppress(LimitsUnavailable):
            if await store.in_flight("k") == 0 and await store.quota_used("k") == 70:
                break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert (await store.admit("k", policy, 900)).allowed


async def test_status_reads_fall_back_to_this_process(make_store, private_redis):
    """quota_used and in_flight answer from this process while Redis is down."""
    store = await make_store("local")
    policy = KeyPolicy(max_concurrent=3, total_quota=100)
    shared = await store.admit("k", policy, 10)
    await store.settle("k", policy, shared.lease, 10, 4)
    private_redis.kill()
    local = await store.admit("k", policy, 10)
    await store.settle("k", policy, local.lease, 10, 6)
    held = await store.admit("k", policy, 10)
    assert await store.quota_used("k") == 6  # Redis's 4 cannot be read now
    assert await store.in_flight("k") == 1
    await store.settle("k", policy, held.lease, 10, 0)


async def test_a_cancelled_probe_lets_the_next_call_probe(make_store, private_redis):
    """A probe cancelled by its caller does not keep later calls from probing Redis."""
    store = await make_store("open")
    await store.in_flight("k")
    async with outage(private_redis, "hang"):
        await store.admit("k", POLICY, 0)
        await asyncio.sleep(0.6)
        probe = asyncio.create_task(store.admit("k", POLICY, 0))
        await asyncio.sleep(0.05)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        _, took = await timed(store.admit("k", POLICY, 0))
        assert took > TIMEOUT - 0.05  # this call probed (and waited) in its turn


def test_instances_must_be_positive():
    """A failover store for zero processes is refused."""
    with pytest.raises(ValueError, match="instances"):
        FailoverLimitStore(None, policy="open", instances=0)  # type: ignore[arg-type]
