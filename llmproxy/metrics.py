"""Prometheus metrics for the gateway: one `GatewayMetrics` per process, rendered at ``/metrics``.

Create the families once per process (not per runtime snapshot) and hand the object to the
request path::

    metrics = GatewayMetrics()                      # registers on the global registry
    metrics.allow_models(config_models)             # anything else is reported as "other"
    metrics.in_flight("gpu-a", +1)
    ...
    metrics.request_finished("gpu-a", "llama-3-8b", "/v1/chat/completions", 200,
                             duration=1.8, ttft=0.12, prompt_tokens=31, completion_tokens=95)
    metrics.in_flight("gpu-a", -1)
    body, content_type = metrics.render()

Every label value is bounded: models outside the allowed set become ``other``, endpoints map onto
a fixed list, statuses onto classes, and backend / provider labels are the configured names. No
label ever carries a key, a user or a free-form model string sent by a client.

The hot-path methods cache the label children in dicts, so a call costs one dict lookup plus the
prometheus_client update itself (see ``tests/metrics/test_cost.py`` for the measured numbers).

With ``server.workers > 1`` the supervisor calls `prepare_multiprocess` before it starts the
workers, and `mark_dead` whenever one exits; `render` then aggregates all workers' files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from llmproxy.finish import Finished
from llmproxy.private_files import private_directory

__all__ = [
    "AUTH_RESULTS",
    "ENDPOINTS",
    "LIMIT_KINDS",
    "OTHER",
    "GatewayMetrics",
    "UsageSource",
    "is_multiprocess",
    "mark_dead",
    "mean_inter_token",
    "normalize_endpoint",
    "prepare_multiprocess",
    "render",
    "status_class",
]

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
OTHER: Final = "other"
MAX_LEARNED_MODELS: Final = 64
"""Model names learnt from answered requests (beyond the configured and discovered ones)."""
MAX_MODEL_LABEL: Final = 128
"""Longest model name learnt from an answered request as a label value."""
"""The label value that stands in for anything outside a known set."""
NO_MODEL: Final = "none"
"""The model label of a request that names no model (``/v1/models``, early rejections)."""
NO_BACKEND: Final = "none"
"""The backend label of a request that never reached a backend."""
NO_TEAM: Final = "none"
"""The team label of a request whose key belongs to no team."""
MAX_TEAMS: Final = 256
"""Team names that become label values (teams are an operator's, but a provider's data or a
decision script can name one: beyond this many, ``other``)."""

ENDPOINTS: Final = (
    "chat/completions",
    "completions",
    "embeddings",
    "messages",
    "messages/count_tokens",
    "responses",
    "models",
    OTHER,
)
AUTH_RESULTS: Final = ("allowed", "denied", "error")
LIMIT_KINDS: Final = (
    "requests",
    "concurrency",
    "tokens",
    "quota",
    "budget",
    "unavailable",
    "capacity",
    "overload",
)
RELOAD_RESULTS: Final = ("success", "failure")
RECORD_RESULTS: Final = ("written", "dropped")
TRACE_DROP_REASONS: Final = ("queue_full", "export_failed")
TOKEN_TYPES: Final = ("prompt", "completion")

# Buckets in seconds, chosen for LLM serving: a cached short prompt answers in a few ms, a long
# prompt on a busy GPU can take a minute before the first token, and a long generation ten.
TTFT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
DURATION_BUCKETS: Final = (*TTFT_BUCKETS[1:], 120, 300, 600)
ITL_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2)

_ENDPOINT_LOOKUP: Final[dict[str, str]] = {
    **{name: name for name in ENDPOINTS},
    **{f"/v1/{name}": name for name in ENDPOINTS if name != OTHER},
    **{f"/{name}": name for name in ENDPOINTS if name != OTHER},
}
_STATUS_CLASSES: Final = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def normalize_endpoint(path: str) -> str:
    """The endpoint label of a request path: ``/v1/chat/completions`` -> ``chat/completions``.

    Only the OpenAI endpoints the gateway serves get their own value; every other path (typos,
    scanners, ``/v1/chat/completions/../x``) is ``other``, so a client cannot mint label values.
    """
    known = _ENDPOINT_LOOKUP.get(path)
    if known is not None:
        return known
    trimmed = path.split("?", 1)[0].strip("/")
    trimmed = trimmed.removeprefix("v1/")
    return trimmed if trimmed in _ENDPOINT_LOOKUP and trimmed != OTHER else OTHER


def status_class(status: int) -> str:
    """The ``status_class`` label of an HTTP status: ``503`` -> ``5xx``; nonsense -> ``other``."""
    return _STATUS_CLASSES.get(status // 100, OTHER) if status >= 100 else OTHER


def mean_inter_token(duration: float, ttft: float | None, completion_tokens: int) -> float | None:
    """The mean gap between streamed tokens, or None when there is no gap to measure.

    `GatewayMetrics.inter_token` takes this once per stream instead of one observation per token:
    a per-token observe would cost ~2 µs for every token relayed.
    """
    if ttft is None or completion_tokens < 2 or duration <= ttft:
        return None
    return (duration - ttft) / (completion_tokens - 1)


class UsageSource(Protocol):
    """What the usage side exposes (`llmproxy.usage.sink.UsageSink` fits); read on each scrape.

    Depth and dead letters count rows of the one outbox database all workers share, so in
    multi-process mode their gauges take the maximum over live workers, not the sum.
    """

    @property
    def delivery_attempts(self) -> int: ...

    @property
    def delivery_failures(self) -> int: ...

    @property
    def overflow(self) -> int: ...

    def outbox_depth(self) -> int: ...

    def dead_letters(self) -> int: ...


class GatewayMetrics:
    """All gateway metric families, registered once on ``registry`` (the global one by default).

    Tests pass their own ``CollectorRegistry``. Registering twice on the same registry raises, which
    is why the daemon creates one instance per process and keeps it across config reloads.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self._models: set[str] = set()
        self._learned = 0
        self._teams: set[str] = set()
        self._usage: UsageSource | None = None
        self._usage_seen = (0, 0, 0)

        self.requests = Counter(
            "llmproxy_requests",
            "Requests answered, by backend, model, endpoint and HTTP status class.",
            ("backend", "model", "endpoint", "status_class"),
            registry=registry,
        )
        self.request_duration = Histogram(
            "llmproxy_request_duration_seconds",
            "Time from receiving a request to sending the last byte of its response.",
            ("backend", "model", "endpoint"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "llmproxy_time_to_first_token_seconds",
            "Time from receiving a streamed request to relaying its first token.",
            ("backend", "model"),
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency = Histogram(
            "llmproxy_inter_token_latency_seconds",
            "Mean gap between streamed tokens, one observation per stream.",
            ("backend", "model"),
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "llmproxy_tokens",
            "Tokens processed, by model and type (prompt or completion).",
            ("model", "type"),
            registry=registry,
        )
        self.cost = Counter(
            "llmproxy_cost",
            "What requests cost by the pricing table, in pricing_currency, by model and team.",
            ("model", "team"),
            registry=registry,
        )
        self.budget_alerts = Counter(
            "llmproxy_budget_alerts",
            "Budgets that passed a threshold (0.8, 1) of their period, by scope (key, team).",
            ("scope", "threshold"),
            registry=registry,
        )
        self.in_flight_requests = Gauge(
            "llmproxy_in_flight_requests",
            "Requests currently being proxied to a backend.",
            ("backend",),
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.backend_healthy = Gauge(
            "llmproxy_backend_healthy",
            "1 when the backend passes health checks (in at least one live worker), else 0.",
            ("backend",),
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.backend_ejections = Counter(
            "llmproxy_backend_ejections",
            "Times a backend was taken out of rotation after failures.",
            ("backend",),
            registry=registry,
        )
        self.retries = Counter(
            "llmproxy_retries",
            "Requests retried, by the backend the failed attempt went to.",
            ("backend",),
            registry=registry,
        )
        self.fallbacks = Counter(
            "llmproxy_fallbacks",
            "Requests that fell back to another backend, by the backend they left.",
            ("backend",),
            registry=registry,
        )
        self.auth_decisions = Counter(
            "llmproxy_auth_decisions",
            "Authentication decisions, by provider and result (allowed, denied, error).",
            ("provider", "result"),
            registry=registry,
        )
        self.limit_rejections = Counter(
            "llmproxy_limit_rejections",
            "Requests refused by a limit, by kind.",
            ("kind",),
            registry=registry,
        )
        self.loop_lag = Gauge(
            "llmproxy_event_loop_lag_seconds",
            "How late the event loop runs (largest over the last 0.1 s; the worst worker's).",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.usage_outbox_depth = Gauge(
            "llmproxy_usage_outbox_depth",
            "Usage records waiting to be delivered.",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.usage_dead_letters = Gauge(
            "llmproxy_usage_dead_letters",
            "Usage records given up on and kept as dead letters.",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.usage_delivery_attempts = Counter(
            "llmproxy_usage_delivery_attempts",
            "Attempts to deliver usage records.",
            registry=registry,
        )
        self.usage_delivery_failures = Counter(
            "llmproxy_usage_delivery_failures",
            "Usage delivery attempts that failed.",
            registry=registry,
        )
        self.usage_queue_overflows = Counter(
            "llmproxy_usage_queue_overflows",
            "Usage records dropped because the in-memory queue was full.",
            registry=registry,
        )
        self.config_reloads = Counter(
            "llmproxy_config_reloads",
            "Configuration reloads, by result (success, failure).",
            ("result",),
            registry=registry,
        )
        self.record_lines = Counter(
            "llmproxy_record_lines",
            "Traffic recording lines, by result: written to the file, or dropped (queue full, "
            "file not writable, recording turned off before the request ended).",
            ("result",),
            registry=registry,
        )
        self.trace_spans_exported = Counter(
            "llmproxy_trace_spans_exported",
            "Trace spans the OTLP collector accepted (tracing).",
            registry=registry,
        )
        self.trace_spans_dropped = Counter(
            "llmproxy_trace_spans_dropped",
            "Trace spans dropped, by reason: queue_full (the export queue was full) or "
            "export_failed (the collector refused, was unreachable or timed out).",
            ("reason",),
            registry=registry,
        )

        # Label children, cached: `labels()` costs ~3 µs, a dict lookup ~50 ns.
        self._finished: dict[tuple[str, str, str, str], _Finished] = {}
        self._itl: dict[tuple[str, str], Histogram] = {}
        self._in_flight: dict[str, Gauge] = {}
        self._simple: dict[tuple[Counter, str], Counter] = {}
        self._auth: dict[tuple[str, str], Counter] = {}

        # Series with a fixed label set exist from the start, so rate() has a zero to begin from.
        for kind in LIMIT_KINDS:
            self.limit_rejections.labels(kind)
        for result in RELOAD_RESULTS:
            self.config_reloads.labels(result)
        self._record = {result: self.record_lines.labels(result) for result in RECORD_RESULTS}
        self._trace_spans = {"exported": self.trace_spans_exported} | {
            reason: self.trace_spans_dropped.labels(reason) for reason in TRACE_DROP_REASONS
        }

    # -- label bounds ------------------------------------------------------------------------

    def allow_models(self, names: Iterable[str]) -> None:
        """Let these model names appear as label values (config models, discovered models).

        Names are only ever added: a series once exported stays valid until the process restarts.
        """
        self._models.update(name for name in names if name)

    def learn_model(self, name: str) -> None:
        """Let a model a backend answered for become a label value, within bounds.

        Backends that serve any name they are given (llama.cpp, TGI) would otherwise let a
        client mint a series per request: at most :data:`MAX_LEARNED_MODELS` names of at most
        :data:`MAX_MODEL_LABEL` printable characters are learnt this way; the rest stay ``other``.
        """
        if name in self._models or self._learned >= MAX_LEARNED_MODELS:
            return
        if 0 < len(name) <= MAX_MODEL_LABEL and name.isprintable():
            self._models.add(name)
            self._learned += 1

    def model_label(self, model: str) -> str:
        """The label for ``model``: itself when allowed, ``none`` when empty, else ``other``."""
        if model in self._models:
            return model
        return NO_MODEL if not model else OTHER

    # -- request path ------------------------------------------------------------------------

    def finished(self, done: Finished) -> None:
        """The metrics sink: count one ended request (see :mod:`llmproxy.finish`)."""
        model = done.model
        if model and done.served:
            # A model a backend actually served may become a label value (within bounds: a
            # backend that serves any name must not let clients mint series); one a client
            # merely named stays "other".
            self.learn_model(model)
        completion = done.completion_tokens
        self.request_finished(
            done.backend,
            model,
            done.endpoint,
            done.status,
            done.duration,
            done.ttft,
            done.prompt_tokens,
            completion,
        )
        if done.ttft is not None:
            gap = mean_inter_token(done.duration, done.ttft, completion)
            if gap is not None:
                self.inter_token(done.backend, model, gap)
        if done.cost:
            self.cost.labels(self.model_label(model), self._team_label(done.team)).inc(done.cost)

    def budget_alert(self, scope: str, threshold: float) -> None:
        """A budget passed ``threshold`` (this process raised the fleet's one alert)."""
        self.budget_alerts.labels(scope, f"{threshold:g}").inc()

    def _team_label(self, team: str) -> str:
        """The label for ``team``: itself (the first :data:`MAX_TEAMS` seen), ``none`` for no
        team, else ``other``."""
        if not team:
            return NO_TEAM
        if team in self._teams:
            return team
        if len(self._teams) < MAX_TEAMS and len(team) <= MAX_MODEL_LABEL and team.isprintable():
            self._teams.add(team)
            return team
        return OTHER

    def request_finished(
        self,
        backend: str,
        model: str,
        endpoint: str,
        status: int,
        duration: float,
        ttft: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """Count one answered request; ``endpoint`` may be the raw path; ``ttft`` only if streamed.

        ``backend`` is the configured backend name, or "" when no backend was reached.
        """
        model = model if model in self._models else self.model_label(model)
        endpoint = _ENDPOINT_LOOKUP.get(endpoint) or normalize_endpoint(endpoint)
        key = (backend or NO_BACKEND, model, endpoint, status_class(status))
        children = self._finished.get(key)
        if children is None:
            children = self._finished[key] = self._children(*key)
        children.requests.inc()
        children.duration.observe(duration)
        if ttft is not None:
            children.ttft.observe(ttft)
        if prompt_tokens:
            children.prompt_tokens.inc(prompt_tokens)
        if completion_tokens:
            children.completion_tokens.inc(completion_tokens)

    def inter_token(self, backend: str, model: str, seconds: float) -> None:
        """Observe a stream's mean inter-token latency (see `mean_inter_token`), once per stream."""
        model = model if model in self._models else self.model_label(model)
        key = (backend or NO_BACKEND, model)
        child = self._itl.get(key)
        if child is None:
            child = self._itl[key] = self.inter_token_latency.labels(*key)
        child.observe(seconds)

    def in_flight(self, backend: str, delta: int) -> None:
        """Add ``delta`` (+1 when a request is sent to ``backend``, -1 when it is done)."""
        child = self._in_flight.get(backend)
        if child is None:
            child = self._in_flight[backend] = self.in_flight_requests.labels(backend)
        child.inc(delta)

    def backend_health(self, backend: str, healthy: bool) -> None:
        """Record the latest health verdict for ``backend``."""
        self.backend_healthy.labels(backend).set(1 if healthy else 0)

    def ejection(self, backend: str) -> None:
        """Count ``backend`` being ejected from rotation."""
        self._count(self.backend_ejections, backend)

    def retry(self, backend: str) -> None:
        """Count a retry of an attempt that went to ``backend``."""
        self._count(self.retries, backend)

    def fallback(self, backend: str) -> None:
        """Count a fallback away from ``backend``."""
        self._count(self.fallbacks, backend)

    def auth_decision(self, provider: str, result: str) -> None:
        """Count an auth decision; ``result`` is one of `AUTH_RESULTS` (else ``other``)."""
        key = (provider, result if result in AUTH_RESULTS else OTHER)
        child = self._auth.get(key)
        if child is None:
            child = self._auth[key] = self.auth_decisions.labels(*key)
        child.inc()

    def event_loop_lag(self, seconds: float) -> None:
        self.loop_lag.set(seconds)

    def limit_rejection(self, kind: str) -> None:
        """Count a request refused by a limit; ``kind`` is one of `LIMIT_KINDS`."""
        self._count(self.limit_rejections, kind if kind in LIMIT_KINDS else OTHER)

    # -- process and background --------------------------------------------------------------

    def recorded(self, result: str, count: int = 1) -> None:
        """Count ``count`` recording lines ``written`` or ``dropped`` (thread-safe: the recorder's
        writer thread counts what it wrote)."""
        child = self._record.get(result)
        if child is not None:
            child.inc(count)

    def trace_spans(self, result: str, count: int) -> None:
        """Count ``count`` trace spans ``exported`` or dropped (``queue_full``,
        ``export_failed``); thread-safe: the export thread counts what it sent."""
        child = self._trace_spans.get(result)
        if child is not None:
            child.inc(count)

    def config_reload(self, result: str) -> None:
        """Count a config reload; ``result`` is ``success`` or ``failure``."""
        self._count(self.config_reloads, result if result in RELOAD_RESULTS else OTHER)

    def watch_usage(self, source: UsageSource | None) -> None:
        """Read the usage outbox counters from ``source`` on every `render` / `sync_usage`.

        Pass the new object after a reload replaces the outbox (passing the same one again is
        harmless), or None to stop reading.
        """
        if source is not self._usage:
            self._usage = source
            self._usage_seen = (0, 0, 0)

    def sync_usage(self) -> None:
        """Copy the watched usage source into the metrics.

        `render` does this for the scraping process; `RuntimeState` also calls it every second,
        because with several workers a scrape reaches only one.
        """
        source = self._usage
        if source is None:
            return
        self.usage_outbox_depth.set(source.outbox_depth())
        self.usage_dead_letters.set(source.dead_letters())
        now = (source.delivery_attempts, source.delivery_failures, source.overflow)
        counters = (
            self.usage_delivery_attempts,
            self.usage_delivery_failures,
            self.usage_queue_overflows,
        )
        for counter, current, seen in zip(counters, now, self._usage_seen, strict=True):
            # A source that went backwards was replaced or restarted: count from its new zero.
            delta = current - seen if current >= seen else current
            if delta:
                counter.inc(delta)
        self._usage_seen = now

    def render(self) -> tuple[bytes, str]:
        """The ``/metrics`` response body and content type (syncs the usage source first)."""
        self.sync_usage()
        return render(self.registry)

    # -- internals ---------------------------------------------------------------------------

    def _children(self, backend: str, model: str, endpoint: str, klass: str) -> _Finished:
        return _Finished(
            requests=self.requests.labels(backend, model, endpoint, klass),
            duration=self.request_duration.labels(backend, model, endpoint),
            ttft=self.time_to_first_token.labels(backend, model),
            prompt_tokens=self.tokens.labels(model, "prompt"),
            completion_tokens=self.tokens.labels(model, "completion"),
        )

    def _count(self, family: Counter, label: str) -> None:
        key = (family, label)
        child = self._simple.get(key)
        if child is None:
            child = self._simple[key] = family.labels(label)
        child.inc()


class _Finished:
    """The label children one `GatewayMetrics.request_finished` key touches."""

    __slots__ = ("completion_tokens", "duration", "prompt_tokens", "requests", "ttft")

    def __init__(
        self,
        requests: Counter,
        duration: Histogram,
        ttft: Histogram,
        prompt_tokens: Counter,
        completion_tokens: Counter,
    ) -> None:
        self.requests = requests
        self.duration = duration
        self.ttft = ttft
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


# -- multi-process mode ----------------------------------------------------------------------


def prepare_multiprocess(directory: str | os.PathLike[str]) -> Path:
    """Switch this process and the workers it starts afterwards to multi-process metrics.

    The supervisor calls this once, before it starts the workers and before any `GatewayMetrics`
    exists: it creates ``directory``, deletes the ``*.db`` files a previous run left there (stale
    files make every scrape slower and would resurrect old counts), and sets
    ``PROMETHEUS_MULTIPROC_DIR``, which spawned workers inherit.
    """
    path = Path(directory).resolve()
    private_directory(path)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    # prometheus_client picks its value class at import; metrics created from now on must use the
    # mmap-backed one even if the library was imported before this call.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path


def is_multiprocess() -> bool:
    """Whether metrics in this process are written to the shared multi-process directory."""
    return bool(os.environ.get(MULTIPROC_ENV))


def mark_dead(pid: int) -> None:
    """Forget the live gauges (in-flight, health, outbox) of the exited worker ``pid``.

    Its counters and histograms stay, so totals do not go backwards when a worker restarts.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def render(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The text exposition and its content type.

    In multi-process mode the body aggregates every worker's files (``registry`` is not used);
    otherwise it is ``registry``, by default the global one.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST
