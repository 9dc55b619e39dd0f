"""The limits step of the request path: admission before forwarding, settlement after.

Admission is all-or-nothing (request bucket, concurrency slot, token reservation, quota); the
reservation is the request's ``max_tokens`` (or ``rate_limit.default_max_tokens``) plus an estimate
of its prompt. Whatever ends the request — completion, backend error, client disconnect, timeout —
:meth:`Settlement.settle` gives the slot back and settles the reservation to the real usage, once.

Refusals are 429s with an OpenAI-style body (``rate_limit_exceeded`` or ``insufficient_quota``)
and a ``Retry-After``; a limits store that cannot answer under ``redis_failure: closed`` is a 503,
never a 429. Admitted responses carry the ``x-ratelimit-*`` headers OpenAI clients understand.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass

from llmproxy.auth.keydata import KeyLimits
from llmproxy.config.model import PerKeyRateSpec
from llmproxy.errors import GatewayError
from llmproxy.gateway.snapshot import Snapshot as Runtime
from llmproxy.limits import Admission, KeyPolicy, LimitStore, LimitsUnavailable, Rate, rate_of

log = logging.getLogger("llmproxy.limits")

_REFUSALS = {
    "requests": ("rate_limit_exceeded", "rate limit reached for requests"),
    "concurrency": ("rate_limit_exceeded", "too many concurrent requests for this API key"),
    "tokens": ("rate_limit_exceeded", "rate limit reached for tokens per minute"),
    "quota": ("insufficient_quota", "this API key's remaining quota cannot cover the request"),
}


_OVERRIDES = frozenset({"rpm", "tpm", "max_concurrent"})


@functools.lru_cache(maxsize=16)
def _configured(spec: PerKeyRateSpec) -> KeyPolicy:
    """The per-key limits of the config alone (cached: specs are frozen and few)."""
    if not spec.enabled:
        return KeyPolicy()
    return KeyPolicy(
        requests=rate_of(spec),
        max_concurrent=spec.max_concurrent,
        tokens_per_minute=spec.tokens_per_minute,
    )


def key_policy(
    spec: PerKeyRateSpec, limits: KeyLimits, overrides: Mapping[str, object]
) -> KeyPolicy:
    """The limits of one key: config defaults, then the key's own data, then its Lua decision.

    The common case — no per-key override — costs a cached lookup and one small object.
    """
    base = _configured(spec)
    if (
        limits.rpm is not None
        or limits.tpm is not None
        or limits.max_concurrent is not None
        or (overrides and not _OVERRIDES.isdisjoint(overrides))
    ):
        return _overridden(base, spec, limits, overrides)
    if limits.total_quota is None:
        return base
    return KeyPolicy(
        requests=base.requests,
        max_concurrent=base.max_concurrent,
        tokens_per_minute=base.tokens_per_minute,
        total_quota=limits.total_quota,
        used_quota=limits.used_quota,
    )


def _overridden(
    base: KeyPolicy, spec: PerKeyRateSpec, limits: KeyLimits, overrides: Mapping[str, object]
) -> KeyPolicy:
    def pick(name: str, own: int | None, default: int | None) -> int | None:
        value = overrides.get(name, own)
        if value is None or value == "":
            return default
        try:
            return int(float(value))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            log.warning("ignoring a non-numeric %s override: %r", name, value)
            return default

    requests = base.requests
    rpm = pick("rpm", limits.rpm, None)
    if rpm is not None and rpm > 0:
        requests = Rate(per_second=rpm / 60.0, burst=spec.burst_size or max(1, math.ceil(rpm / 60)))
    return KeyPolicy(
        requests=requests,
        max_concurrent=pick("max_concurrent", limits.max_concurrent, base.max_concurrent) or None,
        tokens_per_minute=pick("tpm", limits.tpm, base.tokens_per_minute) or None,
        total_quota=limits.total_quota,
        used_quota=limits.used_quota,
    )


def refusal(admission: Admission) -> GatewayError:
    """The 429 for a refused admission, with ``Retry-After`` and the limit headers."""
    code, message = _REFUSALS[admission.reason or "requests"]
    headers = list(limit_headers(admission))
    if admission.retry_after is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(admission.retry_after))).encode()))
    return GatewayError(429, message, code, headers=tuple(headers))


def unavailable() -> GatewayError:
    """The 503 for a limits store that cannot answer while ``redis_failure`` is ``closed``."""
    return GatewayError(
        503, "rate limiting is unavailable (its Redis cannot be reached)", "limits_unavailable"
    )


def limit_headers(admission: Admission) -> tuple[tuple[bytes, bytes], ...]:
    """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for one admission."""
    a = admission
    headers: list[tuple[bytes, bytes]] = []
    if a.requests_limit is not None:
        headers.append((b"x-ratelimit-limit-requests", b"%d" % a.requests_limit))
        if a.requests_remaining is not None:
            headers.append(
                (b"x-ratelimit-remaining-requests", b"%d" % max(0, a.requests_remaining))
            )
        if a.requests_reset is not None:
            headers.append((b"x-ratelimit-reset-requests", _duration(a.requests_reset)))
    if a.tokens_limit is not None:
        headers.append((b"x-ratelimit-limit-tokens", b"%d" % a.tokens_limit))
        if a.tokens_remaining is not None:
            headers.append((b"x-ratelimit-remaining-tokens", b"%d" % max(0, a.tokens_remaining)))
        if a.tokens_reset is not None:
            headers.append((b"x-ratelimit-reset-tokens", _duration(a.tokens_reset)))
    return tuple(headers)


def _duration(seconds: float) -> bytes:
    """OpenAI writes resets as durations: ``1s``, ``6m0s``, ``120ms``."""
    if seconds < 1:
        return b"%dms" % max(0, round(seconds * 1000))
    if seconds < 60:
        return b"%.3gs" % seconds
    return b"%dm%ds" % divmod(round(seconds), 60)


async def _ask(runtime: Runtime, question: Awaitable[Admission]) -> Admission:
    """The store's admission, or the 429 / 503 (counted) when it refuses or cannot answer."""
    try:
        admission = await question
    except LimitsUnavailable:
        runtime.metrics.limit_rejection("unavailable")
        raise unavailable() from None
    if not admission.allowed:
        runtime.metrics.limit_rejection(admission.reason or "requests")
        raise refusal(admission)
    return admission


