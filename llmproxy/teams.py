"""A team: keys that share limits and a budget, and whose cost is reported together.

Teams are stored with the keys (the builtin key store, SQLite or PostgreSQL) and managed with
``llmproxy teams``. The request path reads a team by name from the snapshot's
:class:`TeamDirectory` (in memory, refreshed when the key store changes): a key's limits and its
team's both apply, the stricter wins, and the team's budget is charged beside the key's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from llmproxy.budgets import Budget


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


class TeamDirectory(Protocol):
    """The teams the request path knows, by name."""

    def get(self, name: str) -> Team | None:
        """The team called ``name``; None for an unknown name."""
        ...
