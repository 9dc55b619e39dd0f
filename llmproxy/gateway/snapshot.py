"""What the request path reads of a config snapshot, and of the process that owns them.

The daemon builds the snapshot (:class:`llmproxy.daemon.runtime.Runtime`) and swaps it on a
reload; the request path only reads it. Stating what it reads as protocols keeps the
dependency pointing one way — the daemon knows the gateway, the gateway does not know the
daemon — and lists, in one place, everything a request can depend on.
"""

from __future__ import annotations

import random
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from llmproxy.auth.pipeline import AuthPipeline
from llmproxy.config.model import Config
from llmproxy.finish import Sink
from llmproxy.gateway.access_log import AccessLog
from llmproxy.gateway.body_read import BodyBudget
from llmproxy.gateway.client_address import ProxyTrust
from llmproxy.gateway.overload import LoopLag
from llmproxy.gateway.upstream import UpstreamClient
from llmproxy.limits import LimitStore, Rate
from llmproxy.metrics import GatewayMetrics
from llmproxy.notices import DaemonNotices
from llmproxy.pricing import PriceTable
from llmproxy.record.recorder import Recorder
from llmproxy.routing import Backend, RetryPolicy, Router
from llmproxy.routing.admission import AdmissionQueue
from llmproxy.routing.fleet import BackendFleet
from llmproxy.teams import TeamDirectory
from llmproxy.tracing import Tracer
from llmproxy.usage.sink import UsageSink
from llmproxy.usage.spendbook import SpendBook

if TYPE_CHECKING:  # redis is an extra
    from redis.asyncio import Redis


class Snapshot(Protocol):
    """One config turned into live objects, held by a request from its start to its end."""

    config: Config
    metrics: GatewayMetrics
    usage: UsageSink | None
    access_log: AccessLog | None
    recorder: Recorder | None
    router: Router
    fleet: BackendFleet
    admission: AdmissionQueue
    clients: dict[str, UpstreamClient]
    retry_policy: RetryPolicy
    rng: random.Random
    routes_by_prefix: bool
    prefix_chars: int
    auth: AuthPipeline | None
    auth_header_names: tuple[bytes, ...]
    auth_skip_paths: tuple[str, ...]
    secret_headers: frozenset[bytes]
    limits: LimitStore | None
    teams: TeamDirectory
    """The teams of the key store, by name (empty without one)."""
    response_redis: Redis | None
    """Where response ids' backends are shared (the limits' Redis), or None."""
    notices: DaemonNotices | None
    global_rate: Rate | None
    counts_tokens: bool
    apis_limited: bool
    """Some backend lists the APIs it speaks (``backends[].apis``)."""
    body_budget: BodyBudget
    proxy_trust: ProxyTrust
    proxy_paths: tuple[str, ...]
    proxy_path_set: frozenset[str]
    model_list_cache: tuple[float, tuple[str, ...]] | None
    finish_sinks: tuple[Sink, ...]
    prices: PriceTable
    spend: SpendBook
    loop_lag: LoopLag
    shed_lag: float
    shed_headers: tuple[tuple[bytes, bytes], ...]
    tracing: Tracer | None
    """Request traces while ``tracing.enabled``; None: tracing costs one check."""

    def count_fallback(self, primary: Backend) -> None:
        """A fallback target serves a request in ``primary``'s stead."""

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the request path (its end is waited for on close)."""


class Snapshots(Protocol):
    """The process's current snapshot, taken per request."""

    def acquire(self) -> Snapshot:
        """The snapshot a new request uses to its end; pair with :meth:`release`."""

    def release(self, snapshot: Snapshot) -> None:
        """A request that held ``snapshot`` finished."""

    async def open(self) -> None:
        """Start what the process runs (at the server's startup)."""

    async def close(self) -> None:
        """Stop it (at the server's shutdown)."""
