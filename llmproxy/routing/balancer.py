"""Balancer strategies: given the backends that may take a request, choose one.

Every strategy is pure apart from its own small memory (rotation counters, smooth-WRR current
weights) and an injectable `random.Random`, so tests pin exact sequences. Filtering by model,
health, ejection, weight and retry exclusion is the router's job; a balancer only ranks what it is
handed, and returns None only for an empty candidate list.

A balancer keeps per-backend state keyed on `Backend` identity, so build a new one together with
each new set of backends (the router is rebuilt on config reload) rather than sharing one across
generations.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Protocol

from llmproxy.routing.affinity import two_of
from llmproxy.routing.backend import Backend


class Balancer(Protocol):
    """Chooses one backend from a non-empty, already filtered candidate list.

    ``key`` is the request's prompt-prefix key (`llmproxy.routing.affinity.prefix_key`) for the
    strategies that use one (``prefix_key`` in `llmproxy.routing.strategies`); the others ignore
    it.
    """

    def pick(self, candidates: Sequence[Backend], key: int | None = None) -> Backend | None:
        """Return the chosen candidate, or None only when `candidates` is empty."""
        ...


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin: exact weight shares, interleaved rather than bursty.

    Each pick adds every candidate's weight to its running `current`, takes the largest, and
    subtracts the candidates' total weight from the winner. Weights 5:1:1 give `a a b a c a a`
    instead of five a's in a row. Candidates missing from a call (unhealthy, excluded for a retry)
    simply keep their running value, which is what nginx does, and the shares among whoever is
    present stay exact. Weight-0 candidates are passed over while any candidate has a positive
    weight; if every candidate has weight 0 the picks rotate plainly.
    """

    __slots__ = ("_current", "_turn")

    def __init__(self) -> None:
        self._current: dict[Backend, int] = {}
        self._turn = 0

    def pick(self, candidates: Sequence[Backend], key: int | None = None) -> Backend | None:
        if not candidates:
            return None
        current = self._current
        total = 0
        best: Backend | None = None
        best_current = 0
        for backend in candidates:
            weight = backend.weight
            if weight <= 0:
                continue
            value = current.get(backend, 0) + weight
            current[backend] = value
            total += weight
            # Strictly greater, so the earliest candidate wins a tie, as in nginx.
            if best is None or value > best_current:
                best = backend
                best_current = value
        if best is None:
            turn = self._turn
            self._turn = turn + 1
            return candidates[turn % len(candidates)]
        current[best] = best_current - total
        return best


def _load(backend: Backend) -> float:
    """In-flight requests per unit of weight; weight 0 ranks last (it is only a fallback)."""
    if backend.weight <= 0:
        return math.inf
    return backend.in_flight / backend.weight


class LeastConnections:
    """Send to the backend with the fewest in-flight requests relative to its weight.

    With long, streaming LLM requests the in-flight count is a better load signal than request
    rate. Ties (for example every backend idle) rotate through the tied candidates, so an idle
    cluster does not pile a burst of requests onto the first backend in the list.
    """

    __slots__ = ("_turn",)

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, candidates: Sequence[Backend], key: int | None = None) -> Backend | None:
        best: Backend | None = None
        best_load = math.inf
        ties = 0
        for backend in candidates:
            load = _load(backend)
            if best is None or load < best_load:
                best = backend
                best_load = load
                ties = 1
            elif load == best_load:
                ties += 1
        if ties <= 1:
            return best
        skip = self._turn % ties
        self._turn += 1
        for backend in candidates:
            if _load(backend) == best_load:
                if skip == 0:
                    return backend
                skip -= 1
        raise AssertionError("unreachable: the tied candidates were counted above")


class LatencyBased:
    """Prefer backends that start responding sooner, by the power of two random choices.

    Each pick samples two distinct candidates and keeps the one with the lower cost
    `ttfb_ewma * (in_flight + 1)`: fast backends win, but a fast backend that is already busy
    loses to an idle slower one, and sampling two rather than scanning all avoids every gateway
    worker stampeding onto the single fastest backend.

    Unmeasured backends (no first byte seen yet) are explored first while idle. While busy they
    are compared by in-flight count alone, so a burst at startup spreads out instead of landing
    entirely on the backend we know nothing about. A small `explore` probability picks uniformly
    at random, so a backend that had one slow response keeps getting fresh samples and its EWMA
    can recover instead of being starved forever. Weights are not used by this strategy.
    """

    __slots__ = ("_explore", "_rng")

    def __init__(self, rng: random.Random | None = None, *, explore: float = 0.02) -> None:
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"latency_based: explore must be in [0, 1], got {explore}")
        self._rng = rng if rng is not None else random.Random()
        self._explore = explore

    def pick(self, candidates: Sequence[Backend], key: int | None = None) -> Backend | None:
        count = len(candidates)
        if count == 0:
            return None
        if count == 1:
            return candidates[0]
        for backend in candidates:
            if backend.ttfb_ewma is None and backend.in_flight == 0:
                return backend
        rng = self._rng
        if self._explore > 0.0 and rng.random() < self._explore:
            return candidates[rng.randrange(count)]
        a, b = two_of(candidates, rng)
        return a if _cheaper_or_equal(a, b) else b


def _cheaper_or_equal(a: Backend, b: Backend) -> bool:
    a_ewma = a.ttfb_ewma
    b_ewma = b.ttfb_ewma
    if a_ewma is None or b_ewma is None:
        # Without two measurements, load is the only fair comparison; unmeasured wins a tie so
        # that it gets measured.
        if a.in_flight != b.in_flight:
            return a.in_flight < b.in_flight
        return a_ewma is None
    return a_ewma * (a.in_flight + 1) <= b_ewma * (b.in_flight + 1)
