"""One upstream inference server: its configured identity plus the live state routing reads.

A `Backend` is shared by the balancer, the router, the health checker and the request path. All
of them run on one event loop, so the counters are plain attributes with no locks; every method
here is O(1) and allocates nothing, because it runs for every proxied request.

Time is always passed in (`now`, `seconds`) rather than read here, so the ejection and latency
bookkeeping is pure and tests drive it with plain numbers. Use `time.monotonic()` for `now`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from llmproxy.apis import CONFIG_NAMES, Api
from llmproxy.routing.shared_slots import SlotCounter

DEFAULT_EWMA_ALPHA = 0.3


@dataclass(slots=True)
class FailureRun:
    """A run of failed requests (one backend, or one model on it) and the ejection it led to.

    ``clients`` are who met the 5xx answers and timeouts of the run (at most ``min_clients``
    kept), ``unattributed`` whether it holds a failure no client can cause: see
    :meth:`Backend.record_failure`.
    """

    consecutive: int = 0
    clients: tuple[str, ...] = ()
    unattributed: bool = False
    ejected_until: float = 0.0
    failures_total: int = 0

    def fail(
        self,
        now: float,
        threshold: int,
        ejection_time: float,
        client: str | None,
        min_clients: int,
    ) -> bool:
        """Count one failure; True when it ejects."""
        self.failures_total += 1
        self.consecutive += 1
        if client is None:
            self.unattributed = True
        elif client not in self.clients and len(self.clients) < min_clients:
            self.clients = (*self.clients, client)
        if 0 < threshold <= self.consecutive and (
            self.unattributed or len(self.clients) >= min_clients
        ):
            self.ejected_until = now + ejection_time
            self.reset()
            return True
        return False

    def reset(self) -> None:
        """A success (or an ejection) starts the count over."""
        self.consecutive = 0
        self.clients = ()
        self.unattributed = False


REFUSED: Final = 0
LOCAL: Final = 1
"""A request counted in this process only."""
SHARED: Final = 2
"""A request that holds a slot in the daemon's table (several workers, a capped backend)."""


