"""Limits shared by every gateway process through Redis: one Lua script per decision.

Each check-and-update is one ``EVALSHA`` (redis-py's registered scripts load themselves again
after a ``SCRIPT FLUSH`` or a failover), the clock is Redis's own, and every key has a TTL — see
:mod:`llmproxy.limits._wire` for the layout and :mod:`llmproxy.limits._lua` for the scripts::

    client = await pools.redis(config.rate_limit.redis)
    store = RedisLimitStore(client, prefix="llmproxy:limits:", timeout=0.5)

Every call is bounded by ``timeout``; a Redis that is down, slow or answering errors raises
:class:`~llmproxy.limits.admission.LimitsUnavailable` (what to do then is
:class:`~llmproxy.limits.failover.FailoverLimitStore`'s decision).

Slots are leases that expire after ``lease_ttl`` (``rate_limit.lease_ttl``, 30 s) unless renewed:
the store renews the leases it holds every third of that, so a long stream keeps its slot while a
gateway that dies mid-request (killed -9, its machine gone) frees its slots and quota reservations
within ``lease_ttl``. Two ambiguous cases are repaired in the
background, after the next call that reaches Redis: an admission that timed out or was cancelled
may still run on the server, so its lease is voided (freed if it ran, refused if it runs later);
a settle that could not reach Redis is retried (settling is idempotent per lease).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import uuid
from typing import TYPE_CHECKING, Any, NamedTuple

from llmproxy.limits import _lua, _wire
from llmproxy.limits.admission import Admission, KeyPolicy, LimitsUnavailable, Rate

if TYPE_CHECKING:  # redis is an extra; the client is passed in
    import redis.asyncio
    from redis.commands.core import AsyncScript

logger = logging.getLogger(__name__)

REDIS_LEASE_PREFIX = "r:"
"""Every lease this store issues starts with this (a memory store's start with ``m:``)."""

MARKER_TTL = 3600.0
"""How long a voided or expired lease is remembered, so a late admit is refused and a late
settle still counts its usage once (the markers are tiny; an hour covers any Redis outage)."""

QUOTA_TTL = 90 * 86400.0
"""Quota counters outlive any idle period worth remembering; after 90 idle days the key's own
``used_quota`` (kept up to date by usage billing) is the baseline again."""

_MAX_DEFERRED = 10_000


@functools.cache
def _redis_error() -> type[Exception]:
    """redis-py's base error, looked up only while an exception is being matched (redis is an
    extra, installed whenever a client exists)."""
    from redis.exceptions import RedisError

    return RedisError


class _Deferred(NamedTuple):
    """A settle (or a void of an abandoned admission) waiting for Redis to answer again."""

    key_id: str
    lease: str
    used_tokens: int
    void: bool


class RedisLimitStore:
    """A :class:`~llmproxy.limits.admission.LimitStore` in Redis, shared by every process.

    ``client`` must decode replies (``decode_responses=True``, as
    :meth:`~llmproxy.connections.ConnectionPools.redis` gives); it belongs to the caller and is
    not closed by :meth:`close`. ``prefix`` starts every key; ``timeout`` bounds each call in
    seconds; ``lease_ttl`` is how long an unsettled slot outlives its last renewal.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str,
        timeout: float,
        lease_ttl: float = 30.0,
    ) -> None:
        if timeout <= 0 or lease_ttl <= 0:
            raise ValueError("RedisLimitStore: timeout and lease_ttl must be positive")
        self.prefix = prefix
        self.timeout = timeout
        self.lease_ttl = lease_ttl
        self._client = client
        self._check_global = client.register_script(_lua.CHECK_GLOBAL)
        self._admit = client.register_script(_lua.ADMIT)
        self._settle = client.register_script(_lua.SETTLE)
        self._count = client.register_script(_lua.IN_FLIGHT)
        self._renew = client.register_script(_lua.RENEW)
        self._held: dict[str, str] = {}
        """Leases this store holds (lease → key id): renewed until settled or given up."""
        self._renewer: asyncio.Task[None] | None = None
        self._deferred: collections.deque[_Deferred] = collections.deque()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def deferred(self) -> int:
        """Settles and voids waiting for Redis to answer again."""
        return len(self._deferred)

    async def check_global(self, rate: Rate) -> Admission:
        """Take one token from ``{prefix}global``."""
        reply = await self._run(
            self._check_global,
            [_wire.global_key(self.prefix)],
            [repr(float(rate.per_second)), str(rate.burst)],
        )
        return self._decode(reply, "", rate)

    async def admit(self, key_id: str, policy: KeyPolicy, reserve_tokens: int) -> Admission:
        """Every dimension checked, then taken, in one script; a refusal takes nothing."""
        lease = REDIS_LEASE_PREFIX + uuid.uuid4().hex if policy.needs_lease else ""
        reserve_tokens = max(0, reserve_tokens)
        names = _wire.key_names(self.prefix, key_id)
        args = _wire.admit_args(
            lease,
            policy,
            reserve_tokens,
            lease_ttl=self.lease_ttl,
            quota_ttl=QUOTA_TTL,
            marker_ttl=MARKER_TTL,
        )
        try:
            reply = await self._run(self._admit, _wire.admit_keys(names), args)
        except (LimitsUnavailable, asyncio.CancelledError):
            # The script may have run (or may still run, if the request sits in a stalled
            # server's buffer): nobody will settle that lease, so void it once Redis answers.
            if lease:
                self._defer(_Deferred(key_id, lease, 0, void=True))
            raise
        admission = self._decode(reply, lease, policy.requests)
        if admission.allowed and lease:
            self._held[lease] = key_id
            if self._renewer is None and not self._closed:
                self._renewer = asyncio.get_running_loop().create_task(
                    self._renew_leases(), name="llmproxy.limits.renew"
                )
        return admission

    async def settle(
        self, key_id: str, policy: KeyPolicy, lease: str, reserved_tokens: int, used_tokens: int
    ) -> None:
        """Settle ``lease``; if Redis cannot be reached, keep it for a retry and raise.

        The script call is shielded: a caller cancelled mid-settle (its client went away) does
        not leave the slot held.
        """
        self._held.pop(lease, None)
        item = _Deferred(key_id, lease, max(0, used_tokens), void=False)
        if not await asyncio.shield(self._settle_or_defer(item)):
            raise LimitsUnavailable(
                f"redis limits: settle of lease {lease} deferred until Redis answers again"
            )

    def settle_later(self, key_id: str, lease: str, used_tokens: int) -> None:
        """Queue a settle without trying now (Redis is known to be down); it runs after the
        next call that reaches Redis."""
        self._held.pop(lease, None)
        self._defer(_Deferred(key_id, lease, max(0, used_tokens), void=False))

    async def quota_used(self, key_id: str) -> int:
        """The key's ``used`` quota counter in Redis (0 when there is none)."""
        value = await self._bounded(
            self._client.hget(_wire.key_names(self.prefix, key_id).quota, "used")
        )
        return int(value) if value else 0

    async def in_flight(self, key_id: str) -> int:
        """Leases of ``key_id`` that are neither settled nor expired."""
        count = await self._run(self._count, [_wire.key_names(self.prefix, key_id).leases], [])
        return int(count)

    async def close(self) -> None:
        """Give deferred settles one last bounded try; the client stays open (it is shared)."""
        self._closed = True
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
        with contextlib.suppress(LimitsUnavailable):
            await self._flush()
        if self._deferred:
            logger.warning(
                "redis limits: %d settles could not be delivered; their slots are freed when "
                "their leases expire (within %.0fs)",
                len(self._deferred),
                self.lease_ttl,
            )

    async def renew(self) -> int:
        """Push the expiry of every lease this store holds to ``lease_ttl`` from now (one script
        call per key); returns how many Redis still had. The renewer calls it every third of
        ``lease_ttl``."""
        by_key: dict[str, list[str]] = {}
        for lease, key_id in list(self._held.items()):
            by_key.setdefault(key_id, []).append(lease)
        renewed = 0
        ttl, keep = repr(float(self.lease_ttl)), repr(float(MARKER_TTL))
        for key_id, leases in by_key.items():
            names = _wire.key_names(self.prefix, key_id)
            reply = await self._run(self._renew, [names.leases, names.held], [ttl, keep, *leases])
            renewed += int(reply)
        return renewed

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                await self.renew()
            except LimitsUnavailable as exc:
                # A lease that expires meanwhile frees its slot early; its settle still counts
                # the usage once (the "late" marker), so nothing is lost but the slot's hold.
                logger.warning("redis limits: could not renew leases: %s", exc)

    async def _run(self, script: AsyncScript, keys: list[str], args: list[str]) -> Any:
        reply = await self._bounded(script(keys=keys, args=args))
        if self._deferred and not self._closed:
            self._start_flush()
        return reply

    async def _bounded(self, call: Any) -> Any:
        """``await call`` within ``timeout``, with every Redis fault as LimitsUnavailable.

        On Python 3.11 redis-py can swallow a cancellation that arrives just as a command
        completes (its ``asyncio.wait_for`` returns the result instead): the cancellation is
        raised again here, so a cancelled request does not carry on as if nothing happened.
        """
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            async with asyncio.timeout(self.timeout):
                reply = await call
            if task is not None and task.cancelling() > cancelling:
                raise asyncio.CancelledError
            return reply
        except TimeoutError:
            raise LimitsUnavailable(f"redis limits: no answer within {self.timeout:g}s") from None
        except _redis_error() as exc:
            raise LimitsUnavailable(f"redis limits: {type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise LimitsUnavailable(f"redis limits: {exc}") from None

    def _decode(self, reply: Any, lease: str, rate: Rate | None) -> Admission:
        try:
            return _wire.decode_admission(reply, lease, rate)
        except _wire.AbandonedAdmission:
            raise LimitsUnavailable("redis limits: the admission was abandoned") from None
        except (ValueError, TypeError) as exc:
            raise LimitsUnavailable(f"redis limits: unexpected script reply: {exc}") from None

    async def _settle_or_defer(self, item: _Deferred) -> bool:
        try:
            await self._call_settle(item)
        except LimitsUnavailable:
            self._defer(item)
            return False
        if self._deferred and not self._closed:
            self._start_flush()
        return True

    async def _call_settle(self, item: _Deferred) -> None:
        names = _wire.key_names(self.prefix, item.key_id)
        args = _wire.settle_args(
            item.lease,
            item.used_tokens,
            void=item.void,
            quota_ttl=QUOTA_TTL,
            marker_ttl=MARKER_TTL,
        )
        await self._bounded(self._settle(keys=_wire.settle_keys(names), args=args))

    def _defer(self, item: _Deferred) -> None:
        if len(self._deferred) >= _MAX_DEFERRED:
            # The oldest lease expires first anyway; losing its settle costs its usage count.
            lost = self._deferred.popleft()
            logger.warning("redis limits: too many deferred settles; dropped lease %s", lost.lease)
        self._deferred.append(item)

    def _start_flush(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_quietly())

    async def _flush_quietly(self) -> None:
        # Redis gone again: the next call that reaches it restarts the flush.
        with contextlib.suppress(LimitsUnavailable):
            await self._flush()

    async def _flush(self) -> None:
        while self._deferred:
            item = self._deferred.popleft()
            try:
                await self._call_settle(item)
            except BaseException:
                self._deferred.appendleft(item)
                raise
