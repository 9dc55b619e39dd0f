"""Spend per key and per team and UTC day, kept by the usage store beside the records.

A budget's period can be longer than the records a store keeps (``usage.keep_records`` trims
old records), so what a key or a team spent is counted apart: each batch of records written adds
its costs to one row per (scope, day), in the transaction that stores the records — a record
stored once is counted once, and a crash loses neither. A period's spend is the sum of its days
(:func:`llmproxy.budgets.period_bounds` periods all start at a day's start).
"""

from __future__ import annotations

from collections.abc import Iterable

from llmproxy.budgets import day_of, scope
from llmproxy.pricing import NANOS
from llmproxy.usage.record import UsageRecord


def spend_rows(records: Iterable[UsageRecord]) -> list[tuple[str, int, int]]:
    """``(scope, day, nano-units)`` to add for ``records``: one row per key and per team and
    day, for the records that cost something."""
    sums: dict[tuple[str, int], int] = {}
    for record in records:
        if record.cost <= 0:
            continue
        nanos = round(record.cost * NANOS)
        day = day_of(record.time)
        if record.key_id:
            where = (scope("key", record.key_id), day)
            sums[where] = sums.get(where, 0) + nanos
        if record.team:
            where = (scope("team", record.team), day)
            sums[where] = sums.get(where, 0) + nanos
    return [(name, day, nanos) for (name, day), nanos in sums.items()]
