"""Rates from configuration and one process's share of the limits, with plain values."""

from __future__ import annotations

import pytest

from llmproxy.config.model import PerKeyRateSpec, RateSpec
from llmproxy.limits import (
    KeyPolicy,
    Rate,
    default_burst,
    local_rate,
    local_share,
    rate_of,
    requests_per_minute,
    requests_per_second,
)
from llmproxy.limits.bucket import take


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (RateSpec(), None),
        (RateSpec(requests_per_second=5), None),  # not enabled
        (RateSpec(enabled=True), None),  # enabled without a rate
        (RateSpec(enabled=True, requests_per_second=5), Rate(5.0, 5, 5)),
        (RateSpec(enabled=True, requests_per_second=0.5), Rate(0.5, 1, 1)),
        (RateSpec(enabled=True, requests_per_second=2.5, burst_size=7), Rate(2.5, 7, 3)),
        (RateSpec(enabled=True, requests_per_minute=60), Rate(1.0, 60, 60)),
        (RateSpec(enabled=True, requests_per_minute=2), Rate(2 / 60, 2, 2)),
        (RateSpec(enabled=True, requests_per_minute=600, burst_size=20), Rate(10.0, 20, 600)),
        (RateSpec(enabled=True, requests_per_minute=90), Rate(1.5, 90, 90)),
        (
            PerKeyRateSpec(enabled=True, requests_per_minute=30, max_concurrent=3),
            Rate(0.5, 30, 30),
        ),
    ],
)
def test_rate_of(spec, expected):
    """A spec gives its bucket and the limit its headers show: a per-minute limit bursts to
    the minute's count (60 in any minute), a per-second one to a second's worth, unless
    ``burst_size`` says otherwise; the limit shown is the configured count."""
    assert rate_of(spec) == expected


@pytest.mark.parametrize(
    ("rate", "shown"),
    [(Rate(1.0, 60, 60), 60), (Rate(10.0, 20, 600), 600), (Rate(1.0, 5), 5)],
)
def test_the_limit_shown_is_the_configured_count(rate, shown):
    """``x-ratelimit-limit-requests`` shows the configured count, else the bucket size."""
    assert rate.shown_limit == shown


def test_per_minute_admits_the_minutes_count_at_once_then_refills_at_the_rate():
    """60 per minute: 60 requests in a row pass, the 61st waits a second, and over three
    minutes of trying every 0.1 s the key gets its burst plus one a second — never the one
    request at a time of the old one-second burst."""
    rate = requests_per_minute(60)
    tokens, at, admitted = float(rate.burst), 0.0, []
    for step in range(1800):  # a request every 0.1 s for 180 s
        now = step / 10
        allowed, level, _ = take(tokens, at, now, rate.per_second, rate.burst, 1)
        if allowed:
            tokens, at = level, now
            admitted.append(now)
    assert admitted[:60] == [step / 10 for step in range(60)]
    assert admitted[60] == pytest.approx(6.0)  # the bucket emptied at 5.9 s, one token a second
    assert len(admitted) == 60 + 179  # the burst, plus one a second refilled over 180 s
    assert requests_per_minute(60, burst=10) == Rate(1.0, 10, 60)
    assert requests_per_second(5) == Rate(5.0, 5, 5)


def test_default_burst():
    """One second's worth of requests, rounded up, never zero."""
    assert [default_burst(r) for r in (0.01, 1.0, 1.2, 50.0)] == [1, 1, 2, 50]


def test_local_rate_divides_rate_and_burst():
    """Each of n processes gets 1/n of the rate and of the burst (at least one)."""
    assert local_rate(Rate(10.0, 10), 4) == Rate(2.5, 2)
    assert local_rate(Rate(1.0, 1), 4) == Rate(0.25, 1)
    assert local_rate(Rate(10.0, 10), 1) == Rate(10.0, 10)
    assert local_rate(Rate(1.0, 60, 60), 4) == Rate(0.25, 15, 15)


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
