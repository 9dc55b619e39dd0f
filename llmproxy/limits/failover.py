"""Redis limits with a decided behaviour for when Redis cannot answer.

``redis_failure`` picks it: ``open`` lets requests through unlimited (no limit headers),
``closed`` raises :class:`~llmproxy.limits.admission.LimitsUnavailable` (the gateway's 503 — a
Redis fault is never a 429), ``local`` limits in this process at ``1/instances`` of every limit::

    store = FailoverLimitStore(RedisLimitStore(client, prefix=..., timeout=0.5),
                               policy="local", instances=4)

No request waits for Redis longer than the primary's ``timeout``. After a failure Redis is left
alone for ``retry_after_failure`` seconds; then one call at a time probes it while the others keep
using the fallback, so a dead Redis costs one bounded wait per interval, and a Redis that comes
back is used again within about that interval. Leases remember where they came from: a lease the
local fallback issued is settled locally even after Redis is back, and a Redis lease settled while
Redis is down is queued by the primary and delivered once it answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from llmproxy.limits.admission import UNLIMITED, Admission, KeyPolicy, LimitsUnavailable, Rate
from llmproxy.limits.memory import LOCAL_LEASE_PREFIX, MemoryLimitStore
from llmproxy.limits.policy import local_rate, local_share
from llmproxy.limits.redis import RedisLimitStore

logger = logging.getLogger(__name__)

FailurePolicy = Literal["open", "closed", "local"]
T = TypeVar("T")

_MAX_SHARES = 4096


class FailoverLimitStore:
    """A :class:`~llmproxy.limits.admission.LimitStore`: ``primary`` while it answers, then
    ``policy``. ``clock`` (monotonic seconds) is injectable for tests."""

    def __init__(
        self,
        primary: RedisLimitStore,
        *,
        policy: FailurePolicy,
        instances: int,
        retry_after_failure: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if instances < 1:
            raise ValueError("FailoverLimitStore: instances must be at least 1")
        self.primary = primary
        self.policy: FailurePolicy = policy
        self.instances = instances
        self.local = MemoryLimitStore(clock=clock)
        self._clock = clock
        self._retry_after_failure = retry_after_failure
        self._down = False
        self._retry_at = 0.0
        self._probing = False
        self._failure = ""
        self._shares: dict[KeyPolicy, KeyPolicy] = {}

    @property
    def redis_down(self) -> bool:
        """True from a failed Redis call until one succeeds again."""
        return self._down

    async def check_global(self, rate: Rate) -> Admission:
        """The shared bucket in Redis, or the fallback's answer."""
        admission = await self._via_redis(lambda: self.primary.check_global(rate))
        if admission is not None:
            return admission
        if self.policy == "open":
            return UNLIMITED
        if self.policy == "closed":
            raise LimitsUnavailable(self._failure)
        return await self.local.check_global(local_rate(rate, self.instances))

    async def admit(self, key_id: str, policy: KeyPolicy, reserve_tokens: int) -> Admission:
        """Admission by Redis, or by the fallback."""
        admission = await self._via_redis(
            lambda: self.primary.admit(key_id, policy, reserve_tokens)
        )
        if admission is not None:
            return admission
        if self.policy == "open":
            return UNLIMITED
        if self.policy == "closed":
            raise LimitsUnavailable(self._failure)
        return await self.local.admit(key_id, self._share(policy), reserve_tokens)

    async def settle(
        self, key_id: str, policy: KeyPolicy, lease: str, reserved_tokens: int, used_tokens: int
    ) -> None:
        """Settle where the lease was issued; never raises for a Redis fault (the primary keeps
        the settle and delivers it when Redis answers)."""
        if lease.startswith(LOCAL_LEASE_PREFIX):
            await self.local.settle(
                key_id, self._share(policy), lease, reserved_tokens, used_tokens
            )
        elif self._ask_redis():
            await self._guarded(
                lambda: self.primary.settle(key_id, policy, lease, reserved_tokens, used_tokens)
            )
        else:
            self.primary.settle_later(key_id, lease, used_tokens)

    async def quota_used(self, key_id: str) -> int:
        """The Redis counter, or this process's while Redis is down."""
        used = await self._via_redis(lambda: self.primary.quota_used(key_id))
        return used if used is not None else await self.local.quota_used(key_id)

    async def in_flight(self, key_id: str) -> int:
        """Open Redis leases (all processes, when Redis answers) plus this process's local ones."""
        shared = await self._via_redis(lambda: self.primary.in_flight(key_id))
        return (shared or 0) + await self.local.in_flight(key_id)

    async def close(self) -> None:
        """Close the primary (one last try at its deferred settles) and the local store."""
        await self.primary.close()
        await self.local.close()

    async def _via_redis(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """``call()``'s answer, or ``None`` when Redis is skipped (down) or fails now."""
        if not self._ask_redis():
            return None
        return await self._guarded(call)

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T | None:
        try:
            answer = await call()
        except LimitsUnavailable as exc:
            self._failed(exc)
            return None
        except asyncio.CancelledError:
            self._probing = False  # a cancelled probe must not keep others from probing
            raise
        self._answered()
        return answer

    def _ask_redis(self) -> bool:
        """Whether this call should go to Redis: always while it is up; while it is down, one
        probe at a time once the backoff has passed."""
        if not self._down:
            return True
        if self._probing or self._clock() < self._retry_at:
            return False
        self._probing = True
        return True

    def _failed(self, exc: LimitsUnavailable) -> None:
        self._probing = False
        self._failure = str(exc)
        self._retry_at = self._clock() + self._retry_after_failure
        if not self._down:
            self._down = True
            logger.warning(
                "rate limits: Redis unavailable (%s); %s until it answers (next try in %gs)",
                exc,
                self._fallback_description(),
                self._retry_after_failure,
            )

    def _answered(self) -> None:
        self._probing = False
        if self._down:
            self._down = False
            logger.info("rate limits: Redis answers again; limits are shared again")

    def _fallback_description(self) -> str:
        if self.policy == "open":
            return "redis_failure=open: requests are let through unlimited"
        if self.policy == "closed":
            return "redis_failure=closed: requests are refused with 503"
        return (
            f"redis_failure=local: this process enforces 1/{self.instances} of each limit"
            if self.instances > 1
            else "redis_failure=local: this process enforces the limits itself"
        )

    def _share(self, policy: KeyPolicy) -> KeyPolicy:
        share = self._shares.get(policy)
        if share is None:
            if len(self._shares) >= _MAX_SHARES:
                self._shares.clear()
            share = self._shares[policy] = local_share(policy, self.instances)
        return share
