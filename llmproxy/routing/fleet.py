"""The process's backends: live state that outlives every config snapshot.

A backend's in-flight count, health (per model), latency EWMAs, drain flag and scraped load
signals, and the admission queue of requests waiting for a slot, describe the servers and the
requests in this process, not a config file. So they are owned here, once per process, and every
:class:`~llmproxy.daemon.runtime.Runtime` snapshot reads the same objects: a reload cannot lose
a running request's slot (and over-admit a GPU), reset an ejection, or let new requests overtake
those already waiting. Nothing is copied from one snapshot to the next.

A backend is the same backend across reloads while its identity, ``(name, url)``, is the same.
Its settings from the config (weight, models, ``max_in_flight``, ``send_priority``) are applied
when the snapshot that carries them becomes current, never while it is being built (a refused
reload changes nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from llmproxy.routing.admission import AdmissionQueue
from llmproxy.routing.backend import Backend
from llmproxy.routing.responses import ResponseHomes
from llmproxy.routing.shared_homes import HomesFile
from llmproxy.routing.shared_slots import SharedSlots

Identity = tuple[str, str]


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """What a config says about one backend besides its identity."""

    weight: int = 1
    models: frozenset[str] | None = None
    max_in_flight: int = 0
    send_priority: bool = False
    apis: frozenset[str] | None = None

    def apply(self, backend: Backend) -> None:
        """Make ``backend`` follow these settings (when their snapshot becomes current)."""
        backend.weight = self.weight
        backend.models = self.models
        backend.max_in_flight = self.max_in_flight
        backend.send_priority = self.send_priority
        backend.apis = self.apis


class BackendFleet:
    """The backends of this process by identity, and its admission queue.

    fleet = BackendFleet()
    backends = fleet.backends_for(identities)     # existing objects where known
    ...build a snapshot around them...
    fleet.adopt(zip(backends, settings))          # when that snapshot becomes current
    """

    def __init__(self, shared: SharedSlots | None = None, homes: HomesFile | None = None) -> None:
        self._backends: dict[Identity, Backend] = {}
        self.shared = shared
        self.homes = homes
        """The daemon's prefix homes (several workers), which `prefix_affinity` routes by."""
        """The daemon's slot table when it has several workers: capped backends count their
        slots there, and the admission queue keeps one order across the workers."""
        self.responses = ResponseHomes()
        """Which backend created each Responses API response (its follow-ups go there)."""
        self.admission = AdmissionQueue(shared=shared)
        """Requests waiting for a slot on any backend (its limits follow the current config)."""
        self.retries_in_flight = 0
        """Retry attempts running now (see :meth:`may_retry`)."""
        self._drains_seen = 0

    def sync(self) -> None:
        """Take over drains made by another worker since the last request (several workers;
        one read of shared memory when nothing changed)."""
        shared = self.shared
        if shared is None:
            return
        changes = shared.drain_changes()
        if changes == self._drains_seen:
            return
        self._drains_seen = changes
        for backend in self._backends.values():
            if backend.slots is not None:
                backend.draining = backend.slots.draining()

    def may_retry(self, budget_percent: float, min_concurrency: int) -> bool:
        """Whether one more retry fits the retry budget: at most ``budget_percent`` of the
        requests in flight (and always ``min_concurrency``) may be retries at once."""
        if self.retries_in_flight < min_concurrency:
            return True
        in_flight = sum(backend.in_flight for backend in self._backends.values())
        return self.retries_in_flight < in_flight * budget_percent / 100.0

    def known(self, identity: Identity) -> Backend | None:
        """The live backend with this identity, if the current snapshot has it."""
        return self._backends.get(identity)

    def backends_for(
        self, wanted: Sequence[tuple[Identity, BackendSettings]]
    ) -> tuple[Backend, ...]:
        """A backend per identity: the live one where this process has it, else a new one
        (with its settings already, as nothing else holds it yet)."""
        out = []
        for (name, url), settings in wanted:
            backend = self._backends.get((name, url))
            if backend is None:
                backend = Backend.create(name, url)
                settings.apply(backend)
                if self.shared is not None:
                    backend.slots = self.shared.counter(name, url)
                    backend.draining = backend.slots.draining()
            out.append(backend)
        return tuple(out)

    def adopt(self, current: Iterable[tuple[Backend, BackendSettings]]) -> None:
        """The snapshot holding ``current`` is now the process's: apply its settings and make
        its backends the live ones (a backend it dropped lives on only in the requests that
        still hold it)."""
        backends: dict[Identity, Backend] = {}
        for backend, settings in current:
            settings.apply(backend)
            backends[(backend.name, backend.url)] = backend
        self._backends = backends
