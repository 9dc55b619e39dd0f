"""The limit store a configuration asks for.

``storage: memory`` counts in this process (in the daemon's shared table when it has several
workers); ``storage: redis`` shares counts through Redis, behind
the ``redis_failure`` policy::

    store = await build_store(config.rate_limit, pools)   # in Runtime.open(), inside the loop
    ...
    await store.close()                                   # before pools.close()

It is a coroutine because the shared Redis client comes from
:meth:`~llmproxy.connections.ConnectionPools.redis`; no connection is opened here, so a Redis that
is down shows up on the first request (and is handled by the failure policy), not at start.
"""

from __future__ import annotations

from llmproxy.config.model import RateLimitConfig
from llmproxy.connections import ConnectionPools
from llmproxy.limits.admission import LimitStore
from llmproxy.limits.failover import FailoverLimitStore
from llmproxy.limits.memory import MemoryLimitStore
from llmproxy.limits.redis import RedisLimitStore
from llmproxy.limits.shared import SharedLimits, SharedLimitStore


async def build_store(
    config: RateLimitConfig, pools: ConnectionPools, *, shared: SharedLimits | None = None
) -> LimitStore:
    """A :class:`MemoryLimitStore` (a :class:`SharedLimitStore` on ``shared``, the daemon's
    table, when the daemon has several workers), or a :class:`FailoverLimitStore` over Redis.

    Raises :class:`~llmproxy.connections.PoolError` for a Redis address that cannot be used and
    ``ValueError`` for ``storage: redis`` without a ``redis`` section.
    """
    if config.storage == "memory":
        return MemoryLimitStore() if shared is None else SharedLimitStore(shared)
    if config.redis is None:
        raise ValueError("rate_limit.storage redis needs a rate_limit.redis section")
    client = await pools.redis(config.redis)
    primary = RedisLimitStore(
        client, prefix=config.key_prefix, timeout=config.redis.timeout, lease_ttl=config.lease_ttl
    )
    return FailoverLimitStore(primary, policy=config.redis_failure, instances=config.instances)
