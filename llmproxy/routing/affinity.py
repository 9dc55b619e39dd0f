"""Fleet-aware choice: prefix affinity on a consistent-hash ring with bounded load, and load-aware
power of two choices. Pure: no I/O, no clock; the load signals are read from `Backend` fields that
the signal scraper and the request path keep up to date.

Why affinity: a vLLM replica that already holds a tenant's system prompt and earlier turns in its
prefix cache skips their prefill, so it answers that tenant's next turn much sooner. Requests
whose prompts start the same are hashed (`prefix_key`) onto a ring of virtual nodes; the first
backend clockwise from the key serves them, so the same prefix keeps landing on the same replica
and a replica joining or leaving moves only the keys next to it.

Why bounded load (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads"): a
popular prefix must not pile onto one replica. Walking clockwise, a backend is taken only while
its load is at most ``(1 + epsilon)`` times the average (plus one, so an idle fleet is not
refused) and it has no queue; otherwise the walk goes on to the next one, and when every backend
is over the bound the load-aware rule decides. The keys' homes are kept in a bounded LRU table
(see `PrefixAffinity`), so new keys are spread by count as well as by hash.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Iterator, Sequence
from typing import Final

from llmproxy.routing.backend import Backend
from llmproxy.routing.homes import DEFAULT_MAX_KEYS, HomeTable, LocalHomes

DEFAULT_VNODES: Final = 128
DEFAULT_EPSILON: Final = 0.25
KV_ROOM: Final = 0.8
"""KV cache use below which a backend without a queue still has room for a prefix it holds."""
_REBALANCE_AFTER: Final = 64.0
"""Recent requests (decayed) before demand moves any key: the first few are noise."""


def _point(text: bytes) -> int:
    """A stable 64-bit position on the ring (the same in every process and after a restart)."""
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def prefix_key(prefix: str) -> int:
    """The ring position of a prompt prefix (see `llmproxy.routing.prefix` for what it holds)."""
    return _point(prefix.encode("utf-8", "surrogatepass"))


def two_of(candidates: Sequence[Backend], rng: random.Random) -> tuple[Backend, Backend]:
    """Two distinct candidates drawn at random (at least two given): the power of two choices."""
    count = len(candidates)
    first = rng.randrange(count)
    second = rng.randrange(count - 1)
    if second >= first:
        second += 1
    return candidates[first], candidates[second]


def load_score(backend: Backend, slowness: float = 1.0) -> float:
    """How busy a backend is, lower is better: its queue first, then KV cache use, then work.

    Queued requests wait for a slot, so they cost the most time to first token; a full KV cache
    makes the server preempt or refuse; in-flight requests (the gateway's own count, fresh on
    every request, unlike a scrape), counting the one being placed, break the remaining ties.
    Weight scales the in-flight part, as in least connections, and ``slowness`` (how many times
    slower than the other candidate this backend generates tokens) multiplies it.
    """
    if backend.weight <= 0:
        return math.inf
    queued = max(backend.queue_waiting, 0)
    kv = backend.kv_cache_usage or 0.0
    return queued * 2.0 + kv + slowness * (backend.in_flight + 1) / backend.weight


class LoadAware:
    """Power of two random choices by `load_score`: two sampled candidates, the less loaded wins.

    Sampling two rather than scanning all keeps several gateway processes, each seeing slightly
    stale signals, from stampeding onto the one backend that looked emptiest.
    """

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()

    def pick(self, candidates: Sequence[Backend], key: int | None = None) -> Backend | None:
        count = len(candidates)
        if count == 0:
            return None
        if count == 1:
            return candidates[0]
        a, b = two_of(candidates, self._rng)
        # Generation speed scales the in-flight part: the same queue drains three times slower
        # on a backend whose tokens come three times slower.
        a_gap, b_gap = a.itl_ewma, b.itl_ewma
        if a_gap and b_gap:
            faster = min(a_gap, b_gap)
            a_cost = load_score(a, a_gap / faster)
            b_cost = load_score(b, b_gap / faster)
        else:
            a_cost, b_cost = load_score(a), load_score(b)
        return a if a_cost <= b_cost else b


class HashRing:
    """Backends on a ring of ``vnodes`` points each (weight multiplies a backend's points)."""

    __slots__ = ("_index", "_owners", "_points")

    def __init__(self, backends: Sequence[Backend], vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, got {vnodes}")
        entries: list[tuple[int, int]] = []
        self._owners: list[Backend] = list(backends)
        for index, backend in enumerate(self._owners):
            for replica in range(vnodes * max(backend.weight, 1)):
                entries.append((_point(f"{backend.name}#{replica}".encode()), index))
        entries.sort()
        self._points = [point for point, _ in entries]
        self._index = [index for _, index in entries]

    def __len__(self) -> int:
        return len(self._points)

    def shares(self) -> dict[str, float]:
        """The fraction of all prefix keys each backend owns (its arcs of the ring)."""
        points = self._points
        if not points:
            return {}
        span = float(1 << 64)
        owned: dict[str, float] = {b.name: 0.0 for b in self._owners}
        previous = points[-1] - (1 << 64)
        for point, index in zip(points, self._index, strict=True):
            owned[self._owners[index].name] += (point - previous) / span
            previous = point
        return owned

    def walk(self, key: int) -> Iterator[Backend]:
        """Every backend once, in ring order clockwise from ``key``."""
        points = self._points
        if not points:
            return
        start = bisect.bisect_left(points, key)
        seen: set[int] = set()
        total = len(self._owners)
        size = len(points)
        for step in range(size):
            index = self._index[(start + step) % size]
            if index not in seen:
                seen.add(index)
                yield self._owners[index]
                if len(seen) == total:
                    return


class PrefixAffinity:
    """`prefix_affinity`: each prompt prefix has a home backend, kept within bounded load.

    A new prefix key is homed on the first backend clockwise from it on the ring that holds
    fewer than its even share of the known keys (rounded up): hashing alone puts 3 of 8
    tenants on one replica as often as not, and a replica whose cache must hold three long
    system prompts evicts them in turn. The homes live in a bounded table
    (:mod:`llmproxy.routing.homes`: this process's, or the daemon's with several workers, so
    every worker sends a tenant to the same replica).

    Keys are not equal, though: one tenant may send half the traffic. Each key's demand (its
    requests, decayed with a half-life of `HEAT_HALF_LIFE` requests) is summed per home; when a
    request's home carries more than ``(1 + epsilon)`` × the average demand, its key moves to
    the least demanded allowed backend if it stays lighter than the home it left — so a light
    tenant leaves the replica a heavy one fills (whose cache churn would evict its prompt), and
    the heavy one, which would only make another replica the hot one, stays. The move costs the
    light key one uncached prefill; the condition makes moving it back impossible until demand
    itself changes, so keys do not ping-pong.

    A request goes to its key's home while the home is within the load bound (in-flight count
    at most ``(1 + epsilon)`` × the average unless it shows room of its own — free slots under
    its `max_in_flight`, or a KV cache with room —, no queue, not at `max_in_flight`: see
    `_fits`); otherwise it spills to the next backend on the ring that is, without moving the
    home, so the key comes back when the burst passes. When every backend is over the bound
    the load-aware rule picks. Candidates are the backends the router allows now (model,
    health, retry exclusion). Without a prefix key (no prompt) the load-aware rule picks too.
    """

    __slots__ = ("_backends", "_epsilon", "_fallback", "_ring", "_table")

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        epsilon: float = DEFAULT_EPSILON,
        vnodes: int = DEFAULT_VNODES,
        max_keys: int = DEFAULT_MAX_KEYS,
        rng: random.Random | None = None,
        table: HomeTable | None = None,
    ) -> None:
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self._backends = list(backends)
        self._ring = HashRing(backends, vnodes)
        self._epsilon = epsilon
        self._fallback = LoadAware(rng)
        self._table: HomeTable = (
            table if table is not None else LocalHomes(self._backends, max_keys)
        )

    @property
    def table(self) -> HomeTable:
        return self._table

    def shares(self) -> dict[str, float]:
        """The share of known prompt prefixes homed on each backend (the ring's, before any)."""
        table = self._table
        with table.transaction():
            total = table.keys()
            if not total:
                return self._ring.shares()
            return {b.name: table.owned(b) / total for b in self._backends}

    def demand(self) -> dict[str, float]:
        """Each backend's share of the recent requests of the prefixes homed on it."""
        table = self._table
        with table.transaction():
            total = table.total()
            return {b.name: table.demand(b) / total if total else 0.0 for b in self._backends}

    def pick(self, candidates: Sequence[Backend], key: int | None = None) -> Backend | None:
        if not candidates:
            return None
        if key is None or len(candidates) == 1:
            return self._fallback.pick(candidates)
        allowed = set(candidates)
        total_load = sum(b.in_flight for b in candidates)
        # +1: the request being placed; ceil so an idle or lightly loaded fleet always fits.
        bound = math.ceil((1.0 + self._epsilon) * (total_load + 1) / len(candidates))
        home = self._home(key, allowed)
        if home is not None and home in allowed and _fits(home, bound):
            return home
        for backend in self._ring.walk(key):
            if backend in allowed and _fits(backend, bound):
                return backend
        return self._fallback.pick(candidates)

    def _home(self, key: int, allowed: set[Backend]) -> Backend | None:
        """The key's home after counting this request, homing a new key on the first allowed
        backend with room for it, or moving it off a home that is in demand (`_rebalance`)."""
        table = self._table
        with table.transaction():
            home = table.lookup(key)
            if home is None:
                home = self._place(key, allowed)
                if home is None:
                    return None
                table.insert(key, home)
            table.count(key)
            if table.owned(home) > 1:
                home = self._rebalance(key, home, allowed)
            return home

    def _place(self, key: int, allowed: set[Backend]) -> Backend | None:
        """A new key's home: the first allowed backend clockwise with fewer than its even share
        of the keys (a cache holds so many prompts; epsilon is for load)."""
        table = self._table
        limit = math.ceil((table.keys() + 1) / max(len(self._backends), 1))
        for backend in self._ring.walk(key):
            if backend in allowed and table.owned(backend) < limit:
                return backend
        return None

    def _rebalance(self, key: int, home: Backend, allowed: set[Backend]) -> Backend:
        """Move ``key`` to the least demanded allowed backend when its home carries more than
        ``(1 + epsilon)`` × the average demand and the key, moved, leaves the target still
        lighter than the home (so the move lowers the hottest and cannot be undone by the same
        rule). Waits for `_REBALANCE_AFTER` requests of evidence. Returns the key's home."""
        table = self._table
        total = table.total()
        if total < _REBALANCE_AFTER * table.scale():
            return home
        demand = table.demand
        if demand(home) <= (1.0 + self._epsilon) * total / len(self._backends):
            return home
        target = min((b for b in allowed if b is not home), key=demand, default=None)
        heat = table.heat(key)
        if target is None or demand(target) + heat >= demand(home) - heat:
            return home
        table.move(key, target)
        return target


def _fits(backend: Backend, bound: int) -> bool:
    """Within the load bound: nothing queued, not at its own limit, and under ``bound`` in flight
    unless it shows room of its own: free slots under a declared `max_in_flight`, or else a KV
    cache below `KV_ROOM`.

    The average-based bound alone misjudges GPU servers at light load: with two requests in
    flight per replica it would send a prefix away from a replica with six free batch slots, and
    the request would pay a whole uncached prefill elsewhere. A backend with `max_in_flight` is
    judged by the gateway's own count against it (exact and current, where a scraped KV reading
    is up to an interval old and, read just after a burst, sends prefixes away from slots that
    have freed); one without, by its KV cache use; and either by its queue, which is what the
    request would actually wait on.
    """
    if backend.queue_waiting > 0 or backend.full_for():
        return False
    if backend.in_flight < bound or backend.max_in_flight > 0:
        return True
    kv = backend.kv_cache_usage
    return kv is not None and kv < KV_ROOM
