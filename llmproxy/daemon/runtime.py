"""The runtime snapshot: everything one request needs, built from one config, never mutated.

A request takes the current snapshot once (:meth:`RuntimeState.acquire`) and keeps it to the end.
A reload builds a whole new :class:`Runtime` off the hot path and swaps one reference; the old one
is closed when the last request that holds it finishes. Backend counters (in-flight, latency,
health) live in the snapshot's :class:`~llmproxy.routing.Backend` objects.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aiohttp
from prometheus_client import CollectorRegistry

from llmproxy.auth.build import AuthSetupError, build_pipeline
from llmproxy.auth.extract import header_order
from llmproxy.auth.lua import LuaError, LuaSandbox
from llmproxy.auth.pipeline import AuthPipeline
from llmproxy.auth.providers.builtin import BuiltinProvider
from llmproxy.auth.quota import quota_sink
from llmproxy.config.model import BackendConfig, Config, HealthCheckConfig
from llmproxy.connections import ConnectionPools
from llmproxy.extras import require_for
from llmproxy.finish import Sink
from llmproxy.gateway.access_log import AccessLog
from llmproxy.gateway.body_read import BodyBudget
from llmproxy.gateway.client_address import ProxyTrust
from llmproxy.gateway.overload import LoopLag
from llmproxy.gateway.snapshot import Snapshot
from llmproxy.gateway.upstream import UpstreamClient
from llmproxy.limits import KeyPolicy, LimitStore, LimitsUnavailable, Rate, build_store, rate_of
from llmproxy.limits.redis import REDIS_LEASE_PREFIX
from llmproxy.limits.shared import SharedLimits
from llmproxy.metrics import GatewayMetrics
from llmproxy.notices import DaemonNotices, Notice
from llmproxy.pricing import PriceTable
from llmproxy.record.finish import recording_sink
from llmproxy.record.recorder import Recorder
from llmproxy.routing import Backend, HealthChecker, RetryPolicy, Router, strategy_spec
from llmproxy.routing.fleet import BackendFleet, BackendSettings
from llmproxy.routing.health import Probe
from llmproxy.routing.signals import SignalScraper
from llmproxy.routing.strategies import BalancerInputs
from llmproxy.teams import TeamDirectory, TeamIndex
from llmproxy.tracing import TRACE_HEADERS, TraceExport, Tracer
from llmproxy.usage.alerts import BudgetAlert
from llmproxy.usage.finish import usage_sink
from llmproxy.usage.rows import Recovered
from llmproxy.usage.sink import UsageSink
from llmproxy.usage.spendbook import SpendBook

if TYPE_CHECKING:  # redis is an extra; the client comes from the pools
    from redis.asyncio import Redis

log = logging.getLogger("llmproxy.daemon")

# Always treated as carrying the client's key, whatever ``auth.header_names`` says.
_ALWAYS_SECRET = frozenset({b"authorization", b"x-api-key", b"proxy-authorization"})


# Strategies that read the backends' own load: their scrape is on whatever load_signals says.

USAGE_SYNC_INTERVAL = 1.0
"""Seconds between two copies of the usage sink's counters into the metrics."""

# A placeholder until RuntimeState adopts the snapshot; its own registry keeps it out of /metrics.
_NO_METRICS = GatewayMetrics(CollectorRegistry())
_NO_SPEND = SpendBook(None)
"""A snapshot's stand-in until the process hands it its own."""


