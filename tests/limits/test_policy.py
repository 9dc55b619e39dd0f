"""Rates from configuration and one process's share of the limits, with plain values."""

from __future__ import annotations

import pytest

from llmproxy.config.model import PerKeyRateSpec, RateSpec
from llmproxy.limits import KeyPolicy, Rate, default_burst, local_rate, local_share, rate_of


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (RateSpec(), None),
        (RateSpec(requests_per_second=5), None),  # not enabled
        (RateSpec(enabled=True), None),  # enabled without a rate
        (RateSpec(enabled=True, requests_per_second=5), Rate(5.0, 5)),
        (RateSpec(enabled=True, requests_per_second=0.5), Rate(0.5, 1)),
        (RateSpec(enabled=True, requests_per_second=2.5, burst_size=7), Rate(2.5, 7)),
        (RateSpec(enabled=True, requests_per_minute=60), Rate(1.0, 1)),
        (RateSpec(enabled=True, requests_per_minute=600, burst_size=20), Rate(10.0, 20)),
        (RateSpec(enabled=True, requests_per_minute=90), Rate(1.5, 2)),
        (PerKeyRateSpec(enabled=True, requests_per_minute=30, max_concurrent=3), Rate(0.5, 1)),
    ],
)
def test_rate_of(spec, expected):
    """A spec gives its bucket; the default burst is one second's worth, at least one."""
    assert rate_of(spec) == expected


def test_default_burst():
    """One second's worth of requests, rounded up, never zero."""
    assert [default_burst(r) for r in (0.01, 1.0, 1.2, 50.0)] == [1, 1, 2, 50]


def test_local_rate_divides_rate_and_burst():
    """Each of n processes gets 1/n of the rate and of the burst (at least one)."""
    assert local_rate(Rate(10.0, 10), 4) == Rate(2.5, 2)
    assert local_rate(Rate(1.0, 1), 4) == Rate(0.25, 1)
    assert local_rate(Rate(10.0, 10), 1) == Rate(10.0, 10)


def test_local_share_divides_every_limit():
    """Concurrency, tokens per minute and what is left of the quota are divided by n."""
    policy = KeyPolicy(
        requests=Rate(4.0, 8),
        max_concurrent=10,
        tokens_per_minute=10_000,
        total_quota=1_000,
        used_quota=200,
    )
    assert local_share(policy, 4) == KeyPolicy(
        requests=Rate(1.0, 2),
        max_concurrent=2,
        tokens_per_minute=2_500,
        total_quota=400,  # 200 used + 800 left / 4
        used_quota=200,
    )
    assert local_share(KeyPolicy(max_concurrent=1), 3) == KeyPolicy(max_concurrent=1)
    assert local_share(policy, 1) is policy


def test_needs_lease():
    """Only slots, token budgets and quotas need settling; a request rate alone does not."""
    assert not KeyPolicy().needs_lease
    assert not KeyPolicy(requests=Rate(1.0, 1)).needs_lease
    assert KeyPolicy(max_concurrent=1).needs_lease
    assert KeyPolicy(tokens_per_minute=1).needs_lease
    assert KeyPolicy(total_quota=0).needs_lease
