"""The limits step of the request path: admission before forwarding, settlement after.

A request is admitted against each of its limits (:class:`Limit`) — its key's, then its team's
(:func:`limits_of`) — and each admission is all-or-nothing (request bucket, concurrency slot,
token reservation, quota); so is the whole: when one refuses, those already granted are given back
(settled with nothing used). The reservation is the request's ``max_tokens`` (or
``rate_limit.default_max_tokens``) plus an estimate of its prompt. Whatever ends the request —
completion, backend error, client disconnect, timeout — :meth:`Settlement.settle` gives every slot
back and settles every reservation to the real usage, once.

The stricter limit wins by construction (every one must admit); the ``x-ratelimit-*`` headers show,
per dimension, the admission with the least remaining.

Refusals are 429s with an OpenAI-style body (``rate_limit_exceeded`` or ``insufficient_quota``)
and a ``Retry-After``; a limits store that cannot answer under ``redis_failure: closed`` is a 503,
never a 429. Admitted responses carry the ``x-ratelimit-*`` headers OpenAI clients understand.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import math
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass

from llmproxy.auth.keydata import KeyLimits
from llmproxy.auth.pipeline import Identity
from llmproxy.budgets import Budget, ScopeKind, day_of, scope
from llmproxy.config.model import PerKeyRateSpec
from llmproxy.errors import GatewayError
from llmproxy.gateway.snapshot import Snapshot as Runtime
from llmproxy.limits import (
    Admission,
    KeyPolicy,
    LimitStore,
    LimitsUnavailable,
    Rate,
    rate_of,
    requests_per_minute,
)
from llmproxy.pricing import NANOS
from llmproxy.teams import Team, TeamDirectory

log = logging.getLogger("llmproxy.limits")

_REFUSALS = {
    "requests": ("rate_limit_exceeded", "rate limit reached for requests"),
    "concurrency": ("rate_limit_exceeded", "too many concurrent requests for this API key"),
    "tokens": ("rate_limit_exceeded", "rate limit reached for tokens per minute"),
    "quota": ("insufficient_quota", "this API key's remaining quota cannot cover the request"),
}
_TEAM_REFUSALS = {
    "requests": "rate limit reached for requests of this key's team `{}`",
    "concurrency": "too many concurrent requests for this key's team `{}`",
    "tokens": "rate limit reached for tokens per minute of this key's team `{}`",
    "quota": "the remaining quota of this key's team `{}` cannot cover the request",
}


_OVERRIDES = frozenset({"rpm", "burst", "tpm", "max_concurrent"})


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
        or limits.burst is not None
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
    """A key's own limits over the config's. Its request bucket: its ``rpm`` (or its script's)
    as a per-minute limit, bursting by its ``burst`` (or its script's), else
    ``per_key.burst_size``, else the minute's count; a ``burst`` alone resizes the configured
    rate's bucket."""

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
    burst = pick("burst", limits.burst, None)
    rpm = pick("rpm", limits.rpm, None)
    if burst is not None and burst <= 0:
        burst = None
    if rpm is not None and rpm > 0:
        requests = requests_per_minute(rpm, burst or spec.burst_size)
    elif requests is not None and burst is not None:
        requests = dataclasses.replace(requests, burst=burst)
    return KeyPolicy(
        requests=requests,
        max_concurrent=pick("max_concurrent", limits.max_concurrent, base.max_concurrent) or None,
        tokens_per_minute=pick("tpm", limits.tpm, base.tokens_per_minute) or None,
        total_quota=limits.total_quota,
        used_quota=limits.used_quota,
    )


@functools.lru_cache(maxsize=256)
def team_policy(spec: PerKeyRateSpec, team: Team) -> KeyPolicy:
    """A team's limits as one policy of the limit store: its rpm is a per-minute limit that
    bursts like a key's own (``per_key.burst_size``, else the minute's count); its quota counts
    from the ``used_quota`` the store wrote back. Cached: a team is frozen and only a reload of
    the directory makes a new one."""
    return KeyPolicy(
        requests=None if team.rpm is None else requests_per_minute(team.rpm, spec.burst_size),
        max_concurrent=team.max_concurrent,
        tokens_per_minute=team.tpm,
        total_quota=team.total_quota,
        used_quota=team.used_quota,
    )


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit a request is admitted against: its id in the limit store and its policy."""

    limit_id: str
    policy: KeyPolicy
    team: str = ""
    """The team whose limit this is ("" for the key's own): its refusal names it."""
    budget: BudgetLimit | None = None
    """A budget in money: reserved and settled in nano-units of cost, not in tokens."""


@dataclass(frozen=True, slots=True)
class BudgetLimit:
    """What a budget's refusal says and how long its client should wait."""

    kind: ScopeKind
    label: str
    """The team's name, or the key's."""
    budget: Budget
    currency: str
    ends: float | None
    """When the period ends (None: a total budget never resets)."""
    reserve: int
    """Nano-units this request reserves: its cost at its most (prompt and ``max_tokens``)."""
    spent: int = 0
    """Nano-units spent this period by the usage store's last count (the admission's floor)."""

    def refusal(self, admission: Admission, now: float) -> GatewayError:
        """The 429 ``budget_exceeded``. ``Retry-After`` says when waiting helps: the period's
        end for a spent budget, a second while requests in flight hold the rest (they may settle
        lower); none when only a smaller request could pass (a lower ``max_tokens``) or for a
        total budget."""
        whose = f"this key's team `{self.label}`" if self.kind == "team" else "this API key"
        budget = f"{_money(self.budget.amount)} {self.currency} " + (
            "in total" if self.budget.period == "total" else self.budget.period
        )
        total = round(self.budget.amount * NANOS)
        most = f"{_money(self.reserve / NANOS)} {self.currency}"
        wait: float | None = None
        if self.reserve > total:
            message = (
                f"this request may cost up to {most}, more than the whole budget of {whose} "
                f"({budget}); lower max_tokens"
            )
        elif admission.retry_after is not None:
            message = (
                f"the budget of {whose} ({budget}) left cannot cover the request (up to {most}) "
                "while its requests in flight hold the rest"
            )
            wait = admission.retry_after
        elif self.spent + self.reserve > total and self.spent < total:
            left = f"{_money((total - self.spent) / NANOS)} {self.currency}"
            message = (
                f"the budget of {whose} ({budget}) has {left} left, less than this request may "
                f"cost (up to {most}); lower max_tokens"
            )
        else:
            message = f"the budget of {whose} ({budget}) is spent"
            if self.ends is not None:
                message += f"; it renews at {_iso(self.ends)}"
                wait = self.ends - now
        headers: tuple[tuple[bytes, bytes], ...] = ()
        if wait is not None:
            headers = ((b"retry-after", str(max(1, math.ceil(wait))).encode()),)
        return GatewayError(
            429, message, "budget_exceeded", error_type="insufficient_quota", headers=headers
        )


def _money(value: float) -> str:
    """``100.00``, but ``0.006`` rather than ``0.01``: an amount as precise as it was given."""
    return f"{value:,.2f}" if round(value, 2) == value else f"{value:,.6g}"


def _iso(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


BudgetOwner = tuple[ScopeKind, str, str, Budget]
"""Whose budget (``key`` or ``team``), their id or name, a name for people, and the budget."""


def budgets_of(identity: Identity, teams: TeamDirectory) -> list[BudgetOwner]:
    """The budgets ``identity``'s requests are charged to: its key's own, then its team's."""
    owners: list[BudgetOwner] = []
    if identity.budget is not None:
        owners.append(("key", identity.key_id, identity.name, identity.budget))
    if identity.team:
        team = teams.get(identity.team)
        if team is not None and team.budget is not None:
            owners.append(("team", team.name, team.name, team.budget))
    return owners


async def budget_limits(
    runtime: Runtime, owners: Sequence[BudgetOwner], reserve_nanos: int
) -> list[Limit]:
    """The budgets of ``owners`` (:func:`budgets_of`) as limits of the limit store in
    nano-units: the budget is the quota, the spend the usage store counted this period its
    floor (:class:`~llmproxy.usage.spendbook.SpendBook`), ``reserve_nanos`` the reservation. A
    period is part of the limit's id, so a new period starts from nothing."""
    limits: list[Limit] = []
    currency = runtime.config.pricing_currency
    for kind, name, label, budget in owners:
        where = scope(kind, name)
        spent, start, end = await runtime.spend.spent(where, label, budget)
        policy = KeyPolicy(total_quota=round(budget.amount * NANOS), used_quota=spent)
        limits.append(
            Limit(
                f"{BUDGET_PREFIX}{where}:{day_of(start)}",
                policy,
                budget=BudgetLimit(kind, label, budget, currency, end, reserve_nanos, spent),
            )
        )
    return limits


BUDGET_PREFIX = "budget:"
"""Budgets' ids in the limit store: ``budget:key:<id>:<day>``, ``budget:team:<name>:<day>``
(the UTC day the period starts on)."""


def limits_of(spec: PerKeyRateSpec, identity: Identity, teams: TeamDirectory) -> list[Limit]:
    """The limits of ``identity``'s request, key first: the key's policy (config defaults, the
    key's data, its Lua decision), then its team's when the team has limits. A team the
    directory does not know (a static key naming none) limits nothing."""
    limits: list[Limit] = []
    policy = key_policy(spec, identity.limits, identity.metadata)
    if policy.requests is not None or policy.needs_lease:
        limits.append(Limit(identity.key_id, policy))
    if identity.team:
        team = teams.get(identity.team)
        if team is not None and team.limited:
            limits.append(Limit(team.limit_id, team_policy(spec, team), team.name))
    return limits


def refusal(admission: Admission, team: str = "") -> GatewayError:
    """The 429 for a refused admission, with ``Retry-After`` and the limit headers; ``team``
    names the team whose limit refused ("" for the key's own)."""
    code, message = _REFUSALS[admission.reason or "requests"]
    if team:
        message = _TEAM_REFUSALS[admission.reason or "requests"].format(team)
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


async def _ask(
    runtime: Runtime, question: Awaitable[Admission], limit: Limit | None = None
) -> Admission:
    """The store's admission, or the 429 / 503 (counted) when it refuses or cannot answer."""
    try:
        admission = await question
    except LimitsUnavailable:
        runtime.metrics.limit_rejection("unavailable")
        raise unavailable() from None
    if not admission.allowed:
        if limit is not None and limit.budget is not None:
            runtime.metrics.limit_rejection("budget")
            raise limit.budget.refusal(admission, time.time())
        runtime.metrics.limit_rejection(admission.reason or "requests")
        raise refusal(admission, limit.team if limit is not None else "")
    return admission


def stricter(admissions: Sequence[Admission]) -> Admission:
    """One admission for the headers: per dimension (requests, tokens), the one with the least
    remaining — what the client can really still send."""
    requests = [a for a in admissions if a.requests_limit is not None]
    tokens = [a for a in admissions if a.tokens_limit is not None]
    merged = Admission(allowed=True)
    if requests:
        a = min(requests, key=lambda a: _remaining(a.requests_remaining))
        merged = dataclasses.replace(
            merged,
            requests_limit=a.requests_limit,
            requests_remaining=a.requests_remaining,
            requests_reset=a.requests_reset,
        )
    if tokens:
        a = min(tokens, key=lambda a: _remaining(a.tokens_remaining))
        merged = dataclasses.replace(
            merged,
            tokens_limit=a.tokens_limit,
            tokens_remaining=a.tokens_remaining,
            tokens_reset=a.tokens_reset,
        )
    return merged


def _remaining(value: int | None) -> float:
    return math.inf if value is None else value


async def check_global(runtime: Runtime, store: LimitStore, rate: Rate) -> None:
    """The global bucket: raises the 429 (or the 503) when it is empty."""
    await _ask(runtime, store.check_global(rate))


@dataclass(slots=True)
class Hold:
    """What one admission holds until the request ends: a slot and reservations of one limit."""

    limit_id: str
    policy: KeyPolicy
    lease: str | None
    """None: nothing to settle (a request rate only, or an outage under ``open``)."""
    reserved: int
    money: bool = False
    """A budget's hold: reserved and settled in nano-units of cost."""


@dataclass(slots=True)
class Settlement:
    """An admitted request's holds (its key's, its team's...), to be settled exactly once."""

    store: LimitStore
    holds: list[Hold]
    headers: tuple[tuple[bytes, bytes], ...]
    settled: bool = False

    def lease_of(self, limit_id: str) -> str:
        """The lease held on ``limit_id`` ("" for none): the usage journal keeps the key's, so
        a request a crash cut off is settled against it."""
        for hold in self.holds:
            if hold.limit_id == limit_id:
                return hold.lease or ""
        return ""

    def settle(self, runtime: Runtime, used_tokens: int, cost_nanos: int = 0) -> None:
        """Give back every slot and settle every reservation to ``used_tokens`` (a budget's:
        to ``cost_nanos``), off the request's path.

        Runs as its own task so that a request cancelled by its client still settles, and the
        response is not held up by a Redis round trip.
        """
        if self.settled:
            return
        self.settled = True
        if any(hold.lease is not None for hold in self.holds):
            runtime.background(self._settle(used_tokens, cost_nanos))

    async def _settle(self, used_tokens: int, cost_nanos: int) -> None:
        for hold in self.holds:
            if hold.lease is None:
                continue
            used = cost_nanos if hold.money else used_tokens
            try:
                await self.store.settle(hold.limit_id, hold.policy, hold.lease, hold.reserved, used)
            except Exception:  # a lost settle leaks a slot until its lease expires: say so
                log.exception("settling the limits of %s failed", hold.limit_id)


async def admit(runtime: Runtime, limits: Sequence[Limit], reserve_tokens: int) -> Settlement:
    """Admit one request against every one of ``limits``, in order, or raise the 429 / 503 of
    the first that refuses — after giving back what the others granted (all or nothing)."""
    store = runtime.limits
    assert store is not None
    settlement = Settlement(store=store, holds=[], headers=())
    admissions: list[Admission] = []
    try:
        for limit in limits:
            budget = limit.budget
            reserve = reserve_tokens if budget is None else budget.reserve
            admission = await _ask(
                runtime, store.admit(limit.limit_id, limit.policy, reserve), limit
            )
            if budget is None:
                admissions.append(admission)  # a budget has no x-ratelimit header
            settlement.holds.append(
                Hold(limit.limit_id, limit.policy, admission.lease, reserve, budget is not None)
            )
    except BaseException:
        settlement.settle(runtime, 0)  # the holds granted so far, as if nothing was used
        raise
    if admissions:
        settlement.headers = limit_headers(
            admissions[0] if len(admissions) == 1 else stricter(admissions)
        )
    return settlement
