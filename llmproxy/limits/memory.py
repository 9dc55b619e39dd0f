"""Limits kept in this process: exact for one process, and the fallback while Redis is away.

Every method runs to completion without awaiting anything, so on one event loop each check and
update is atomic without a lock. A check allocates little (a few slot objects per key, one
:class:`~llmproxy.limits.admission.Admission` per answer) and costs a few microseconds::

    store = MemoryLimitStore()                  # or MemoryLimitStore(clock=fake_clock) in tests
    admission = await store.admit("key-1", KeyPolicy(max_concurrent=2), reserve_tokens=0)
    await store.settle("key-1", policy, admission.lease, 0, used_tokens=0)

State is per key id. Keys with nothing in flight, no quota counted and full buckets are swept
every few thousand admissions, so one-off keys do not accumulate; quota counters stay for the life
of the process (they are the only record of what the key used here).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable

from llmproxy.limits.admission import (
    CONCURRENCY_RETRY_AFTER,
    QUOTA_RETRY_AFTER,
    Admission,
    KeyPolicy,
    Rate,
    Reason,
)
from llmproxy.limits.bucket import EPSILON, refilled, remaining, seconds_to_full, take

LOCAL_LEASE_PREFIX = "m:"
"""Every lease this store issues starts with this, so a failover store knows where to settle."""

_SWEEP_EVERY = 4096


class Bucket:
    """A token bucket's level at ``updated_at``."""

    __slots__ = ("tokens", "updated_at")

    def __init__(self, tokens: float, updated_at: float) -> None:
        self.tokens = tokens
        self.updated_at = updated_at


def _set_level(bucket: Bucket | None, level: float, now: float) -> Bucket:
    """Store a bucket's new level; its clock never moves backwards."""
    if bucket is None:
        return Bucket(level, now)
    bucket.tokens = level
    if now > bucket.updated_at:
        bucket.updated_at = now
    return bucket


class KeyState:
    """One key's limit state: the two buckets (None until first taken from), leases in flight,
    quota used and reserved, and when it is idle again (equal to a fresh one)."""

    __slots__ = ("idle_at", "in_flight", "requests", "reserved", "tokens", "used")

    def __init__(self) -> None:
        self.requests: Bucket | None = None
        self.tokens: Bucket | None = None
        self.in_flight = 0
        self.used = 0
        self.reserved = 0
        self.idle_at = 0.0  # when every bucket is full again: the state can then be forgotten


class Hold:
    """What one admission holds until settled: ``tokens`` reserved from a bucket of ``tpm`` per
    minute (0: none), and ``quota`` reserved (-1: no quota)."""

    __slots__ = ("quota", "tokens", "tpm")

    def __init__(self, tpm: int, tokens: int, quota: int) -> None:
        self.tpm = tpm
        self.tokens = tokens
        self.quota = quota


def admit_state(
    state: KeyState, policy: KeyPolicy, reserve_tokens: int, now: float, lease: str | None
) -> tuple[Admission, Hold | None]:
    """Check every dimension of ``state`` first, then take from all of them — or from none.

    The one definition of a local admission: the memory store runs it on a key's object, the
    shared store on a key's row loaded from the daemon's table. ``lease`` names what an
    admission holds when the policy needs one (:attr:`KeyPolicy.needs_lease`). Returns the answer
    and, when admitted with a lease, what the lease holds.
    """
    if reserve_tokens < 0:
        reserve_tokens = 0
    reason: Reason | None = None
    wait = 0.0

    rate = policy.requests
    req_level = 0.0
    if rate is not None:
        bucket = state.requests
        if bucket is None:
            req_level = rate.burst
        else:
            req_level = refilled(bucket.tokens, bucket.updated_at, now, rate.per_second, rate.burst)
        if req_level + EPSILON < 1.0:
            reason, wait = "requests", (1.0 - req_level) / rate.per_second

    limit = policy.max_concurrent
    if reason is None and limit is not None and state.in_flight >= limit:
        reason, wait = "concurrency", CONCURRENCY_RETRY_AFTER

    tpm = policy.tokens_per_minute
    tok_level = 0.0
    if tpm is not None:
        tok_rate = tpm / 60.0
        tokens = state.tokens
        if tokens is None:
            tok_level = float(tpm)
        else:
            tok_level = refilled(tokens.tokens, tokens.updated_at, now, tok_rate, tpm)
        if reason is None and tok_level + EPSILON < reserve_tokens:
            reason = "tokens"
            wait = math.inf if reserve_tokens > tpm else (reserve_tokens - tok_level) / tok_rate

    total = policy.total_quota
    used = state.used if state.used > policy.used_quota else policy.used_quota
    if reason is None and total is not None and total - used - state.reserved < reserve_tokens:
        reason = "quota"
        wait = QUOTA_RETRY_AFTER if total - used >= reserve_tokens else math.inf

    if reason is not None:
        return _answer(False, reason, wait, None, rate, req_level, tpm, tok_level), None

    idle_at = now
    if rate is not None:
        req_level -= 1.0
        state.requests = _set_level(state.requests, req_level, now)
        idle_at = now + seconds_to_full(req_level, rate.per_second, rate.burst)
    hold: Hold | None = None
    if policy.needs_lease:
        reserved_tpm = 0
        if tpm is not None:
            reserved_tpm = reserve_tokens
            tok_level -= reserve_tokens
            state.tokens = _set_level(state.tokens, tok_level, now)
            idle_at = max(idle_at, now + seconds_to_full(tok_level, tpm / 60.0, tpm))
        quota = -1
        if total is not None:
            quota = reserve_tokens
            state.used = used
            state.reserved += reserve_tokens
        state.in_flight += 1
        hold = Hold(tpm or 0, reserved_tpm, quota)
    if idle_at > state.idle_at:
        state.idle_at = idle_at
    return _answer(True, None, 0.0, lease, rate, req_level, tpm, tok_level), hold


