"""A budget alert: the event the usage webhook receives when a budget passes 80 % or 100 %.

Delivered through the same outbox as usage records (at least once, signed, retried), but as a
distinct event in a body of its own, so a receiver that only reads ``records`` is not confused::

    POST <usage_hook.url>
    {"events": [{"event": "budget_alert", "id": "budget:team:research:1796083200:100:0.8",
                 "scope": "team", "name": "research", "threshold": 0.8,
                 "budget": 100.0, "spent": 80.4, "currency": "USD", "period": "monthly", ...}]}

``id`` is the same for every gateway that notices the crossing, so a receiver deduplicates on it
like on a record's.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

EVENT: Final = "budget_alert"
EVENT_PREFIX: Final = b'{"event":"budget_alert"'
"""How a stored outbox body that is an alert (not a usage record) begins."""


class BudgetAlert(msgspec.Struct, frozen=True, kw_only=True):
    """One budget passing one threshold in one period."""

    event: Literal["budget_alert"] = "budget_alert"
    id: str
    time: float
    scope: str
    """``key`` or ``team``."""
    name: str
    """The key's id or the team's name."""
    label: str = ""
    """The key's name (for a key's budget)."""
    period: str
    period_start: float
    period_end: float | None
    threshold: float
    """0.8 or 1.0."""
    budget: float
    spent: float
    currency: str

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


def alert_id(scope: str, period_start: float, budget: float, threshold: float) -> str:
    """The one id of the alert for ``scope`` passing ``threshold`` of ``budget`` in the period
    from ``period_start`` (a budget raised mid-period is a new line to cross, with alerts of its
    own)."""
    return f"budget:{scope}:{int(period_start)}:{budget:g}:{threshold:g}"
