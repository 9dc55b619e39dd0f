"""The Redis store's own duties: TTLs, reloaded scripts, expiring leases, bounded calls and the
repair of admissions and settles that Redis never confirmed."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmproxy.limits import KeyPolicy, LimitsUnavailable, Rate, RedisLimitStore, _lua
from llmproxy.limits._wire import (
    admit_args,
    admit_keys,
    global_key,
    key_names,
    settle_args,
    settle_keys,
)
from llmproxy.limits.redis import MARKER_TTL
from tests.limits.conftest import eventually, lease_of

EVERYTHING = KeyPolicy(
    requests=Rate(per_second=1.0, burst=5),
    max_concurrent=5,
    tokens_per_minute=6000,
    total_quota=100_000,
)


async def test_every_key_has_a_ttl(shared_redis, prefix):
    """Buckets, lease sets, reservations and quota counters all expire; quota ones last long."""
    store = RedisLimitStore(shared_redis, prefix=prefix, timeout=2.0, lease_ttl=60)
    await store.check_global(Rate(per_second=1.0, burst=10))
    kept = await store.admit("k", EVERYTHING, 100)
    settled = await store.admit("k", EVERYTHING, 100)
    await store.settle("k", EVERYTHING, lease_of(settled), 100, 50)
    names = [name async for name in shared_redis.scan_iter(match=f"{prefix}*")]
    names_of_k = key_names(prefix, "k")
    assert set(names) == {
        global_key(prefix),
        names_of_k.requests,
        names_of_k.tokens,
        names_of_k.leases,
        names_of_k.held,
        names_of_k.quota,
    }
    ttls = {name: await shared_redis.pttl(name) for name in names}
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    assert ttls[global_key(prefix)] <= 2_000  # one token short of full at 1/s, plus a second
    # Lease sets outlive their leases by the marker TTL, so an expired lease is still there for
    # the next admission to free its reservation.
    assert ttls[names_of_k.leases] <= (60 + MARKER_TTL) * 1000
    assert ttls[names_of_k.leases] > MARKER_TTL * 1000
    assert ttls[names_of_k.quota] > 30 * 86_400_000
    await store.settle("k", EVERYTHING, lease_of(kept), 100, 0)
    await store.close()


async def test_full_buckets_expire(shared_redis, prefix):
    """A bucket's key lives only until it would be full again (missing means full)."""
    store = RedisLimitStore(shared_redis, prefix=prefix, timeout=2.0)
    await store.admit("k", KeyPolicy(requests=Rate(per_second=20.0, burst=2)), 0)
    assert 0 < await shared_redis.pttl(key_names(prefix, "k").requests) <= 1_050
    await asyncio.sleep(1.2)
    assert not await shared_redis.exists(key_names(prefix, "k").requests)
    await store.close()


async def test_scripts_survive_script_flush(private_redis, clients):
    """After SCRIPT FLUSH (a restart, a failover) the scripts are loaded again transparently."""
    client = await clients.new(private_redis.addr)
    store = RedisLimitStore(client, prefix="t:", timeout=2.0)
    try:
        assert (await store.admit("k", EVERYTHING, 10)).allowed
        await client.script_flush()
        assert (await store.check_global(Rate(1.0, 1))).allowed
        admitted = await store.admit("k", EVERYTHING, 10)
        assert admitted.allowed
        await client.script_flush()
        await store.settle("k", EVERYTHING, lease_of(admitted), 10, 10)
        await client.script_flush()
        assert await store.in_flight("k") == 1
    finally:
        await store.close()


async def test_expired_leases_free_the_slots_of_a_dead_process(
    redis_stores, shared_redis, prefix, clients
):
    """Slots and quota reservations of a gateway that died free themselves after lease_ttl,
    and its settle, if it ever comes, counts the usage once."""
    client = await clients.new()
    dead = RedisLimitStore(client, prefix=prefix, timeout=2.0, lease_ttl=0.3)
    alive = redis_stores[0]
    policy = KeyPolicy(max_concurrent=2, total_quota=1000)
    try:
        lost = [await dead.admit("k", policy, 400) for _ in range(2)]
        assert all(a.allowed for a in lost)
        # What kill -9 does to a gateway: nothing renews its leases any more.
        assert dead._renewer is not None
        dead._renewer.cancel()
        assert (await alive.admit("k", policy, 100)).reason == "concurrency"
        await asyncio.sleep(0.4)
        assert await alive.in_flight("k") == 0
        admitted = await alive.admit("k", policy, 900)  # both reservations were released
        assert admitted.allowed
        reserved = await shared_redis.hget(key_names(prefix, "k").quota, "reserved")
        assert reserved == "900"
        for _ in range(2):
            await dead.settle("k", policy, lease_of(lost[0]), 400, 123)
        assert await alive.quota_used("k") == 123
        await alive.settle("k", policy, lease_of(admitted), 900, 0)
        assert await shared_redis.hget(key_names(prefix, "k").quota, "reserved") == "0"
    finally:
        await dead.close()


