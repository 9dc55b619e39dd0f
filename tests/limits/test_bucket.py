"""The token-bucket maths with plain values: no clock, no store."""

from __future__ import annotations

import math

import pytest

from llmproxy.limits.bucket import refilled, remaining, seconds_to_full, take


def test_refill_is_rate_times_elapsed():
    """A bucket gains rate × elapsed tokens."""
    assert refilled(1.0, 10.0, 12.0, 0.5, 10) == pytest.approx(2.0)


def test_refill_is_capped_at_burst():
    """A bucket never holds more than burst, however long it sat idle."""
    assert refilled(0.0, 0.0, 1_000.0, 5.0, 3) == 3


def test_take_success_leaves_the_rest():
    """Taking n from a bucket that has them succeeds, leaves the rest and asks no wait."""
    assert take(3.0, 0.0, 0.0, 1.0, 3, 1) == (True, 2.0, 0.0)


def test_take_refusal_takes_nothing_and_says_when():
    """A refusal keeps the refilled level and says when n will be there."""
    allowed, tokens, retry_after = take(0.25, 0.0, 0.5, 0.5, 2, 1)
    assert not allowed
    assert tokens == pytest.approx(0.5)
    assert retry_after == pytest.approx(1.0)  # (1 - 0.5) / 0.5


def test_retry_after_is_exactly_enough():
    """Waiting exactly retry_after makes the same take succeed (no rounding refusal)."""
    rate = 1 / 3
    allowed, tokens, wait = take(0.0, 0.0, 0.1, rate, 1, 1)
    assert not allowed
    allowed, _, _ = take(tokens, 0.1, 0.1 + wait, rate, 1, 1)
    assert allowed
    allowed, _, _ = take(tokens, 0.1, 0.1 + wait * 0.99, rate, 1, 1)
    assert not allowed


def test_fractional_rate():
    """0.1 tokens per second: one token after ten seconds, not before."""
    assert not take(0.0, 0.0, 9.9, 0.1, 1, 1)[0]
    assert take(0.0, 0.0, 10.0, 0.1, 1, 1)[0]


def test_rpm_rate_admits_one_per_second_on_average():
    """60 requests per minute with burst 1: 60 admissions over a simulated minute of polling."""
    tokens, updated_at, admitted = 1.0, 0.0, 0
    for step in range(6000):
        now = step * 0.01
        allowed, tokens, _ = take(tokens, updated_at, now, 60 / 60, 1, 1)
        updated_at = max(updated_at, now)
        admitted += allowed
    assert admitted == 60


def test_burst_then_steady_rate():
    """A full bucket of 5 at 2/s admits 5 at once, then 2 per second."""
    tokens, admitted = 5.0, 0
    for _ in range(10):
        allowed, tokens, _ = take(tokens, 0.0, 0.0, 2.0, 5, 1)
        admitted += allowed
    assert admitted == 5
    allowed, tokens, _ = take(tokens, 0.0, 1.0, 2.0, 5, 1)
    assert allowed
    assert tokens == pytest.approx(1.0)


def test_clock_going_backwards_refills_nothing():
    """A clock that steps back adds no tokens and never removes any."""
    assert refilled(0.5, 100.0, 90.0, 10.0, 5) == 0.5
    allowed, tokens, retry_after = take(0.5, 100.0, 90.0, 10.0, 5, 1)
    assert (allowed, tokens) == (False, 0.5)
    assert retry_after == pytest.approx(0.05)


def test_n_above_burst_never_fits():
    """Taking more than the bucket can ever hold is refused with an infinite wait."""
    allowed, tokens, retry_after = take(10.0, 0.0, 0.0, 1.0, 10, 11)
    assert not allowed
    assert tokens == 10.0
    assert retry_after == math.inf


def test_negative_level_refills_from_below_zero():
    """A bucket charged into debt refills from the debt."""
    assert refilled(-30.0, 0.0, 2.0, 10.0, 100) == pytest.approx(-10.0)
    allowed, _, retry_after = take(-30.0, 0.0, 0.0, 10.0, 100, 10)
    assert not allowed
    assert retry_after == pytest.approx(4.0)


def test_headers_helpers():
    """Remaining is whole tokens, never negative; time to full is zero for a full bucket."""
    assert remaining(2.9999999999) == 3
    assert remaining(2.5) == 2
    assert remaining(-4.0) == 0
    assert seconds_to_full(5.0, 2.0, 5) == 0.0
    assert seconds_to_full(1.0, 2.0, 5) == pytest.approx(2.0)
