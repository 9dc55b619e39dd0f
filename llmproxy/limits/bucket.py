"""Token-bucket arithmetic, with no clock and no storage of its own.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; taking ``n``
succeeds when at least ``n`` are there. The memory store calls these functions directly and the
Redis scripts repeat the same few lines in Lua, so the maths is pinned once, here, by plain-value
tests::

    allowed, tokens, retry_after = take(tokens, updated_at, now, rate=2.0, burst=5, n=1)
    updated_at = max(updated_at, now)   # never move a bucket's clock backwards

A clock that steps backwards (an NTP correction on the Redis host, a replica promoted with a
different clock) refills nothing: elapsed time is never negative, and the caller keeps the later
of the two times so the same interval is not refilled twice once the clock catches up.
"""

from __future__ import annotations

import math

EPSILON = 1e-9
"""Slack in comparisons, so a client that waits exactly ``retry_after`` is not refused for a
rounding error in the refill (0.9999999999 tokens where 1 was due)."""


def refilled(tokens: float, updated_at: float, now: float, rate: float, burst: float) -> float:
    """The level at ``now`` of a bucket that held ``tokens`` at ``updated_at``, capped at ``burst``.

    A level may be negative (a token budget charged more than it reserved); it then refills
    from below zero like any other level.
    """
    elapsed = now - updated_at
    if elapsed > 0.0:
        tokens += elapsed * rate
    return burst if tokens > burst else tokens


def take(
    tokens: float, updated_at: float, now: float, rate: float, burst: float, n: float
) -> tuple[bool, float, float]:
    """Try to take ``n`` tokens: ``(allowed, new_tokens, retry_after)``.

    On success ``new_tokens`` is the level after taking and ``retry_after`` is 0. On refusal
    nothing is taken: ``new_tokens`` is the refilled level and ``retry_after`` the seconds until
    ``n`` tokens will be there, or ``math.inf`` when ``n`` exceeds ``burst`` (it never fits).
    """
    level = refilled(tokens, updated_at, now, rate, burst)
    if level + EPSILON >= n:
        return True, level - n, 0.0
    if n > burst:
        return False, level, math.inf
    return False, level, (n - level) / rate


def seconds_to_full(tokens: float, rate: float, burst: float) -> float:
    """How long a bucket at ``tokens`` takes to refill to ``burst`` (0 when already full)."""
    missing = burst - tokens
    return missing / rate if missing > 0.0 else 0.0


def remaining(tokens: float) -> int:
    """Whole tokens left, as the ``x-ratelimit-remaining-*`` headers report them (never < 0)."""
    whole = math.floor(tokens + EPSILON)
    return whole if whole > 0 else 0
