"""Budgets in money over a period, defined once: key store, teams, limits, CLI and docs read this.

A budget is an amount in ``pricing_currency`` that a key's or a team's requests may cost over a
:data:`Period`. Periods are calendar periods in UTC — an operator reads "monthly" as "this
calendar month", and every replica agrees on when one starts without talking to the others::

    period_bounds("monthly", time.time())   # (start of this month, start of the next), UTC
    period_bounds("total", time.time())     # (0.0, None): never resets
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final, Literal

MAX_BUDGET: Final = 9_000_000.0
"""The largest budget: budgets are counted exactly in nano-units, and Redis's scripts count in
doubles, exact to 2⁵³ (about 9.007 × 10⁶ units)."""

Period = Literal["daily", "weekly", "monthly", "total"]
PERIODS: Final[tuple[Period, ...]] = ("daily", "weekly", "monthly", "total")


@dataclass(frozen=True, slots=True)
class Budget:
    """What a key's or a team's requests may cost over one period."""

    amount: float
    """In the configured ``pricing_currency``."""
    period: Period = "monthly"


def check_period(field: str, value: object) -> Period:
    """``value`` as a period; ``ValueError`` naming ``field`` otherwise."""
    if value not in PERIODS:
        raise ValueError(f"{field}: expected one of {', '.join(PERIODS)}, got {value!r}")
    return value


def period_bounds(period: Period, now: float) -> tuple[float, float | None]:
    """The Unix times the period containing ``now`` starts and ends (None: never ends)."""
    if period == "total":
        return 0.0, None
    day = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        start = day
        end = start + dt.timedelta(days=1)
    elif period == "weekly":
        start = day - dt.timedelta(days=day.weekday())  # Monday
        end = start + dt.timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
    return start.timestamp(), end.timestamp()


DAY: Final = 86_400
"""Seconds in a (UTC) day: spend is kept per scope and day, and every period starts at a day's
start, so a period's spend is a sum of whole days."""

ScopeKind = Literal["key", "team"]


def scope(kind: ScopeKind, name: str) -> str:
    """Whose spend: ``key:<key id>`` or ``team:<name>`` (the spend table's and the limit
    store's name for it)."""
    return f"{kind}:{name}"


def day_of(when: float) -> int:
    """The UTC day ``when`` falls on, counted from the epoch."""
    return int(when // DAY)
