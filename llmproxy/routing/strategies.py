"""The routing strategies by name: one table that config, runtime, docs and the bench read.

Each :class:`Strategy` maps to a :class:`StrategySpec` saying how to build its balancer and what
it needs from the rest of the gateway: whether the backends' load signals must be scraped
(``load_signals``) and whether the request's prompt-prefix key must be computed
(``prefix_key``). A new strategy is one enum member and one table entry; nothing else branches on
a strategy's name.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from llmproxy.routing.affinity import DEFAULT_EPSILON, LoadAware, PrefixAffinity
from llmproxy.routing.backend import Backend
from llmproxy.routing.balancer import (
    Balancer,
    LatencyBased,
    LeastConnections,
    SmoothWeightedRoundRobin,
)
from llmproxy.routing.shared_homes import HomesFile, SharedHomes


class Strategy(StrEnum):
    """The value of ``routing.load_balance_strategy``."""

    ROUND_ROBIN = "round_robin"
    LEAST_CONNECTIONS = "least_connections"
    LATENCY_BASED = "latency_based"
    LOAD_AWARE = "load_aware"
    PREFIX_AFFINITY = "prefix_affinity"


@dataclass(frozen=True, slots=True)
class BalancerInputs:
    """What a strategy's balancer may be built from."""

    backends: Sequence[Backend]
    """Every configured backend, for strategies with a fixed layout (the hash ring)."""
    rng: random.Random | None
    """Randomness, pinned by tests; None in production."""
    epsilon: float
    """``routing.prefix_affinity.epsilon``: how far over the average load a prefix's home may go."""
    homes: HomesFile | None = None
    """The daemon's table of prefix homes when it has several workers (None: this process's)."""


@dataclass(frozen=True, slots=True)
class StrategySpec:
    """One strategy: how it is built, what it needs, and how the docs describe it."""

    build: Callable[[BalancerInputs], Balancer]
    summary: str
    """One phrase for the configuration reference."""
    load_signals: bool = False
    """Reads the backends' queue and KV cache use, so the daemon scrapes their metrics."""
    prefix_key: bool = False
    """Routes by the request's prompt prefix, so the gateway computes its key."""


STRATEGIES: Final[Mapping[Strategy, StrategySpec]] = MappingProxyType(
    {
        Strategy.ROUND_ROBIN: StrategySpec(
            lambda _: SmoothWeightedRoundRobin(), "smooth weighted round robin, as nginx"
        ),
        Strategy.LEAST_CONNECTIONS: StrategySpec(
            lambda _: LeastConnections(), "fewest requests in flight per unit of weight"
        ),
        Strategy.LATENCY_BASED: StrategySpec(
            lambda inputs: LatencyBased(inputs.rng), "lowest recent time to first byte"
        ),
        Strategy.LOAD_AWARE: StrategySpec(
            lambda inputs: LoadAware(inputs.rng),
            "least loaded by the backends' own queue and KV cache use",
            load_signals=True,
        ),
        Strategy.PREFIX_AFFINITY: StrategySpec(
            lambda inputs: PrefixAffinity(
                inputs.backends,
                epsilon=inputs.epsilon,
                rng=inputs.rng,
                table=None if inputs.homes is None else SharedHomes(inputs.homes, inputs.backends),
            ),
            "the backend that holds the prompt's prefix in its cache, within bounded load",
            load_signals=True,
            prefix_key=True,
        ),
    }
)


def strategy_spec(name: str) -> StrategySpec:
    """The spec of the strategy called ``name``; a ValueError naming the choices otherwise."""
    try:
        return STRATEGIES[Strategy(name)]
    except ValueError:
        choices = ", ".join(STRATEGIES)
        raise ValueError(f"unknown routing strategy {name!r}; use one of {choices}") from None


def make_balancer(
    strategy: str,
    rng: random.Random | None = None,
    *,
    backends: Sequence[Backend] = (),
    epsilon: float = DEFAULT_EPSILON,
) -> Balancer:
    """Build the balancer of ``strategy`` (``routing.load_balance_strategy``).

    ``rng`` makes randomised strategies reproducible in tests; production passes nothing.
    ``backends`` (all of them, for the hash ring) and ``epsilon`` are for `prefix_affinity`.
    """
    return strategy_spec(strategy).build(BalancerInputs(backends, rng, epsilon))


def strategy_reference() -> str:
    """The strategies as the configuration reference lists them."""
    return "; ".join(f"`{name}`: {spec.summary}" for name, spec in STRATEGIES.items())
