"""The store a rate_limit section asks for."""

from __future__ import annotations

import pytest

from llmproxy.config.model import RateLimitConfig
from llmproxy.connections import ConnectionPools
from llmproxy.limits import FailoverLimitStore, KeyPolicy, MemoryLimitStore, build_store


async def test_memory_storage_builds_a_memory_store():
    """storage: memory counts in this process."""
    store = await build_store(RateLimitConfig(), ConnectionPools())
    assert isinstance(store, MemoryLimitStore)


async def test_redis_storage_builds_a_failover_store(prefix, shared_redis):
    """storage: redis is shared through the configured Redis, behind redis_failure."""
    config = RateLimitConfig.model_validate(
        {
            "enabled": True,
            "storage": "redis",
            "redis": {"addr": "127.0.0.1:6379", "timeout": "250ms"},
            "redis_failure": "closed",
            "instances": 3,
            "key_prefix": prefix,
        }
    )
    pools = ConnectionPools()
    try:
        store = await build_store(config, pools)
        assert isinstance(store, FailoverLimitStore)
        assert (store.policy, store.instances) == ("closed", 3)
        assert (store.primary.prefix, store.primary.timeout) == (prefix, 0.25)
        admission = await store.admit("k", KeyPolicy(max_concurrent=1), 0)
        assert admission.lease is not None
        assert admission.lease.startswith("r:")
        assert await shared_redis.exists(f"{prefix}key:{{k}}:leases")
        await store.settle("k", KeyPolicy(max_concurrent=1), admission.lease, 0, 0)
        await store.close()
    finally:
        await pools.close()


async def test_redis_storage_needs_a_connection():
    """storage: redis without a redis section is refused with the setting to add."""
    with pytest.raises(ValueError, match=r"rate_limit\.redis"):
        await build_store(RateLimitConfig(storage="redis"), ConnectionPools())