class Runtime:
    """One immutable configuration turned into live objects: router, clients, health checks."""

    def __init__(
        self,
        config: Config,
        *,
        base_dir: Path | None = None,
        rng: random.Random | None = None,
        fleet: BackendFleet | None = None,
        daemon_limits: SharedLimits | None = None,
        notices: DaemonNotices | None = None,
    ) -> None:
        """Build every object of the snapshot; raises on anything a bad config breaks.

        ``base_dir`` is where relative paths in the config (Lua files, the key store) live: the
        config file's directory, or the working directory. ``fleet`` is the process's backends
        (a reload passes the current one); without it the snapshot is active at once.
        ``daemon_limits`` is the daemon's limit table when it has several workers: in-memory
        limits are then decided on it, for the whole daemon; ``notices`` its counters of changes
        every worker acts on before its next request.
        """
        require_for(config)  # a driver the config needs and this install lacks, named at once
        self.config = config
        self.base_dir = base_dir or Path.cwd()
        self.rng = rng or random.Random()
        self.backend_settings = tuple(
            BackendSettings(
                weight=b.weight,
                models=frozenset(b.models) or None,
                max_in_flight=b.max_in_flight,
                send_priority=b.send_priority,
                apis=frozenset(b.apis) or None,
            )
            for b in config.backends
        )
        # The process's backends where this process has them (live state is theirs, not this
        # snapshot's); a runtime built on its own gets a fleet of its own.
        shared = fleet is not None
        self.fleet = fleet if fleet is not None else BackendFleet()
        self.backends = self.fleet.backends_for(
            [
                ((b.display_name, b.url), settings)
                for b, settings in zip(config.backends, self.backend_settings, strict=True)
            ]
        )
        routing = config.routing
        self.strategy = strategy_spec(routing.load_balance_strategy)
        self.routes_by_prefix = self.strategy.prefix_key
        self.prefix_chars = routing.prefix_affinity.prefix_chars
        self.admission = self.fleet.admission
        self.router: Router
        """Built when the snapshot becomes current (:meth:`activate`): it reads the settings."""
        self._active = False
        if not shared:
            self.activate()
        retry = routing.retry
        self.retry_policy = RetryPolicy(
            enabled=retry.enabled,
            max_retries=retry.max_retries,
            initial_wait=retry.initial_wait,
            max_wait=retry.max_wait,
            multiplier=retry.multiplier,
            jitter=retry.jitter,
            retry_on_status=frozenset(retry.retry_on_status),
        )
        self.clients = {b.display_name: UpstreamClient(b) for b in config.backends}
        auth = config.auth
        self.auth_header_names = header_order(auth.header_names)
        # Matched against the lower-case canonical path, like every other path rule.
        self.auth_skip_paths = tuple(path.lower() for path in auth.skip_paths)
        self.proxy_paths = config.server.proxy_paths
        """Paths forwarded to backends (lower case; whole segments: see :func:`forwards`)."""
        self.proxy_path_set = frozenset(self.proxy_paths)
        self.proxy_trust = ProxyTrust(
            config.server.trusted_proxies, config.server.client_address_header
        )
        # Headers the client may not send upstream: its key, and the ones the gateway fills
        # with decision metadata (a client must not be able to forge its own user id).
        self.secret_headers = (
            _ALWAYS_SECRET
            | frozenset(self.auth_header_names)
            | frozenset(header_order(tuple(auth.forward_metadata.values())))
            # Traced, the backend gets the gateway's own trace context, never the client's.
            | (TRACE_HEADERS if config.tracing.enabled else frozenset())
        )
        self.pools = ConnectionPools()
        self.lua = LuaSandbox(
            instruction_limit=auth.lua.instruction_limit,
            memory_limit=auth.lua.memory_limit,
            timeout=auth.lua.timeout,
        )
        self.auth: AuthPipeline | None = (
            build_pipeline(config, self.pools, self.lua, self.base_dir) if auth.enabled else None
        )
        builtin = builtin_providers(self)
        self.teams: TeamDirectory = builtin[0].teams if builtin else TeamIndex()
        """The teams of the key store (the builtin provider's, refreshed with its keys); an
        empty directory without one."""
        limits = config.rate_limit
        self.limits: LimitStore | None = None  # built in open(): a Redis store needs the loop
        self.response_redis: Redis | None = None
        self.daemon_limits = daemon_limits
        self.notices = notices
        self.global_rate: Rate | None = rate_of(limits.global_) if limits.enabled else None
        self.model_list_cache: tuple[float, tuple[str, ...]] | None = None
        self.metrics: GatewayMetrics = _NO_METRICS
        """The process's metrics; :class:`RuntimeState` hands every snapshot the same one."""
        self.limits_enabled = limits.enabled
        self.spend: SpendBook = _NO_SPEND
        """The process's spend book (budgets); :class:`RuntimeState` hands every snapshot its
        own."""
        self.prices = PriceTable.of(config.pricing)
        """What each model's tokens cost (``pricing``): usage records, metrics, budgets."""
        self.counts_tokens = True
        self.apis_limited = any(b.apis for b in config.backends)
        """Something needs a stream's token counts (usage records, metrics or limits): the
        backend is asked to report usage. Set by :class:`RuntimeState` with the usage sink.
        """
        overload = config.server.overload
        self.shed_lag = overload.max_event_loop_lag if overload.enabled else math.inf
        """Event-loop lag (s) from which new requests are shed (``server.overload``)."""
        self.shed_headers: tuple[tuple[bytes, bytes], ...] = (
            (b"retry-after", str(overload.retry_after).encode()),
        )
        self.loop_lag = LoopLag()
        """The process's loop-lag probe; :class:`RuntimeState` hands every snapshot its own."""
        self.body_budget = BodyBudget(config.server.body_buffer_limit)
        """The process's request-body budget; :class:`RuntimeState` hands every snapshot its own
        (this one only stands in until then)."""
        self.usage: UsageSink | None = None
        """The process's usage sink (records, outbox, webhook delivery), when there is one."""
        self.access_log: AccessLog | None = None
        """The process's access log, when ``logging.access_log`` is on."""
        self.finish_sinks: tuple[Sink, ...] = ()
        """Metrics, access log, recorder, usage: what reads each ended request (composed by
        :class:`RuntimeState`, see :func:`finish_sinks`)."""
        self.recorder: Recorder | None = None
        """The process's traffic recorder while ``record.enabled`` (None: one check per request
        is all recording costs when it is off)."""
        self.tracing: Tracer | None = None
        """Begins and ends request traces while ``tracing.enabled`` (set by
        :class:`RuntimeState`, which owns the export); None costs a request one check."""
        self._owns_limits = True
        self._background: set[asyncio.Task[None]] = set()
        self.in_flight = 0
        self._health: HealthChecker | None = None
        self._signals: SignalScraper | None = None
        self._monitor_session: aiohttp.ClientSession | None = None

    def count_fallback(self, primary: Backend) -> None:
        """A fallback target serves a request in ``primary``'s stead (the router's callback)."""
        self.metrics.fallback(primary.name)

    def activate(self) -> None:
        """This snapshot becomes the process's: its backend settings and admission limits take
        effect and its router is built. Once; a refused reload never gets here."""
        if self._active:
            return
        self._active = True
        self.fleet.adopt(zip(self.backends, self.backend_settings, strict=True))
        routing = self.config.routing
        admission = routing.admission
        queue = self.fleet.admission
        queue.max_waiting = admission.max_waiting
        queue.timeout = admission.timeout
        queue.reserved_slots = admission.reserved_slots
        queue.reserved_priority = admission.reserved_priority
        if not self.config.health_check.enabled:
            # No probes any more: a verdict from probes that stopped must not keep a backend out.
            for backend in self.backends:
                backend.probe_healthy = True
        self.router = Router(
            self.backends,
            self.strategy.build(
                BalancerInputs(
                    self.backends,
                    self.rng,
                    routing.prefix_affinity.epsilon,
                    homes=self.fleet.homes,
                )
            ),
            [(chain.primary, list(chain.fallback)) for chain in routing.fallback],
        )

    async def open(self) -> None:
        """Open connection pools, auth providers and health checks (inside the running loop)."""
        for client in self.clients.values():
            client.open()
        if self.auth is not None:
            if self.notices is not None:  # read first: a change during the load is seen later
                self.auth.keys_seen = self.notices.read(Notice.KEYS)
            await self.auth.open()
        if self.config.rate_limit.enabled and self.limits is None:
            self.limits = await build_store(
                self.config.rate_limit, self.pools, shared=self.daemon_limits
            )
        limits = self.config.rate_limit
        if limits.enabled and limits.storage == "redis" and limits.redis is not None:
            # Replicas and workers sharing limits share which backend made each response too.
            self.response_redis = await self.pools.redis(limits.redis)
        routing = self.config.routing
        signals = routing.load_signals
        if signals.enabled or self.strategy.load_signals:
            self._signals = SignalScraper(
                self.backends,
                self._monitor(),
                interval=signals.interval,
                path=signals.path,
                timeout=signals.timeout,
            )
            await self._signals.start()
        health = self.config.health_check
        if health.enabled:
            self._health = HealthChecker(
                self.backends,
                self._monitor(),
                interval=health.interval,
                path=health.path,
                timeout=health.timeout,
                unhealthy_threshold=health.unhealthy_threshold,
                healthy_threshold=health.healthy_threshold,
                probes={
                    backend: probe_for(config, health, self.clients[backend.name].extra_headers)
                    for backend, config in zip(self.backends, self.config.backends, strict=True)
                },
            )
            await self._health.start()

    def _monitor(self) -> aiohttp.ClientSession:
        """The one session health probes and load-signal scrapes share (not the request pools)."""
        if self._monitor_session is None:
            self._monitor_session = aiohttp.ClientSession()
        return self._monitor_session

    def inherit_limits(self, old: Runtime) -> None:
        """Keep ``old``'s in-memory buckets, slots and budgets (call before :meth:`open`).

        A reload that leaves ``rate_limit`` as it was must not hand every key a full bucket
        again. Only the memory store moves: a Redis store's state is in Redis, and its client
        belongs to the old snapshot's pools. Both snapshots share the store until the old one
        closes, so slots taken under the old one are released into the same store.
        """
        if old.limits is None or self.config.rate_limit.storage != "memory":
            return
        self.limits = old.limits
        old._owns_limits = False

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the request path (settlements); :meth:`close` waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop_monitoring(self) -> None:
        """Stop the health probes and load-signal scrapes: they speak for the current snapshot
        only, so a retired one stops them at once (its requests may run on for minutes)."""
        if self._signals is not None:
            signals, self._signals = self._signals, None
            await signals.stop()
        if self._health is not None:
            health, self._health = self._health, None
            await health.stop()

    async def close(self) -> None:
        """Stop health checks and close every pool (connections still open are closed too)."""
        if self._background:
            await asyncio.wait(self._background, timeout=5.0)
        await self.stop_monitoring()
        if self._monitor_session is not None:
            await self._monitor_session.close()
            self._monitor_session = None
        await asyncio.gather(*(client.close() for client in self.clients.values()))
        if self.auth is not None:
            await self.auth.close()
        if self.limits is not None and self._owns_limits:
            await self.limits.close()
        await self.pools.close()
        self.lua.close()


