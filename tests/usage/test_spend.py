"""Cost in the usage store: spend per key and team and day (what budgets count from), the summary
by user and team with cost, and budget alerts raised once — on SQLite and PostgreSQL alike."""

from __future__ import annotations

import json

import pytest

from llmproxy.budgets import Budget, day_of, period_bounds
from llmproxy.pricing import NANOS
from llmproxy.usage.alerts import BudgetAlert, alert_id
from llmproxy.usage.delivery import events_body, is_event
from llmproxy.usage.record import UsageRecord
from llmproxy.usage.spend import spend_rows
from llmproxy.usage.spendbook import SpendBook
from llmproxy.usage.store import UsageStore
from tests.usage.test_delivery import make_record

DAY = 86_400.0
T0 = 1_796_083_200.0  # 2026-12-01 00:00 UTC


def test_spend_rows_add_up_per_key_team_and_day() -> None:
    """A batch's costs become one row per key and per team and UTC day; free records add none."""
    records = [
        make_record(1, key_id="a", team="t", cost=0.25, time=T0 + 10),
        make_record(2, key_id="a", team="t", cost=0.5, time=T0 + 20),
        make_record(3, key_id="b", team="t", cost=1.0, time=T0 + DAY + 1),
        make_record(4, key_id="b", team="", cost=0.0, time=T0 + 30),
    ]
    rows = sorted(spend_rows(records))
    day = day_of(T0)
    assert rows == [
        ("key:a", day, 750_000_000),
        ("key:b", day + 1, NANOS),
        ("team:t", day, 750_000_000),
        ("team:t", day + 1, NANOS),
    ]


async def test_spend_is_summed_per_scope_from_a_day_on(usage_store: UsageStore) -> None:
    """What a key and a team spent from a day on, over several writes; a scope that spent
    nothing is absent."""
    await usage_store.write(
        [
            make_record(1, key_id="a", team="t", cost=0.1, time=T0 - DAY),
            make_record(2, key_id="a", team="t", cost=0.2, time=T0 + 5),
        ],
        outbox=False,
    )
    await usage_store.write(
        [make_record(3, key_id="b", team="t", cost=0.3, time=T0 + DAY)], outbox=False
    )
    spent = await usage_store.spent(["key:a", "key:b", "team:t", "team:none"], day_of(T0))
    assert spent == {"key:a": 200_000_000, "key:b": 300_000_000, "team:t": 500_000_000}
    everything = await usage_store.spent(["team:t"], 0)
    assert everything == {"team:t": 600_000_000}


async def test_summary_rows_carry_user_team_and_cost(usage_store: UsageStore) -> None:
    """The summary sums cost per key, model and team, the biggest spender first."""
    await usage_store.write(
        [
            make_record(1, key_id="a", user_id="u1", team="t", cost=0.5, time=T0),
            make_record(1, key_id="a", user_id="u1", team="t", cost=0.25, time=T0 + 1),
            make_record(50, key_id="b", user_id="u2", team="", cost=0.0, time=T0 + 2),
        ],
        outbox=False,
    )
    rows = [row.as_json() for row in await usage_store.summary(T0 - 1)]
    assert [(r["key_id"], r["user_id"], r["team"], r["cost"], r["requests"]) for r in rows] == [
        ("a", "u1", "t", 0.75, 2),
        ("b", "u2", "", 0.0, 1),
    ]


def _alert(threshold: float) -> BudgetAlert:
    return BudgetAlert(
        id=alert_id("team:t", T0, 10.0, threshold),
        time=T0 + 100,
        scope="team",
        name="t",
        period="monthly",
        period_start=T0,
        period_end=T0 + 31 * DAY,
        threshold=threshold,
        budget=10.0,
        spent=8.5,
        currency="USD",
    )


async def test_an_alert_is_raised_once_and_queued_as_an_event(usage_store: UsageStore) -> None:
    """The first raise of an alert id is new and joins the outbox; later ones (any gateway's)
    are not, even after the first was delivered."""
    assert await usage_store.raise_alert(_alert(0.8), outbox=True)
    assert not await usage_store.raise_alert(_alert(0.8), outbox=True)
    pending = await usage_store.pending(10)
    assert [p.id for p in pending] == ["budget:team:t:1796083200:10:0.8"]
    assert is_event(pending[0].body)
    event = json.loads(events_body([pending[0].body]))["events"][0]
    assert event["event"] == "budget_alert"
    assert event["threshold"] == 0.8
    async with usage_store.claim(10) as claim:
        await claim.delivered([p.id for p in claim.records])
    assert not await usage_store.raise_alert(_alert(0.8), outbox=True)
    assert await usage_store.pending(10) == []
    assert await usage_store.raise_alert(_alert(1.0), outbox=False)
    assert await usage_store.pending(10) == []


def test_a_record_is_not_an_event() -> None:
    """A usage record, even one whose metadata names an event, is delivered as a record."""
    record = make_record(1, metadata={"event": "budget_alert"})
    assert not is_event(record.to_json())
    assert is_event(b'{"id": "x", "event": "budget_alert"}')  # PostgreSQL's key order


async def test_the_spend_book_reads_once_and_raises_each_threshold_once(
    usage_store: UsageStore,
) -> None:
    """The book waits for the store on a scope's first request of a period, then serves from
    memory; its refresh sees new spend and raises 80 % and 100 % once each."""
    now = [T0 + 3600.0]
    raised: list[BudgetAlert] = []
    book = SpendBook(usage_store, outbox=True, on_alert=raised.append, clock=lambda: now[0])
    budget = Budget(1.0, "daily")
    await usage_store.write([make_record(1, key_id="a", cost=0.5, time=now[0] - 60)], outbox=False)
    spent, start, end = await book.spent("key:a", "alice", budget)
    assert (spent, start, end) == (500_000_000, *period_bounds("daily", now[0]))
    await usage_store.write([make_record(2, key_id="a", cost=0.35, time=now[0] - 30)], outbox=False)
    assert (await book.spent("key:a", "alice", budget))[0] == 500_000_000  # from memory
    await book.refresh()
    assert (await book.spent("key:a", "alice", budget))[0] == 850_000_000
    assert [(a.threshold, a.label, a.spent) for a in raised] == [(0.8, "alice", 0.85)]
    await usage_store.write([make_record(3, key_id="a", cost=0.2, time=now[0] - 10)], outbox=False)
    await book.refresh()
    await book.refresh()
    assert [a.threshold for a in raised] == [0.8, 1.0]
    # The next day is a new period: nothing spent yet.
    now[0] += DAY
    assert (await book.spent("key:a", "alice", budget))[0] == 0


@pytest.mark.parametrize("cost", [0.000_000_05, 123.456_789_012])
def test_record_cost_round_trips_to_the_same_nanos(cost: float) -> None:
    """A record's cost, read back, gives the nano-units the budgets counted."""
    nanos = round(cost * NANOS)
    record = UsageRecord.from_json(make_record(1, cost=nanos / NANOS).to_json())
    assert round(record.cost * NANOS) == nanos
