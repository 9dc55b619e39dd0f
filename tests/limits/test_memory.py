"""The memory store on a clock the test moves: refills, sweeping, lease names."""

from __future__ import annotations

import pytest

from llmproxy.limits import KeyPolicy, MemoryLimitStore, Rate


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryLimitStore:
    return MemoryLimitStore(clock=clock)


async def test_per_key_bucket_refills_on_the_clock(store, clock):
    """An rpm bucket admits one more request each 1/rate seconds, and says so exactly."""
    policy = KeyPolicy(requests=Rate(per_second=1.0, burst=2))
    assert (await store.admit("k", policy, 0)).allowed
    assert (await store.admit("k", policy, 0)).allowed
    refused = await store.admit("k", policy, 0)
    assert refused.retry_after == pytest.approx(1.0)
    clock.now += 0.5
    assert (await store.admit("k", policy, 0)).retry_after == pytest.approx(0.5)
    clock.now += 0.5
    admitted = await store.admit("k", policy, 0)
    assert admitted.allowed
    assert admitted.requests_reset == pytest.approx(2.0)


async def test_global_bucket_refills_on_the_clock(store, clock):
    """The global bucket refills at its rate and caps at its burst."""
    rate = Rate(per_second=10.0, burst=5)
    assert sum([(await store.check_global(rate)).allowed for _ in range(10)]) == 5
    clock.now += 100
    assert sum([(await store.check_global(rate)).allowed for _ in range(10)]) == 5
    clock.now += 0.2
    assert sum([(await store.check_global(rate)).allowed for _ in range(10)]) == 2


async def test_tpm_refills_per_minute(store, clock):
    """A TPM bucket regains tokens_per_minute/60 per second."""
    policy = KeyPolicy(tokens_per_minute=600)
    admitted = await store.admit("k", policy, 600)
    refused = await store.admit("k", policy, 100)
    assert refused.retry_after == pytest.approx(10.0)
    clock.now += 10
    assert (await store.admit("k", policy, 100)).allowed
    await store.settle("k", policy, admitted.lease, 600, 600)


async def test_clock_going_backwards_is_harmless(store, clock):
    """A clock stepping back neither refills nor breaks the bucket."""
    policy = KeyPolicy(requests=Rate(per_second=1.0, burst=1))
    assert (await store.admit("k", policy, 0)).allowed
    clock.now -= 30
    refused = await store.admit("k", policy, 0)
    assert refused.reason == "requests"
    clock.now += 31
    assert (await store.admit("k", policy, 0)).allowed


async def test_leases_are_local_and_unique(store):
    """Leases start with m: (the failover store routes settles by it) and never repeat."""
    policy = KeyPolicy(max_concurrent=100)
    leases = {(await store.admit("k", policy, 0)).lease for _ in range(50)}
    assert len(leases) == 50
    assert all(lease is not None and lease.startswith("m:") for lease in leases)


async def test_sweep_forgets_idle_keys_but_keeps_what_counts(store, clock):
    """Sweeping drops keys equal to fresh ones, never an open slot or a quota count."""
    quota = KeyPolicy(total_quota=100)
    counted = await store.admit("counted", quota, 10)
    await store.settle("counted", quota, counted.lease, 10, 7)
    busy = await store.admit("busy", KeyPolicy(max_concurrent=1), 0)
    limited = KeyPolicy(requests=Rate(per_second=1.0, burst=1))
    for n in range(5000):
        await store.admit(f"one-off-{n}", limited, 0)
    clock.now += 2
    for _ in range(5000):
        await store.admit("hot", limited, 0)
    assert len(store._keys) < 100
    assert await store.quota_used("counted") == 7
    assert await store.in_flight("busy") == 1
    assert (await store.admit("busy", KeyPolicy(max_concurrent=1), 0)).reason == "concurrency"
    await store.settle("busy", KeyPolicy(max_concurrent=1), busy.lease, 0, 0)


async def test_settle_survives_a_policy_change(store):
    """A settle uses what the lease recorded, so a policy changed in between cannot unbalance."""
    before = KeyPolicy(tokens_per_minute=1000, total_quota=1000)
    admitted = await store.admit("k", before, 500)
    await store.settle("k", KeyPolicy(), admitted.lease, 500, 100)
    assert await store.quota_used("k") == 100
    probe = await store.admit("k", before, 900)
    assert probe.allowed  # 500 reserved, 100 used: 400 came back
