"""Where `prefix_affinity` keeps each prompt prefix's home and its demand: one process, or the
daemon (:mod:`llmproxy.routing.shared_homes`).

`PrefixAffinity` decides; a home table only remembers. Every decision runs inside
:meth:`HomeTable.transaction` (a no-op in one process, the table's lock with several workers), so
the homing, counting and moving of one request are one step for the daemon.

Demand is counted in a growing scale: a request adds `scale()` to its key's heat, its home's
demand and the total, and the scale then grows by `GROWTH`, which decays every older count at
once (a half-life of `HEAT_HALF_LIFE` requests, no per-key clock); the table brings the scale
back to 1 before it overflows.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Final, Protocol

from llmproxy.routing.backend import Backend

HEAT_HALF_LIFE: Final = 1024
"""Requests after which a prefix's past requests count half in its demand: long enough that a
light key's count is not noise, short enough that a tenant whose traffic fades stops counting."""
GROWTH: Final = 2.0 ** (1.0 / HEAT_HALF_LIFE)
RESCALE_AT: Final = 1e200
DEFAULT_MAX_KEYS: Final = 100_000
"""Prompt prefixes whose home backend is remembered: a few MB at most."""


class HomeTable(Protocol):
    """The homes of prompt prefixes and their demand (see the module docstring)."""

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Hold the table for one request's decision."""
        ...

    def lookup(self, key: int) -> Backend | None:
        """The key's home among this table's backends, or None (a new key, or one whose home
        is no longer configured)."""
        ...

    def insert(self, key: int, backend: Backend) -> None:
        """Home ``key`` on ``backend`` (it had none), forgetting the least wanted keys when
        the table is full."""
        ...

    def count(self, key: int) -> None:
        """One more request for ``key`` (it has a home)."""
        ...

    def move(self, key: int, backend: Backend) -> None:
        """Rehome ``key`` (with its heat) on ``backend``."""
        ...

    def heat(self, key: int) -> float: ...

    def owned(self, backend: Backend) -> int:
        """Keys homed on ``backend``."""
        ...

    def demand(self, backend: Backend) -> float:
        """The heat of the keys homed on ``backend``."""
        ...

    def keys(self) -> int: ...

    def total(self) -> float: ...

    def scale(self) -> float: ...


class _Home:
    __slots__ = ("backend", "heat")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.heat = 0.0


class LocalHomes:
    """This process's homes: an LRU table of ``max_keys`` keys."""

    __slots__ = ("_demand", "_homes", "_max_keys", "_owned", "_scale", "_total")

    def __init__(self, backends: list[Backend], max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self._max_keys = max(1, max_keys)
        self._homes: OrderedDict[int, _Home] = OrderedDict()
        self._owned: dict[Backend, int] = {backend: 0 for backend in backends}
        self._demand: dict[Backend, float] = {backend: 0.0 for backend in backends}
        self._total = 0.0
        self._scale = 1.0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        yield  # one event loop: nothing else runs during a decision

    def lookup(self, key: int) -> Backend | None:
        home = self._homes.get(key)
        if home is None:
            return None
        self._homes.move_to_end(key)
        return home.backend

    def insert(self, key: int, backend: Backend) -> None:
        self._homes[key] = _Home(backend)
        self._owned[backend] = self._owned.get(backend, 0) + 1
        if len(self._homes) > self._max_keys:
            evicted = self._homes.popitem(last=False)[1]
            self._owned[evicted.backend] -= 1
            self._demand[evicted.backend] -= evicted.heat
            self._total -= evicted.heat

    def count(self, key: int) -> None:
        home = self._homes[key]
        scale = self._scale
        home.heat += scale
        self._demand[home.backend] = self._demand.get(home.backend, 0.0) + scale
        self._total += scale
        self._scale = scale * GROWTH
        if self._scale > RESCALE_AT:
            self.rescale()

    def move(self, key: int, backend: Backend) -> None:
        home = self._homes[key]
        self._demand[home.backend] -= home.heat
        self._owned[home.backend] -= 1
        self._demand[backend] = self._demand.get(backend, 0.0) + home.heat
        self._owned[backend] = self._owned.get(backend, 0) + 1
        home.backend = backend

    def heat(self, key: int) -> float:
        return self._homes[key].heat

    def owned(self, backend: Backend) -> int:
        return self._owned.get(backend, 0)

    def demand(self, backend: Backend) -> float:
        return self._demand.get(backend, 0.0)

    def keys(self) -> int:
        return len(self._homes)

    def total(self) -> float:
        return self._total

    def scale(self) -> float:
        return self._scale

    def rescale(self) -> None:
        """Bring the growing scale back to 1 (every ~10^5 requests), shares unchanged."""
        factor = self._scale
        for backend in self._demand:
            self._demand[backend] = 0.0
        for home in self._homes.values():
            home.heat /= factor
            self._demand[home.backend] = self._demand.get(home.backend, 0.0) + home.heat
        self._total = sum(self._demand.values())
        self._scale = 1.0