def settle_state(state: KeyState, hold: Hold, used_tokens: int, now: float) -> None:
    """Free the slot ``hold`` took and settle its reservations against what was used."""
    state.in_flight -= 1
    used_tokens = max(0, used_tokens)
    if hold.tokens and hold.tpm and state.tokens is not None:
        bucket, tpm, rate = state.tokens, hold.tpm, hold.tpm / 60.0
        level = refilled(bucket.tokens, bucket.updated_at, now, rate, tpm)
        level = min(float(tpm), level + hold.tokens - used_tokens)
        bucket.tokens = level
        if now > bucket.updated_at:
            bucket.updated_at = now
        state.idle_at = max(state.idle_at, now + seconds_to_full(level, rate, tpm))
    if hold.quota >= 0:
        state.reserved -= hold.quota
        state.used += used_tokens


def is_idle(state: KeyState, now: float) -> bool:
    """Equal to a fresh state (full buckets, nothing held or counted): safe to forget."""
    return state.in_flight == 0 and state.used == 0 and state.reserved == 0 and state.idle_at <= now


def take_global(bucket: Bucket | None, rate: Rate, now: float) -> tuple[Admission, Bucket]:
    """Take one token from the bucket all traffic shares (``None``: a full one)."""
    if bucket is None:
        bucket = Bucket(rate.burst, now)
    allowed, level, wait = take(
        bucket.tokens, bucket.updated_at, now, rate.per_second, rate.burst, 1
    )
    if allowed:
        bucket.tokens = level
        if now > bucket.updated_at:
            bucket.updated_at = now
    return (
        Admission(
            allowed=allowed,
            reason=None if allowed else "requests",
            retry_after=None if allowed else wait,
            requests_limit=rate.shown_limit,
            requests_remaining=remaining(level),
            requests_reset=seconds_to_full(level, rate.per_second, rate.burst),
        ),
        bucket,
    )


def _answer(
    allowed: bool,
    reason: Reason | None,
    wait: float,
    lease: str | None,
    rate: Rate | None,
    req_level: float,
    tpm: int | None,
    tok_level: float,
) -> Admission:
    return Admission(
        allowed=allowed,
        reason=reason,
        retry_after=None if allowed or wait == math.inf else wait,
        lease=lease,
        requests_limit=None if rate is None else rate.shown_limit,
        requests_remaining=None if rate is None else remaining(req_level),
        requests_reset=(
            None if rate is None else seconds_to_full(req_level, rate.per_second, rate.burst)
        ),
        tokens_limit=tpm,
        tokens_remaining=None if tpm is None else remaining(tok_level),
        tokens_reset=None if tpm is None else seconds_to_full(tok_level, tpm / 60.0, tpm),
    )


class MemoryLimitStore:
    """A :class:`~llmproxy.limits.admission.LimitStore` in this process's memory.

    ``clock`` is a monotonic time source in seconds (injectable for tests).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._global: Bucket | None = None
        self._keys: dict[str, KeyState] = {}
        self._leases: dict[str, tuple[KeyState, Hold]] = {}
        self._lease_ids = itertools.count(1)
        self._until_sweep = _SWEEP_EVERY

    async def check_global(self, rate: Rate) -> Admission:
        """Take one token from the bucket all traffic shares."""
        answer, self._global = take_global(self._global, rate, self._clock())
        return answer

    async def admit(self, key_id: str, policy: KeyPolicy, reserve_tokens: int) -> Admission:
        """Check every dimension first, then take from all of them — or from none."""
        now = self._clock()
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._sweep(now)
        state = self._keys.get(key_id)
        if state is None:
            state = self._keys[key_id] = KeyState()
        lease = f"{LOCAL_LEASE_PREFIX}{next(self._lease_ids)}" if policy.needs_lease else None
        answer, hold = admit_state(state, policy, reserve_tokens, now, lease)
        if hold is not None and lease is not None:
            self._leases[lease] = (state, hold)
        return answer

    async def settle(
        self, key_id: str, policy: KeyPolicy, lease: str, reserved_tokens: int, used_tokens: int
    ) -> None:
        """Free the slot and settle the reservations recorded for ``lease`` (once)."""
        record = self._leases.pop(lease, None)
        if record is None:  # settled already (at-least-once callers), or never issued here
            return
        settle_state(record[0], record[1], used_tokens, self._clock())

    async def quota_used(self, key_id: str) -> int:
        """Tokens counted against ``key_id``'s quota in this process."""
        state = self._keys.get(key_id)
        return 0 if state is None else state.used

    async def in_flight(self, key_id: str) -> int:
        """Leases of ``key_id`` not yet settled."""
        state = self._keys.get(key_id)
        return 0 if state is None else state.in_flight

    async def close(self) -> None:
        """Nothing to release: the state goes with the object."""

    def _sweep(self, now: float) -> None:
        """Forget keys whose state equals a fresh one (full buckets, nothing held or counted)."""
        self._until_sweep = _SWEEP_EVERY
        idle = [key_id for key_id, state in self._keys.items() if is_idle(state, now)]
        for key_id in idle:
            del self._keys[key_id]
