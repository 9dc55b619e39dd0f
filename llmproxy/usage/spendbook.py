"""What each budget's scope spent in its current period, for the request path, without a query
per request — and the alerts when a budget passes 80 % and 100 %.

The limit store counts a budget's spend while the process (or Redis) lives; the usage store's
spend table (:mod:`llmproxy.usage.spend`) is the record that outlives both. A budget's admission
counts from the larger of the two (the ``used_quota`` floor of a quota), so a restart, a Redis
flush or another replica's spend is never forgotten. :class:`SpendBook` keeps the table's answer
per (scope, period) in memory: the first request of a scope in a period waits for one query;
later ones read the memory, refreshed every :data:`REFRESH` seconds in the background for the
scopes used lately.

The same refresh notices budgets that passed a threshold (:data:`THRESHOLDS`) and raises one
:class:`~llmproxy.usage.alerts.BudgetAlert` per (scope, period, threshold) for the whole fleet:
the usage store keeps which were raised, so two workers or replicas never send the same one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from llmproxy.budgets import Budget, day_of, period_bounds
from llmproxy.pricing import NANOS
from llmproxy.usage.alerts import BudgetAlert, alert_id
from llmproxy.usage.store import UsageStore

log = logging.getLogger("llmproxy.usage")

REFRESH: Final = 5.0
"""Seconds between two reads of the spend table for the scopes in use."""

FORGET_AFTER: Final = 900.0
"""Seconds after its last request a scope is no longer refreshed."""

THRESHOLDS: Final = (0.8, 1.0)
"""Fractions of a budget at which an alert is raised, once per period."""


@dataclass(slots=True)
class _Entry:
    scope: str
    """``key:<id>`` or ``team:<name>``."""
    label: str
    """A name for people: the key's name or the team's."""
    budget: Budget
    start: float
    end: float | None
    spent: int
    """Nano-units the spend table held at the last read."""
    used_at: float
    raised: set[float]


Spent = tuple[int, float, float | None]
"""Nano-units spent in the period, and the period's start and end (None: never ends)."""

AlertSink = Callable[[BudgetAlert], None]
"""Told of each alert this process raised (metrics, logs)."""


async def period_spend(store: UsageStore, scope: str, start: float) -> int:
    """Nano-units ``scope`` spent in the period from ``start``, by the store's spend table (a
    period starts at a UTC day's start, and the table counts whole days)."""
    return (await store.spent([scope], day_of(start))).get(scope, 0)


class SpendBook:
    """Spend per budget scope and period, as the usage store last said; see the module."""

    def __init__(
        self,
        store: UsageStore | None,
        *,
        currency: str = "USD",
        outbox: bool = False,
        on_alert: AlertSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.currency = currency
        self._outbox = outbox
        self._on_alert = on_alert
        self._clock = clock
        self._entries: dict[tuple[str, float], _Entry] = {}
        self._task: asyncio.Task[None] | None = None

    async def spent(
        self, scope: str, label: str, budget: Budget
    ) -> tuple[int, float, float | None]:
        """Nano-units ``scope`` spent in the period of ``budget`` now, and the period's start and
        end (None: a total budget never resets). Waits for the store the first time a scope is
        seen in a period; a store that fails counts as nothing spent yet (the limit store's own
        count still holds)."""
        now = self._clock()
        start, end = period_bounds(budget.period, now)
        entry = self._entries.get((scope, start))
        if entry is None:
            spent = await self._read(scope, start)
            entry = self._entries.setdefault(
                (scope, start), _Entry(scope, label, budget, start, end, spent, now, set())
            )
        entry.used_at = now
        if budget != entry.budget:
            # A new amount (or period) re-arms the alerts: 80 % of it is a new line to cross.
            entry.budget = budget
            entry.raised.clear()
        entry.label = label
        return entry.spent, start, end

    async def _read(self, scope: str, start: float) -> int:
        if self._store is None:
            return 0
        try:
            return await period_spend(self._store, scope, start)
        except Exception as exc:
            log.warning("budgets: cannot read what %s spent: %s", scope, exc)
            return 0

    def start(self, store: UsageStore, *, outbox: bool) -> None:
        """Read ``store`` (opened) from now on, and refresh in the background until
        :meth:`close`; alerts join its outbox when ``outbox``."""
        self._store = store
        self._outbox = outbox
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="budget-spend")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(REFRESH)
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("budgets: refreshing spend failed: %s", exc)

    async def refresh(self) -> None:
        """Read the spend of every scope used lately, and raise the alerts it calls for."""
        assert self._store is not None
        now = self._clock()
        by_day: dict[int, list[_Entry]] = {}
        for key, entry in list(self._entries.items()):
            if now - entry.used_at > FORGET_AFTER or (entry.end is not None and entry.end <= now):
                del self._entries[key]
                continue
            by_day.setdefault(day_of(entry.start), []).append(entry)
        for day, entries in by_day.items():
            spent = await self._store.spent([e.scope for e in entries], day)
            for entry in entries:
                entry.spent = max(entry.spent, spent.get(entry.scope, 0))
                await self._check(entry, now)

    async def _check(self, entry: _Entry, now: float) -> None:
        amount = round(entry.budget.amount * NANOS)
        if amount <= 0:
            return  # a zero budget blocks the scope; that is no news worth an alert
        for threshold in THRESHOLDS:
            if threshold in entry.raised or entry.spent < amount * threshold:
                continue
            entry.raised.add(threshold)
            alert = BudgetAlert(
                id=alert_id(entry.scope, entry.start, entry.budget.amount, threshold),
                time=now,
                scope=entry.scope.partition(":")[0],
                name=entry.scope.partition(":")[2],
                label=entry.label,
                period=entry.budget.period,
                period_start=entry.start,
                period_end=entry.end,
                threshold=threshold,
                budget=entry.budget.amount,
                spent=entry.spent / NANOS,
                currency=self.currency,
            )
            assert self._store is not None
            if await self._store.raise_alert(alert, outbox=self._outbox):
                log.warning(
                    "budget of %s %s: %.0f %% spent (%.2f of %.2f %s, %s)",
                    alert.scope,
                    alert.label or alert.name,
                    alert.spent / alert.budget * 100 if alert.budget else 100.0,
                    alert.spent,
                    alert.budget,
                    alert.currency,
                    alert.period,
                )
                if self._on_alert is not None:
                    self._on_alert(alert)
