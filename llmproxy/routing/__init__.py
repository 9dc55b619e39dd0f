"""Where a request goes: backend state, balancer strategies, model routing, retries, health.

Everything on the request path here is pure and synchronous; only `HealthChecker` does I/O.
"""

from llmproxy.routing.backend import Backend
from llmproxy.routing.balancer import (
    STRATEGIES,
    Balancer,
    LatencyBased,
    LeastConnections,
    SmoothWeightedRoundRobin,
    make_balancer,
)
from llmproxy.routing.health import HealthChecker, ProbeStreak
from llmproxy.routing.retry import DEFAULT_RETRY_STATUSES, RetryPolicy
from llmproxy.routing.router import FallbackChain, Router

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
    "make_balancer",
]