async def test_a_live_store_renews_its_leases(redis_stores, shared_redis, prefix, clients):
    """A gateway that lives keeps its slots past lease_ttl (a stream may run for hours): its
    leases are renewed every third of the TTL until settled, and the slot is free at once then."""
    client = await clients.new()
    live = RedisLimitStore(client, prefix=prefix, timeout=2.0, lease_ttl=0.3)
    other = redis_stores[0]
    policy = KeyPolicy(max_concurrent=1, total_quota=1000)
    try:
        held = await live.admit("k", policy, 100)
        assert held.allowed
        await asyncio.sleep(1.0)  # more than three lease lifetimes
        assert await other.in_flight("k") == 1
        assert (await other.admit("k", policy, 100)).reason == "concurrency"
        await live.settle("k", policy, lease_of(held), 100, 40)
        assert await live.renew() == 0  # nothing held any more
        admitted = await other.admit("k", policy, 100)
        assert admitted.allowed
        await other.settle("k", policy, lease_of(admitted), 100, 0)
        assert await other.quota_used("k") == 40
    finally:
        await live.close()


async def test_refused_connection_is_unavailable_at_once(clients):
    """A Redis that refuses connections is LimitsUnavailable, fast."""
    client = await clients.new("127.0.0.1:1", wait=0.5)
    store = RedisLimitStore(client, prefix="t:", timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(LimitsUnavailable):
            await store.admit("k", KeyPolicy(requests=Rate(1.0, 1)), 0)
        with pytest.raises(LimitsUnavailable):
            await store.check_global(Rate(1.0, 1))
        with pytest.raises(LimitsUnavailable):
            await store.in_flight("k")
        assert time.monotonic() - started < 0.5
    finally:
        await store.close()


async def test_hung_redis_is_bounded_and_abandoned_admissions_are_voided(private_redis, clients):
    """A paused Redis costs one timeout per call; an admission that timed out but ran once Redis
    resumed holds no slot for long: it is voided after the next call that reaches Redis."""
    client = await clients.new(private_redis.addr, wait=5.0)  # the store's timeout bounds
    store = RedisLimitStore(client, prefix="t:", timeout=0.3)
    policy = KeyPolicy(max_concurrent=1, total_quota=1000)
    try:
        assert await store.in_flight("k") == 0  # connection established before the pause
        private_redis.pause()
        for call in (
            store.admit("k", policy, 100),
            store.check_global(Rate(1.0, 1)),
            store.quota_used("k"),
        ):
            started = time.monotonic()
            with pytest.raises(LimitsUnavailable, match=r"no answer within 0\.3s"):
                await call
            assert 0.25 < time.monotonic() - started < 0.5
        assert store.deferred == 1
        private_redis.resume()
        assert await store.in_flight("k") <= 1  # reaches Redis: the void is sent after it
        await eventually(lambda: store.deferred == 0)
        assert await store.in_flight("k") == 0
        admitted = await store.admit("k", policy, 1000)  # nor any quota reservation
        assert admitted.allowed
        await store.settle("k", policy, lease_of(admitted), 1000, 0)
    finally:
        await store.close()


async def test_settle_while_redis_is_down_is_delivered_later(private_redis, clients):
    """A settle that cannot reach Redis raises, is kept, and is delivered once Redis answers."""
    client = await clients.new(private_redis.addr, wait=5.0)
    store = RedisLimitStore(client, prefix="t:", timeout=0.3)
    policy = KeyPolicy(max_concurrent=1, total_quota=1000)
    try:
        admitted = await store.admit("k", policy, 100)
        private_redis.pause()
        with pytest.raises(LimitsUnavailable, match="deferred"):
            await store.settle("k", policy, lease_of(admitted), 100, 60)
        assert store.deferred == 1
        private_redis.resume()
        await store.in_flight("k")  # any call that reaches Redis starts the delivery
        await eventually(lambda: store.deferred == 0)
        assert await store.in_flight("k") == 0
        assert await store.quota_used("k") == 60
    finally:
        await store.close()


async def test_cancelled_settle_still_completes(shared_redis, prefix):
    """A settle whose caller is cancelled mid-call still frees the slot."""
    store = RedisLimitStore(shared_redis, prefix=prefix, timeout=2.0)
    policy = KeyPolicy(max_concurrent=1)
    admitted = await store.admit("k", policy, 0)
    task = asyncio.create_task(store.settle("k", policy, lease_of(admitted), 0, 0))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def slot_free() -> bool:
        return await store.in_flight("k") == 0

    await eventually(slot_free)
    await store.close()


def test_store_rejects_nonsense_settings(shared_redis):
    """A zero timeout or lease TTL is refused at construction."""
    with pytest.raises(ValueError, match="positive"):
        RedisLimitStore(shared_redis, prefix="t:", timeout=0)
    with pytest.raises(ValueError, match="positive"):
        RedisLimitStore(shared_redis, prefix="t:", timeout=1, lease_ttl=0)


async def test_a_cancelled_call_is_never_swallowed(shared_redis, prefix):
    """Cancelling a task inside a store call always cancels it (redis-py on Python 3.11 can
    return a command's result instead when the cancellation lands as the reply arrives)."""
    store = RedisLimitStore(shared_redis, prefix=prefix, timeout=2.0)
    policy = KeyPolicy(max_concurrent=1000)

    async def busy() -> None:
        while True:
            admission = await store.admit("k", policy, 0)
            await store.settle("k", policy, lease_of(admission), 0, 0)

    for n in range(100):
        task = asyncio.create_task(busy())
        await asyncio.sleep(0.0002 * (n % 10))
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=1.0)
        assert done, "a cancellation was swallowed"

    async def slots_free() -> bool:
        return await store.in_flight("k") == 0

    await eventually(slots_free)  # admissions cut short were voided, settles completed
    await store.close()


