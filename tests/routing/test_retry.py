"""RetryPolicy: attempt counts, retryable statuses and backoff delays."""

from __future__ import annotations

import random

import pytest

from llmproxy.routing import RetryPolicy


def test_attempts_include_first_try() -> None:
    """An enabled policy tries 1 + max_retries times; a disabled one tries once."""
    assert RetryPolicy(max_retries=3).attempts == 4
    assert RetryPolicy(max_retries=0).attempts == 1
    assert RetryPolicy(enabled=False, max_retries=3).attempts == 1


def test_default_retryable_statuses() -> None:
    """429, 502, 503 and 504 are retried by default; other statuses are not."""
    policy = RetryPolicy()
    assert [s for s in (200, 400, 429, 500, 502, 503, 504) if policy.retryable_status(s)] == [
        429,
        502,
        503,
        504,
    ]
    assert RetryPolicy(retry_on_status=frozenset({500})).retryable_status(500)


def test_delay_grows_exponentially_then_caps() -> None:
    """Without jitter the delays are initial_wait * multiplier**(n-1), capped at max_wait."""
    policy = RetryPolicy(initial_wait=0.5, max_wait=5.0, multiplier=2.0, jitter=0.0)
    rng = random.Random(1)
    assert [policy.delay(n, rng) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_huge_attempt_number_does_not_overflow() -> None:
    """A very large attempt number yields max_wait instead of an OverflowError."""
    policy = RetryPolicy(initial_wait=1.0, max_wait=7.0, multiplier=10.0, jitter=0.0)
    assert policy.delay(10_000, random.Random(0)) == 7.0


def test_jitter_stays_within_bounds_and_varies() -> None:
    """Jittered delays stay within ±jitter of the base, never exceed max_wait, and differ."""
    policy = RetryPolicy(initial_wait=1.0, max_wait=3.0, multiplier=2.0, jitter=0.2)
    rng = random.Random(42)
    firsts = [policy.delay(1, rng) for _ in range(1000)]
    assert all(0.8 <= d <= 1.2 for d in firsts)
    assert len(set(firsts)) > 900
    assert min(firsts) < 0.85
    assert max(firsts) > 1.15
    capped = [policy.delay(5, rng) for _ in range(1000)]
    assert all(2.4 <= d <= 3.0 for d in capped)


def test_delay_is_never_negative() -> None:
    """Full jitter can shrink a delay to zero but not below."""
    policy = RetryPolicy(initial_wait=1.0, jitter=1.0)
    rng = random.Random(7)
    assert all(policy.delay(1, rng) >= 0.0 for _ in range(1000))


def test_seeded_rng_is_reproducible() -> None:
    """The same seed gives the same delays, so tests of the retry loop are deterministic."""
    policy = RetryPolicy()
    first = [policy.delay(n, random.Random(3)) for n in range(1, 4)]
    second = [policy.delay(n, random.Random(3)) for n in range(1, 4)]
    assert first == second


def test_attempt_numbers_start_at_one() -> None:
    """delay(0) is a caller bug and says so."""
    with pytest.raises(ValueError, match="start at 1"):
        RetryPolicy().delay(0, random.Random())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"initial_wait": -1.0}, "initial_wait"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": 1.5}, "jitter"),
    ],
)
def test_invalid_values_are_rejected(kwargs: dict[str, float], message: str) -> None:
    """Nonsensical retry settings fail at construction, naming the field."""
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
