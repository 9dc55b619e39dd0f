"""When and how long to wait before trying another backend.

The policy is data plus arithmetic; the gateway owns the loop. It decides what counts as a
retryable *error* itself: connection failures and resets before the first response byte are
always retryable (nothing reached the client yet), whereas once a byte has been streamed to the
client the request can never be retried. This module only answers "is this upstream *status*
worth another attempt" and "how long to back off".
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({429, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by `max_wait` and by `max_retries`.

        policy = RetryPolicy(max_retries=3, initial_wait=0.5, max_wait=4.0)
        rng = random.Random()
        for attempt in range(1, policy.attempts + 1):
            if attempt > 1:
                await asyncio.sleep(policy.delay(attempt - 1, rng))
            ...try a backend; stop unless it failed retryably

    Build it from config with `retry_on_status=frozenset(cfg.retry_on_status)`.
    """

    enabled: bool = True
    max_retries: int = 3
    initial_wait: float = 1.0
    max_wait: float = 10.0
    multiplier: float = 2.0
    # Fraction of the delay added or removed at random, so clients that failed together do not
    # all come back in the same instant.
    jitter: float = 0.2
    retry_on_status: frozenset[int] = DEFAULT_RETRY_STATUSES

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"retry.max_retries: must be >= 0, got {self.max_retries}")
        if self.initial_wait < 0 or self.max_wait < 0:
            raise ValueError("retry.initial_wait and retry.max_wait: must be >= 0 seconds")
        if self.multiplier < 1.0:
            raise ValueError(f"retry.multiplier: must be >= 1, got {self.multiplier}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"retry.jitter: must be a fraction in [0, 1], got {self.jitter}")

    @property
    def attempts(self) -> int:
        """Total tries per request, the first one included."""
        return 1 + self.max_retries if self.enabled else 1

    def retryable_status(self, status: int) -> bool:
        """Whether an upstream response with `status` (before any byte reached the client)
        should be retried on another backend."""
        return status in self.retry_on_status

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `attempt` (1 for the first retry).

        `initial_wait * multiplier ** (attempt - 1)`, capped at `max_wait`, then moved by up to
        `jitter` of itself in either direction and clamped to `[0, max_wait]`, so `max_wait` is a
        hard bound an operator can rely on.
        """
        if attempt < 1:
            raise ValueError(f"retry attempt numbers start at 1, got {attempt}")
        try:
            base = min(self.initial_wait * self.multiplier ** (attempt - 1), self.max_wait)
        except OverflowError:
            base = self.max_wait
        spread = base * self.jitter * rng.uniform(-1.0, 1.0)
        return min(max(base + spread, 0.0), self.max_wait)