def probe_for(
    backend: BackendConfig, health: HealthCheckConfig, sent: tuple[tuple[str, str], ...]
) -> Probe:
    """How ``backend`` is probed: its own ``health_check`` over the global one, with the
    headers its requests carry (``sent``: its ``api_key`` and ``headers``) and the probe's."""
    own = backend.health_check
    mode = own.mode or health.mode
    path = own.path or health.path
    return Probe(
        path=path if path.startswith("/") else "/" + path,
        headers={**dict(sent), **{k.lower(): v for k, v in own.headers.items()}},
        expect=own.expect if own.expect is not None else health.expect,
        models=mode == "models",
    )


def builtin_providers(runtime: Runtime) -> list[BuiltinProvider]:
    """The runtime's ``builtin`` key providers (all read the same store: ``auth.builtin_db``)."""
    if runtime.auth is None:
        return []
    return [s.provider for s in runtime.auth.stages if isinstance(s.provider, BuiltinProvider)]


def finish_sinks(
    metrics: GatewayMetrics | None,
    access_log: AccessLog | None,
    recording: Sink | None,
    usage: Sink | None,
    quota: Sink | None = None,
) -> tuple[Sink, ...]:
    """The finish sinks, in order: a new one is a module of its package and a line here."""
    sinks: list[Sink] = []
    if quota is not None:
        sinks.append(quota)
    if metrics is not None:
        sinks.append(metrics.finished)
    if access_log is not None:
        sinks.append(access_log.finished)
    if recording is not None:
        sinks.append(recording)
    if usage is not None:
        sinks.append(usage)
    return tuple(sinks)


