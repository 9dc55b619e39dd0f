"""Limits from configuration, and the share of them one process enforces on its own.

Pure functions. :func:`rate_of` turns a ``RateSpec`` into a :class:`Rate`; its default burst is
one second's worth of requests, at least one, so ``requests_per_minute: 60`` without
``burst_size`` admits one request at a time, one per second on average::

    rate_of(RateSpec(enabled=True, requests_per_second=5))            # Rate(5.0, burst=5)
    rate_of(RateSpec(enabled=True, requests_per_minute=600, burst_size=20))  # Rate(10.0, 20)

While Redis is down, ``redis_failure: local`` limits each of ``instances`` gateway processes to
its share: :func:`local_share` and :func:`local_rate` divide every limit (never below one), and
give each process an equal part of the quota that was left.
"""

from __future__ import annotations

import math

from llmproxy.config.model import RateSpec
from llmproxy.limits.admission import KeyPolicy, Rate


def default_burst(per_second: float) -> int:
    """One second's worth of requests, at least one."""
    return max(1, math.ceil(per_second))


def rate_of(spec: RateSpec) -> Rate | None:
    """The bucket ``spec`` describes; ``None`` when it is not enabled or names no rate."""
    if not spec.enabled:
        return None
    if spec.requests_per_second is not None:
        per_second = spec.requests_per_second
    elif spec.requests_per_minute is not None:
        per_second = spec.requests_per_minute / 60.0
    else:
        return None
    return Rate(per_second=per_second, burst=spec.burst_size or default_burst(per_second))


def local_rate(rate: Rate, instances: int) -> Rate:
    """One process's share of ``rate`` when ``instances`` processes enforce it separately."""
    if instances <= 1:
        return rate
    return Rate(per_second=rate.per_second / instances, burst=max(1, rate.burst // instances))


def local_share(policy: KeyPolicy, instances: int) -> KeyPolicy:
    """One process's share of every limit in ``policy`` (the quota: of what is left of it)."""
    if instances <= 1:
        return policy
    total = policy.total_quota
    if total is not None:
        left = max(0, total - policy.used_quota)
        total = policy.used_quota + left // instances
    return KeyPolicy(
        requests=None if policy.requests is None else local_rate(policy.requests, instances),
        max_concurrent=(
            None if policy.max_concurrent is None else max(1, policy.max_concurrent // instances)
        ),
        tokens_per_minute=(
            None
            if policy.tokens_per_minute is None
            else max(1, policy.tokens_per_minute // instances)
        ),
        total_quota=total,
        used_quota=policy.used_quota,
    )