async def run_admit(client, prefix: str, lease: str, policy: KeyPolicy) -> list[str]:
    script = client.register_script(_lua.ADMIT)
    args = admit_args(lease, policy, 10, lease_ttl=60, quota_ttl=60, marker_ttl=60)
    reply: list[str] = await script(keys=admit_keys(key_names(prefix, "k")), args=args)
    return reply


async def test_a_voided_lease_can_never_be_admitted(shared_redis, prefix):
    """An admission that reaches Redis after the gateway voided its lease takes nothing."""
    policy = KeyPolicy(requests=Rate(0.001, 5), max_concurrent=1, total_quota=100)
    settle = shared_redis.register_script(_lua.SETTLE)
    args = settle_args("r:late", 0, void=True, quota_ttl=60, marker_ttl=60)
    assert await settle(keys=settle_keys(key_names(prefix, "k")), args=args) == 0
    assert (await run_admit(shared_redis, prefix, "r:late", policy))[:2] == ["0", "void"]
    store = RedisLimitStore(shared_redis, prefix=prefix, timeout=2.0)
    admitted = await store.admit("k", policy, 100)
    assert admitted.requests_remaining == 4  # the voided admission took no token, slot or quota
    await store.settle("k", policy, lease_of(admitted), 100, 0)


async def test_a_repeated_admission_takes_once(shared_redis, prefix):
    """The same lease admitted twice (a resend after a broken connection) takes once."""
    policy = KeyPolicy(requests=Rate(0.001, 5), max_concurrent=2, total_quota=100)
    first = await run_admit(shared_redis, prefix, "r:twice", policy)
    again = await run_admit(shared_redis, prefix, "r:twice", policy)
    assert first[0] == again[0] == "1"
    store = RedisLimitStore(shared_redis, prefix=prefix, timeout=2.0)
    assert await store.in_flight("k") == 1
    probe = await store.admit("k", policy, 90)
    assert probe.requests_remaining == 3
    assert probe.reason is None  # 100 - 10 reserved once leaves 90


async def test_close_reports_undelivered_settles(private_redis, clients, caplog):
    """Settles that never reached Redis are reported when the store closes (their leases will
    expire); closing does not hang on a dead Redis."""
    client = await clients.new(private_redis.addr, wait=0.3)
    store = RedisLimitStore(client, prefix="t:", timeout=0.3)
    policy = KeyPolicy(max_concurrent=1)
    admitted = await store.admit("k", policy, 0)
    private_redis.kill()
    store.settle_later("k", lease_of(admitted), 0)
    started = time.monotonic()
    await store.close()
    assert time.monotonic() - started < 1.0
    assert "1 settles could not be delivered" in caplog.text
