"""Where a request goes: backend state, balancer strategies, model routing, retries, health.

Everything on the request path here is pure and synchronous; only `HealthChecker` does I/O.
"""

from llmproxy.routing.backend import Backend
from llmproxy.routing.balancer import (
    Balancer,
    LatencyBased,
    LeastConnections,
    SmoothWeightedRoundRobin,
)
from llmproxy.routing.health import HealthChecker, ProbeStreak
from llmproxy.routing.retry import DEFAULT_RETRY_STATUSES, RetryPolicy
from llmproxy.routing.router import FallbackChain, Router
from llmproxy.routing.strategies import (
    STRATEGIES,
    Strategy,
    StrategySpec,
    make_balancer,
    strategy_spec,
)

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "STRATEGIES",
    "Backend",
    "Balancer",
    "FallbackChain",
    "HealthChecker",
    "LatencyBased",
    "LeastConnections",
    "ProbeStreak",
    "RetryPolicy",
    "Router",
    "SmoothWeightedRoundRobin",
    "Strategy",
    "StrategySpec",
    "make_balancer",
    "strategy_spec",
]