@dataclass(slots=True, eq=False)
class Backend:
    """An inference server and the request path's view of how it is doing.

    Build one per configured backend with `Backend.create`, then drive it from the request path:

        backend.begin()
        try:
            ...send the request; when the status line arrives:
            backend.record_first_byte(time.monotonic() - started)
            ...
            backend.record_success()
        except UpstreamFailure:
            backend.record_failure(time.monotonic(), failure_threshold=5, ejection_time=30.0)
        finally:
            backend.end()

    Equality and hashing are by identity (`eq=False`): two backends with the same URL built from
    two config generations are different objects with different live state, and the balancers
    key their per-backend state on the object.

    A backend is owned by the process (:class:`~llmproxy.routing.fleet.BackendFleet`), not by a
    config snapshot: `name` and `url` are its identity and never change; the settings (`weight`,
    `models`, `max_in_flight`, `send_priority`) follow the current config, applied when a
    reloaded snapshot becomes current, so live state is never copied or reset.
    """

    name: str
    url: str
    weight: int = 1
    # None means "serves any model": the backend was configured without a model list.
    models: frozenset[str] | None = None
    ewma_alpha: float = DEFAULT_EWMA_ALPHA
    # The most requests the gateway sends here at once (its batch slots); 0: no limit. A backend
    # at its limit is "saturated": new requests go elsewhere or wait in the admission queue.
    max_in_flight: int = 0
    # Send the request's priority in vLLM's `priority` field.
    send_priority: bool = False
    # The model APIs it speaks, by their `backends[].apis` names (None: all of them).
    apis: frozenset[str] | None = None

    in_flight: int = field(default=0, init=False)
    # The daemon's count of this backend's slots when several workers share it (None: this
    # process's `in_flight` is the count).
    slots: SlotCounter | None = field(default=None, init=False)
    # Seconds; None until the first response starts, which the latency balancer treats as
    # "explore me" rather than as fast or slow.
    ttfb_ewma: float | None = field(default=None, init=False)
    # Written only by the active health checker; backends start healthy so that a gateway
    # with health checks disabled (or not yet run) still routes.
    probe_healthy: bool = field(default=True, init=False)
    # Load signals scraped from the backend's own /metrics (vLLM / SGLang names), for the
    # load-aware and prefix-affinity strategies: requests waiting for a slot, requests running,
    # and the KV cache's use (0..1, None until read). `signals_at` is the monotonic time of the
    # last successful scrape (0: never; the strategies then use the gateway's own counts).
    # Seconds between two streamed tokens, EWMA over streams (None until a stream was seen).
    itl_ewma: float | None = field(default=None, init=False)
    queue_waiting: int = field(default=0, init=False)
    running: int = field(default=0, init=False)
    kv_cache_usage: float | None = field(default=None, init=False)
    signals_at: float = field(default=0.0, init=False)
    # Passive health of the server as a whole (failures no single model explains) and, below,
    # of each model on it.
    server_health: FailureRun = field(default_factory=FailureRun, init=False)
    # Health per model: a model that fails upstream is taken out on its own, and the backend's
    # other models stay served (only failures of the whole server take the backend out).
    model_health: dict[str, FailureRun] = field(default_factory=dict, init=False)
    requests_total: int = field(default=0, init=False)
    failures_total: int = field(default=0, init=False)
    # Set by an operator (``POST /backends/{name}/drain``) before maintenance: no new request is
    # routed here, while the ones in flight finish. Kept across reloads like all live state.
    draining: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"backend {self.name!r}: weight must be >= 0, got {self.weight}")
        if not 0.0 < self.ewma_alpha <= 1.0:
            raise ValueError(
                f"backend {self.name!r}: ewma_alpha must be in (0, 1], got {self.ewma_alpha}"
            )

    @classmethod
    def create(
        cls,
        name: str,
        url: str,
        *,
        weight: int = 1,
        models: Iterable[str] = (),
        ewma_alpha: float = DEFAULT_EWMA_ALPHA,
        max_in_flight: int = 0,
        send_priority: bool = False,
    ) -> Backend:
        """Build a backend from config-shaped values: an empty `models` means "any model"."""
        model_set = frozenset(models)
        return cls(
            name=name,
            url=url.rstrip("/"),
            weight=weight,
            models=model_set or None,
            ewma_alpha=ewma_alpha,
            max_in_flight=max_in_flight,
            send_priority=send_priority,
        )

    def speaks(self, api: Api) -> bool | None:
        """Whether ``api`` may be sent here as it is (True), translated into chat completions
        (None: a Messages request for a backend that speaks chat but not Messages), or not at
        all (False)."""
        apis = self.apis
        if apis is None or CONFIG_NAMES[api] in apis:
            return True
        if api == "messages" and "chat_completions" in apis:
            return None
        return False

    def serves(self, model: str | None) -> bool:
        """Whether a request for `model` may be sent here; `None` (no model named) fits anywhere."""
        return self.models is None or model is None or model in self.models

    def is_available(self, now: float) -> bool:
        """Whether a new request may go here: not draining, passing its health probes and not
        passively ejected at `now` (as a whole server; see :meth:`available_for` for a model).
        """
        return not self.draining and self.probe_healthy and now >= self.server_health.ejected_until

    @property
    def ejected_until(self) -> float:
        """Monotonic time before which passive ejection keeps the whole backend out."""
        return self.server_health.ejected_until

    @ejected_until.setter
    def ejected_until(self, until: float) -> None:
        self.server_health.ejected_until = until

    @property
    def consecutive_failures(self) -> int:
        """Failures of the server in a row (the current run)."""
        return self.server_health.consecutive

    def available_for(self, model: str | None, now: float) -> bool:
        """Whether a new request for ``model`` may go here: the server is available and that
        model is not taken out by its own failures."""
        if self.draining or not self.probe_healthy or now < self.server_health.ejected_until:
            return False
        if model is None or not self.model_health:
            return True
        run = self.model_health.get(model)
        return run is None or now >= run.ejected_until

    def models_out(self, now: float) -> dict[str, float]:
        """The models taken out on their own at ``now``: model → seconds left."""
        return {
            model: round(run.ejected_until - now, 3)
            for model, run in self.model_health.items()
            if run.ejected_until > now
        }

    def is_down(self, now: float) -> bool:
        """Down as a whole: its probe fails, it is ejected as a server, or every model it lists
        is out on its own (a backend serving any model is never down by its models)."""
        if not self.is_available(now):
            return True
        if self.models is None or not self.model_health:
            return False
        out = self.models_out(now)
        return all(model in out for model in self.models)

    @property
    def error_rate(self) -> float:
        """Failed attempts over sent attempts since start (0.0 before the first request)."""
        if self.requests_total == 0:
            return 0.0
        return self.failures_total / self.requests_total

    def full_for(self, reserve: int = 0) -> bool:
        """At its ``max_in_flight`` (less ``reserve`` slots left for important requests, see
        admission): no such request may go here until one ends. With several workers the count
        is the daemon's."""
        limit = self.max_in_flight
        if limit <= 0:
            return False
        slots = self.slots
        return limit <= (self.in_flight if slots is None else slots.taken()) + reserve

    def try_begin(self, reserve: int = 0) -> int:
        """:meth:`begin` if a slot is free: with several workers the check and the take are one
        step for the daemon (two workers cannot both take the last slot). Returns `REFUSED`
        (full), `LOCAL`, or `SHARED` (a slot of the daemon's table was taken): pass it to
        :meth:`end`, so a request gives back exactly what it took, whatever a reload changed."""
        slots = self.slots
        if slots is not None and self.max_in_flight > 0:
            if not slots.try_take(self.max_in_flight, reserve):
                return REFUSED
            self.begin()
            return SHARED
        self.begin()
        return LOCAL

    def begin(self) -> None:
        """Count a request as sent; pair every call with `end()` in a `finally`."""
        self.in_flight += 1
        self.requests_total += 1

    def end(self, taken: int = LOCAL) -> None:
        """Count a request as finished (never below zero, so a double `end()` cannot wedge it);
        ``taken`` is what :meth:`try_begin` returned."""
        if self.in_flight > 0:
            self.in_flight -= 1
        if taken == SHARED and self.slots is not None:
            self.slots.give()

    def record_first_byte(self, seconds: float) -> None:
        """Fold one time-to-first-byte sample into the latency EWMA the latency balancer reads."""
        sample = max(seconds, 0.0)
        previous = self.ttfb_ewma
        if previous is None:
            self.ttfb_ewma = sample
        else:
            self.ttfb_ewma = previous + self.ewma_alpha * (sample - previous)

    def record_token_gap(self, seconds: float) -> None:
        """Fold one stream's mean time between tokens into `itl_ewma` (the load-aware rule
        compares how fast backends generate, not only how many requests they hold)."""
        sample = max(seconds, 0.0)
        previous = self.itl_ewma
        self.itl_ewma = (
            sample if previous is None else previous + self.ewma_alpha * (sample - previous)
        )

    def record_success(self, model: str | None = None) -> None:
        """Note a successful response: one success breaks a streak of failures (the server's,
        and the model's)."""
        self.server_health.reset()
        if model is not None and self.model_health:
            run = self.model_health.get(model)
            if run is not None:
                run.reset()

    def record_failure(
        self,
        now: float,
        failure_threshold: int,
        ejection_time: float,
        *,
        client: str | None = None,
        min_clients: int = 1,
        model: str | None = None,
    ) -> bool:
        """Note a failed request and eject the backend (or, with ``model``, that model on it)
        for `ejection_time` seconds at the threshold; True when this failure ejected.

        A failure of one request for ``model`` (a 5xx answer, a timeout) counts against that
        model only; a failure of the server (connection refused or reset, an invalid answer)
        counts against the backend.

        `client` is who met a 5xx answer (a key id or an address); None is a failure no client
        can cause (connection refused or reset, timeout, an invalid answer). A streak reaches
        the threshold only when it holds such a failure or 5xx answers met by `min_clients`
        different clients: one client repeating a request the backend chokes on never ejects.

        The streak restarts after an ejection, so a backend that is still broken when it comes
        back needs another `failure_threshold` failures before it is ejected again. A
        `failure_threshold` of 0 or less disables passive ejection.
        """
        self.failures_total += 1
        if model is None:
            run = self.server_health
        else:
            run = self.model_health.get(model) or self.model_health.setdefault(model, FailureRun())
        return run.fail(now, failure_threshold, ejection_time, client, min_clients)

    def snapshot(self, now: float) -> dict[str, object]:
        """A JSON-ready view of identity and live state for status endpoints and the CLI."""
        return {
            "name": self.name,
            "url": self.url,
            "weight": self.weight,
            "models": sorted(self.models) if self.models is not None else None,
            "available": not self.is_down(now),
            "models_out": self.models_out(now),
            "probe_healthy": self.probe_healthy,
            "draining": self.draining,
            "ejected_for_seconds": round(max(self.ejected_until - now, 0.0), 3),
            # Capped backends with several workers: the daemon's count, not this worker's.
            "in_flight": self.in_flight
            if self.slots is None or self.max_in_flight <= 0
            else self.slots.taken(),
            "ttfb_ewma_ms": None if self.ttfb_ewma is None else round(self.ttfb_ewma * 1000, 1),
            "error_rate": round(self.error_rate, 4),
            "consecutive_failures": self.consecutive_failures,
            "requests_total": self.requests_total,
            "failures_total": self.failures_total,
            "max_in_flight": self.max_in_flight or None,
            "queue_waiting": self.queue_waiting if self.signals_at else None,
            "running": self.running if self.signals_at else None,
            "kv_cache_usage": self.kv_cache_usage,
            "signals_age_seconds": round(now - self.signals_at, 1) if self.signals_at else None,
        }