def runtime_problem(config: Config, base_dir: Path) -> str | None:
    """Why ``config`` cannot become a runtime (a Lua syntax error, an unreadable script, a provider
    refusing its settings), or None. Builds a snapshot without connecting anything.
    """
    try:
        runtime = Runtime(config, base_dir=base_dir)
    except (LuaError, AuthSetupError, ValueError) as exc:
        return str(exc)
    runtime.lua.close()
    return None


class RuntimeState:
    """The one mutable reference to the current :class:`Runtime`, and the retired ones.

    It also owns what lives as long as the process rather than a config: the metrics, the
    request-body budget, the usage sink, the access log, the trace export and the traffic
    recorder (which,
    unlike the others, every adopted snapshot reconfigures: ``record`` changes with a reload).
    """

    def __init__(
        self,
        runtime: Runtime,
        metrics: GatewayMetrics | None = None,
        usage: UsageSink | None = None,
        access_log: AccessLog | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.metrics = metrics or GatewayMetrics(CollectorRegistry())
        self.fleet = runtime.fleet
        """The process's backends and admission queue; every later snapshot is built on it."""
        self.daemon_limits = runtime.daemon_limits
        self.notices = runtime.notices
        """The daemon's limit table (several workers), which every later snapshot decides on."""
        self.body_budget = BodyBudget(runtime.config.server.body_buffer_limit)
        self.loop_lag = LoopLag(report=self.metrics.event_loop_lag)
        """How late the process's event loop runs (``server.overload`` sheds on it)."""
        self.usage = usage
        self.spend = SpendBook(None, on_alert=self._budget_alert)
        """What budgets' scopes spent this period (read from the usage store once it is open)."""
        self.access_log = access_log
        self.recorder = recorder or Recorder(self.metrics)
        tracing = runtime.config.tracing
        self.traces = TraceExport(tracing, self.metrics.trace_spans) if tracing.enabled else None
        """The process's trace export (its thread and queue outlive reloads)."""
        self._recording = recording_sink(self.recorder)
        self._usage_sink = usage_sink(usage) if usage is not None else None
        if usage is not None:
            self.metrics.watch_usage(usage)
        self._adopt(runtime)
        self.current = runtime
        self._retired: set[Runtime] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._usage_sync: asyncio.Task[None] | None = None

    def in_flight(self) -> int:
        """Requests this process is serving now, on the current snapshot and retired ones."""
        return self.current.in_flight + sum(r.in_flight for r in self._retired)

    def retired_count(self) -> int:
        """Retired snapshots still serving requests that began on them."""
        return len(self._retired)

    def acquire(self) -> Runtime:
        """The snapshot a new request will use to its end; pair with :meth:`release`."""
        runtime = self.current
        runtime.in_flight += 1
        return runtime

    def release(self, snapshot: Snapshot) -> None:
        """A request that held ``snapshot`` finished; a retired snapshot closes with its last."""
        runtime = cast(Runtime, snapshot)  # the request path holds what acquire() gave it
        runtime.in_flight -= 1
        if runtime.in_flight == 0 and runtime in self._retired:
            self._retired.discard(runtime)
            self._close_later(runtime)

    def _adopt(self, runtime: Runtime) -> None:
        runtime.activate()
        runtime.metrics = self.metrics
        self.body_budget.limit = runtime.config.server.body_buffer_limit
        runtime.body_budget = self.body_budget
        runtime.loop_lag = self.loop_lag
        runtime.usage = self.usage
        if self.usage is not None:
            # Records of requests a crash cut off are priced when settled, at today's prices.
            self.usage.prices = runtime.prices
        runtime.access_log = self.access_log
        self.spend.currency = runtime.config.pricing_currency
        runtime.spend = self.spend
        if self.traces is not None and runtime.config.tracing.enabled:
            runtime.tracing = Tracer(runtime.config.tracing, self.traces)
        record = runtime.config.record
        self.recorder.configure(record, runtime.base_dir)
        runtime.recorder = self.recorder if record.enabled else None
        runtime.finish_sinks = finish_sinks(
            self.metrics if runtime.config.metrics.enabled else None,
            self.access_log,
            self._recording if record.enabled else None,
            self._usage_sink,
            quota_sink(builtin_providers(runtime)),
        )
        runtime.counts_tokens = (
            self.usage is not None
            or runtime.config.metrics.enabled
            or runtime.limits_enabled
            or bool(builtin_providers(runtime))
        )
        self.metrics.allow_models(runtime.router.models())

    def swap(self, runtime: Runtime) -> Runtime:
        """Make ``runtime`` (already opened) current; the old one retires when idle."""
        self._adopt(runtime)
        old, self.current = self.current, runtime
        if old.in_flight == 0:
            self._close_later(old)
        else:
            self._retired.add(old)
            self._later(old.stop_monitoring())
        return old

    def _close_later(self, runtime: Runtime) -> None:
        self._later(runtime.close())

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def open(self) -> None:
        """Open the current snapshot, and start the usage sink."""
        if self.usage is not None:
            await self.usage.start()
            self._usage_sync = asyncio.get_running_loop().create_task(self._sync_usage())
            self.spend.start(self.usage.store, outbox=self.usage.hook_enabled)
        if self.access_log is not None:
            self.access_log.start()
        self.recorder.start()
        if self.traces is not None:
            self.traces.start()
        self.loop_lag.start()
        await self.current.open()
        if self.usage is not None:
            usage = self.usage
            await self._settle_recovered(usage.take_recovered())
            # Later sweeps (a worker or a replica killed while this one runs) settle the same way.
            usage.on_recovered = lambda: self._later(self._settle_recovered(usage.take_recovered()))

    def _budget_alert(self, alert: BudgetAlert) -> None:
        self.metrics.budget_alert(alert.scope, alert.threshold)

    async def _settle_recovered(self, recovered: list[Recovered]) -> None:
        """Requests a crash cut off are billed: their tokens count against a builtin key's quota
        and their Redis lease is settled with them (the quota counter counts them once; the
        slot is free already or now), like any other request's."""
        providers = builtin_providers(self.current)
        limits = self.current.limits
        for record, lease in recovered:
            # Each on its own: one failure must not leave the others' quota and leases unsettled.
            try:
                if providers:
                    providers[0].count_usage(record.key_id, record.total_tokens)
                if limits is not None and lease.startswith(REDIS_LEASE_PREFIX):
                    await limits.settle(record.key_id, KeyPolicy(), lease, 0, record.total_tokens)
            except LimitsUnavailable as exc:
                log.warning("interrupted request %s not settled: %s", record.request_id, exc)
            except Exception:
                log.exception("interrupted request %s not settled", record.request_id)

    async def flush(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound, not a cancel
        """Write the usage records and recording lines still queued and stop the access log,
        within ``timeout``.

        The forced exit's shortcut to :meth:`close`: no pool is closed gracefully, but no
        record of a settled request is lost.
        """
        if self.usage is not None:
            await self.usage.close(timeout=timeout)
        if self.access_log is not None:
            self.access_log.stop()
        self.recorder.stop(timeout)
        if self.traces is not None:
            await asyncio.to_thread(self.traces.shutdown, timeout)

    async def _sync_usage(self) -> None:
        """Copy the usage counters into the metrics every second.

        ``/metrics`` does it for the process it reaches; with several workers a scrape reaches
        one, and renders every worker's files, so each worker keeps its own up to date.
        """
        while True:
            await asyncio.sleep(USAGE_SYNC_INTERVAL)
            self.metrics.sync_usage()

    async def close(self) -> None:
        """Close every snapshot: current, retired and those already closing."""
        self.loop_lag.stop()
        await self.spend.close()
        if self._usage_sync is not None:
            self._usage_sync.cancel()
            self._usage_sync = None
        await self.current.close()
        for runtime in list(self._retired):
            await runtime.close()
        self._retired.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self.usage is not None:
            # Last, so records of requests that just finished are written to the outbox.
            await self.usage.close(timeout=self.current.config.server.shutdown_timeout or 5.0)
        if self.access_log is not None:
            self.access_log.stop()
        self.recorder.stop(self.current.config.server.shutdown_timeout or 5.0)
        if self.traces is not None:
            # Off the loop: the last export may wait for a slow collector (bounded).
            timeout = self.current.config.server.shutdown_timeout or 5.0
            await asyncio.to_thread(self.traces.shutdown, timeout)
