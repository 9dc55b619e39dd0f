"""A team: keys that share limits and a budget, and whose cost is reported together.

Teams are stored with the keys (the builtin key store, SQLite or PostgreSQL) and managed with
``llmproxy teams``. The request path reads a team by name from the snapshot's
:class:`TeamDirectory` (in memory, refreshed when the key store changes): a key's limits and its
team's both apply, the stricter wins, and the team's budget is charged beside the key's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Protocol

from llmproxy.budgets import Budget

LIMIT_PREFIX: Final = "team:"
"""A team's id in the limit store (``team:<name>``). Builtin key ids start ``key_``, keys
without an id ``sha256:``: a team can never take a key's buckets. (A key id from an external
provider's data must not start with ``team:``.)"""


@dataclass(frozen=True, slots=True)
class Team:
    """One team's limits and budget (None: that dimension is not limited)."""

    name: str
    description: str = ""
    budget: Budget | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    total_quota: int | None = None
    """Tokens the team's keys may use together."""
    used_quota: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def limit_id(self) -> str:
        """The team's id in the limit store: see :data:`LIMIT_PREFIX`."""
        return LIMIT_PREFIX + self.name

    @property
    def limited(self) -> bool:
        """The team has a limit the limit store enforces (rate, tokens, concurrency, quota)."""
        return (
            self.rpm is not None
            or self.tpm is not None
            or self.max_concurrent is not None
            or self.total_quota is not None
        )

    def fields(self) -> dict[str, object]:
        """The fields of :data:`~llmproxy.teamfields.TEAM_FIELDS`, as JSON-ready values."""
        return {
            "name": self.name,
            "description": self.description,
            "budget": None if self.budget is None else self.budget.amount,
            "period": "monthly" if self.budget is None else self.budget.period,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_concurrent": self.max_concurrent,
            "total_quota": self.total_quota,
            "used_quota": self.used_quota,
        }


class TeamDirectory(Protocol):
    """The teams the request path knows, by name."""

    def get(self, name: str) -> Team | None:
        """The team called ``name``; None for an unknown name."""
        ...


class TeamIndex:
    """A :class:`TeamDirectory` in memory: the builtin provider fills it from the key store
    (at start, and whenever the store's teams changed) with one reference swap, so a request
    sees the old teams or the new ones, whole. An empty one stands in without a key store."""

    __slots__ = ("_teams",)

    def __init__(self, teams: Iterable[Team] = ()) -> None:
        self._teams: Mapping[str, Team] = MappingProxyType({t.name: t for t in teams})

    def get(self, name: str) -> Team | None:
        return self._teams.get(name)

    def replace(self, teams: Iterable[Team]) -> None:
        """Hold exactly ``teams`` from now on."""
        self._teams = MappingProxyType({t.name: t for t in teams})

    def __len__(self) -> int:
        return len(self._teams)
