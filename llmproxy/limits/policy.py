"""Limits from configuration, and the share of them one process enforces on its own.

Pure functions. :func:`rate_of` turns a ``RateSpec`` into a :class:`Rate`. A limit means what
an operator reads in it: "60 per minute" admits 60 in any minute, so a per-minute limit's bucket
holds the minute's count unless ``burst_size`` says otherwise, and a per-second limit's holds one
second's worth. Either way the bucket refills at the sustained rate, and the
``x-ratelimit-limit-requests`` header shows the configured count::

    rate_of(RateSpec(enabled=True, requests_per_second=5))     # Rate(5.0, burst=5, limit=5)
    rate_of(RateSpec(enabled=True, requests_per_minute=60))    # Rate(1.0, burst=60, limit=60)
    rate_of(RateSpec(enabled=True, requests_per_minute=600, burst_size=20))  # Rate(10.0, 20, 600)

A key's or a team's own ``rpm`` (and a decision script's) is a per-minute limit the same way:
:func:`requests_per_minute`.

While Redis is down, ``redis_failure: local`` limits each of ``instances`` gateway processes to
its share: :func:`local_share` and :func:`local_rate` divide every limit (never below one), and
give each process an equal part of the quota that was left.
"""

from __future__ import annotations

import math

from llmproxy.config.model import RateSpec
from llmproxy.limits.admission import KeyPolicy, Rate


def default_burst(per_second: float) -> int:
    """A per-second limit's bucket: one second's worth of requests, at least one."""
    return max(1, math.ceil(per_second))


def requests_per_second(count: float, burst: int | None = None) -> Rate:
    """``count`` requests per second; ``burst`` (None: one second's worth) at once."""
    whole = default_burst(count)
    return Rate(per_second=count, burst=burst or whole, limit=whole)


def requests_per_minute(count: float, burst: int | None = None) -> Rate:
    """``count`` requests in any minute: a bucket of ``burst`` (None: the whole minute's count)
    refilling at ``count / 60`` a second. With the default burst no 60-second window ever holds
    more than ``count`` admissions."""
    whole = max(1, math.ceil(count))
    return Rate(per_second=count / 60.0, burst=burst or whole, limit=whole)


def rate_of(spec: RateSpec) -> Rate | None:
    """The bucket ``spec`` describes; ``None`` when it is not enabled or names no rate."""
    if not spec.enabled:
        return None
    if spec.requests_per_second is not None:
        return requests_per_second(spec.requests_per_second, spec.burst_size)
    if spec.requests_per_minute is not None:
        return requests_per_minute(spec.requests_per_minute, spec.burst_size)
    return None


def local_rate(rate: Rate, instances: int) -> Rate:
    """One process's share of ``rate`` when ``instances`` processes enforce it separately."""
    if instances <= 1:
        return rate
    limit = None if rate.limit is None else max(1, rate.limit // instances)
    return Rate(rate.per_second / instances, max(1, rate.burst // instances), limit)


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
