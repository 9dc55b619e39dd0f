"""The vocabulary of rate limiting: what a key may do, what a store answers, and the store itself.

The gateway resolves a :class:`KeyPolicy` per request (config defaults, then the key's own data),
asks a :class:`LimitStore` to :meth:`~LimitStore.admit` it with the request's token reservation,
and — whatever ends the request — settles the returned lease with the real usage::

    admission = await store.admit(key_id, policy, reserve_tokens=1200)
    if not admission.allowed:
        ...  # 429 (reason "quota": insufficient_quota), Retry-After: admission.retry_after
    try:
        used = await forward(...)
    finally:
        if admission.lease is not None:
            await store.settle(key_id, policy, admission.lease, 1200, used)

A store that cannot answer (Redis down under ``redis_failure: closed``) raises
:class:`LimitsUnavailable`, which the gateway turns into a 503 — a fault is never a 429.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Reason = Literal["requests", "concurrency", "tokens", "quota"]

CONCURRENCY_RETRY_AFTER = 1.0
"""``retry_after`` of a concurrency refusal: a slot frees when some request ends, which no bucket
can predict, so clients are told to come back in a second."""

QUOTA_RETRY_AFTER = 1.0
"""``retry_after`` of a quota refusal that in-flight reservations cause (they may settle lower);
a quota that is spent for good has no ``retry_after``."""


@dataclass(frozen=True, slots=True)
class Rate:
    """A bucket's refill rate (per second) and size, and the limit as configured: 120 rpm with
    bursts of 10 is ``Rate(per_second=2.0, burst=10, limit=120)``.

    ``limit`` is what ``x-ratelimit-limit-requests`` shows — the count per window the operator
    wrote (120 for 120 per minute), not the bucket size; ``None`` shows ``burst``.
    """

    per_second: float
    burst: int
    limit: int | None = None

    @property
    def shown_limit(self) -> int:
        """The ``x-ratelimit-limit-requests`` value: the configured count, else the burst."""
        return self.burst if self.limit is None else self.limit


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """One key's limits for one request; ``None`` means that dimension is not limited.

    ``tokens_per_minute`` is a bucket of that many tokens refilling at ``tokens_per_minute / 60``
    per second. ``used_quota`` is what the key's own data says was already used: a store counts
    from the larger of its own counter and this value, so usage billed elsewhere (and written back
    to the key's data) is neither lost nor counted twice.
    """

    requests: Rate | None = None
    max_concurrent: int | None = None
    tokens_per_minute: int | None = None
    total_quota: int | None = None
    used_quota: int = 0

    @property
    def needs_lease(self) -> bool:
        """True when an admission holds something that must be settled (slot, tokens, quota)."""
        return (
            self.max_concurrent is not None
            or self.tokens_per_minute is not None
            or self.total_quota is not None
        )


@dataclass(frozen=True, slots=True)
class Admission:
    """A store's answer: allowed or not, why, and the state for the ``x-ratelimit-*`` headers.

    ``lease`` names the slot and reservations to settle; it is ``None`` when there is nothing to
    settle (refusals, policies with only a request rate, ``redis_failure: open`` during an
    outage). ``retry_after`` is in seconds: for ``requests`` and ``tokens`` the time until enough
    has refilled, for ``concurrency`` :data:`CONCURRENCY_RETRY_AFTER`, and ``None`` when waiting
    cannot help (a reservation larger than the whole per-minute budget, a spent quota).

    ``requests_limit`` is the configured limit (:attr:`Rate.shown_limit`: 60 for 60 per minute,
    whatever the burst), ``requests_remaining`` the whole tokens in the bucket now (what may be
    sent at once), ``requests_reset`` the seconds until the bucket is full again; the
    ``tokens_*`` fields describe the tokens-per-minute bucket the same way (limit =
    ``tokens_per_minute``). Fields are ``None`` for dimensions the policy does not limit.
    """

    allowed: bool
    reason: Reason | None = None
    retry_after: float | None = None
    lease: str | None = None
    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset: float | None = None


UNLIMITED = Admission(allowed=True)
"""Allowed, with nothing to settle and no headers (``redis_failure: open`` during an outage)."""


class LimitsUnavailable(Exception):
    """The limit store cannot answer (its Redis is down or too slow); the gateway answers 503."""


class LimitStore(Protocol):
    """Where limit state lives: this process (:class:`MemoryLimitStore`) or Redis."""

    async def check_global(self, rate: Rate) -> Admission:
        """Take one token from the bucket shared by all traffic."""
        ...

    async def admit(self, key_id: str, policy: KeyPolicy, reserve_tokens: int) -> Admission:
        """All or nothing: request token, concurrency slot, tokens-per-minute and quota
        reservations of ``reserve_tokens``. A refusal takes nothing."""
        ...

    async def settle(
        self, key_id: str, policy: KeyPolicy, lease: str, reserved_tokens: int, used_tokens: int
    ) -> None:
        """End an admitted request: free its slot, give back ``reserved - used`` tokens (or
        charge the excess), add ``used_tokens`` to the quota. A second settle of the same lease
        changes nothing. ``reserved_tokens`` is what was passed to :meth:`admit`; stores settle
        against their own record of the lease, so a policy changed in between cannot unbalance
        them."""
        ...

    async def quota_used(self, key_id: str) -> int:
        """Tokens the store has counted against the key's quota (status and tests)."""
        ...

    async def in_flight(self, key_id: str) -> int:
        """Open leases of the key: admitted requests not yet settled."""
        ...

    async def close(self) -> None:
        """Finish background work; shared connections are closed by their owner."""
        ...