async def check_global(runtime: Runtime, store: LimitStore, rate: Rate) -> None:
    """The global bucket: raises the 429 (or the 503) when it is empty."""
    await _ask(runtime, store.check_global(rate))


@dataclass(slots=True)
class Settlement:
    """An admitted request's slot and reservation, to be settled exactly once."""

    store: LimitStore
    key_id: str
    policy: KeyPolicy
    lease: str | None
    reserved: int
    headers: tuple[tuple[bytes, bytes], ...]
    settled: bool = False

    def settle(self, runtime: Runtime, used_tokens: int) -> None:
        """Give back the slot and settle to ``used_tokens``, off the request's path.

        Runs as its own task so that a request cancelled by its client still settles, and the
        response is not held up by a Redis round trip.
        """
        if self.settled or self.lease is None:
            return
        self.settled = True
        runtime.background(self._settle(used_tokens))

    async def _settle(self, used_tokens: int) -> None:
        assert self.lease is not None
        try:
            await self.store.settle(
                self.key_id, self.policy, self.lease, self.reserved, used_tokens
            )
        except Exception:  # a lost settle leaks a slot until its lease expires: say so loudly
            log.exception("settling the limits of key %s failed", self.key_id)


async def admit(
    runtime: Runtime, key_id: str, policy: KeyPolicy, reserve_tokens: int
) -> Settlement:
    """Admit one request of ``key_id`` or raise the 429 / 503."""
    store = runtime.limits
    assert store is not None
    admission = await _ask(runtime, store.admit(key_id, policy, reserve_tokens))
    return Settlement(
        store=store,
        key_id=key_id,
        policy=policy,
        lease=admission.lease,
        reserved=reserve_tokens,
        headers=limit_headers(admission),
    )
