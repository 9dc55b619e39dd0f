"""Red team of cost, teams and budgets (issue 19): ways a client could spend past a budget, be
billed wrongly or make the gateway fail, and surprises for an operator.

Tests whose docstring says "Regression (red team)" pin a defect the review found, fixed since;
the others are probes that held.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pydantic
import pytest

from llmproxy.budgets import Budget
from llmproxy.config.model import Config
from llmproxy.keyfields import check_money
from llmproxy.usage.alerts import BudgetAlert
from llmproxy.usage.record import UsageRecord
from llmproxy.usage.spendbook import SpendBook
from llmproxy.usage.store import UsageStore, open_usage_store
from tests.gateway.test_usage_e2e import _gateway, _records
from tests.harness import RunningGateway, make_config, mock_backend
from tests.usage.test_delivery import make_record

KEY = "sk-budget-redteam"
CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
# Output only, 0.001 per token: a 3-token answer costs (and reserves) 0.003.
PRICING: dict[str, Any] = {"mock-model": {"input_per_million": 0.0, "output_per_million": 1000.0}}


def _config(
    url: str,
    budget: float = 0.006,
    period: str = "daily",
    pricing: dict[str, Any] | None = None,
    also: str = "",
    **limits: Any,
) -> Config:
    """One static key with a budget, the usage store on, ``also`` a second backend."""
    key = {"key": KEY, "name": "alice", "budget": budget, "budget_period": period}
    return make_config(
        [{"url": url}, *([{"url": also}] if also else [])],
        auth={"enabled": True, "pipeline": [{"name": "k", "type": "static", "keys": [key]}]},
        usage={"database": "usage.db"},
        rate_limit={"enabled": True, **limits},
        pricing=PRICING if pricing is None else pricing,
    )


async def _send(
    gw: RunningGateway, path: str, body: dict[str, Any] | None, method: str = "POST"
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, JSON body and headers of one request with the key."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, gw.url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}
        ) as response,
    ):
        payload: dict[str, Any] = await response.json(content_type=None)
        return response.status, payload, dict(response.headers)


def _spent(records: list[UsageRecord]) -> float:
    return sum(record.cost or 0.0 for record in records)


async def test_a_request_without_max_tokens_cannot_spend_past_the_budget(tmp_path: Path) -> None:
    """Regression: budget 0.006; two concurrent requests without ``max_tokens`` (default 3 tokens
    reserved each) are admitted and the backend answers 50 tokens each: 0.10 is spent, 16 times the
    budget. The gateway should cap the answer at what it reserved (send ``max_tokens`` when a budget
    applies) or refuse such requests, so the period's records stay within budget."""
    body = {"model": "mock-model", "messages": HI}
    async with mock_backend(tokens=50) as mock:
        async with _gateway(_config(mock.url, default_max_tokens=3), tmp_path) as (gw, sink):
            answers = await asyncio.gather(*(_send(gw, CHAT, body) for _ in range(2)))
            admitted = sum(1 for status, _, _ in answers if status == 200)
            records = await _records(sink, admitted)
    assert _spent(records) <= 0.006 + 1e-9


async def test_max_completion_tokens_above_max_tokens_cannot_overspend(tmp_path: Path) -> None:
    """Regression: ``max_tokens: 1, max_completion_tokens: 50`` reserves one token's cost (0.001)
    against a 0.006 budget, but the backend honours ``max_completion_tokens`` and bills 0.05. The
    reservation should take the larger of the two (or the one the backend obeys)."""
    body = {"model": "mock-model", "messages": HI, "max_tokens": 1, "max_completion_tokens": 50}
    async with mock_backend(tokens=100) as mock:
        async with _gateway(_config(mock.url), tmp_path) as (gw, sink):
            status, _, _ = await _send(gw, CHAT, body)
            records = await _records(sink, 1) if status == 200 else []
    assert _spent(records) <= 0.006 + 1e-9


async def test_a_request_larger_than_the_budget_is_not_told_the_budget_is_spent(
    tmp_path: Path,
) -> None:
    """Regression: a fresh budget of 100 and ``max_tokens: 200000`` (at most 200 USD): the answer
    says "the budget of this API key (100.00 USD daily) is spent; it renews at ..." with a
    Retry-After of hours. Nothing was spent and a smaller ``max_tokens`` would pass at once: the
    refusal should say the request's most cost exceeds what is left (and not send a client away
    until the period ends)."""
    body = {"model": "mock-model", "messages": HI, "max_tokens": 200_000}
    async with mock_backend(tokens=3) as mock:
        async with _gateway(_config(mock.url, budget=100.0), tmp_path) as (gw, _):
            status, refused, headers = await _send(gw, CHAT, body)
            small = await _send(gw, CHAT, {**body, "max_tokens": 3})
    assert status == 429
    assert small[0] == 200  # the budget was not spent at all
    assert "is spent" not in refused["error"]["message"]
    assert int(headers.get("Retry-After", "0")) <= 1


async def test_the_largest_counts_are_refused_cleanly(tmp_path: Path) -> None:
    """``max_tokens`` and ``n`` at 2**31-1 (a reservation of ~4.6e21 nano-units) are a clean 429
    budget_exceeded, never a 500; one past the bound is a 400."""
    body = {"model": "mock-model", "messages": HI, "max_tokens": 2**31 - 1, "n": 2**31 - 1}
    async with mock_backend(tokens=3) as mock:
        async with _gateway(_config(mock.url, budget=100.0), tmp_path) as (gw, _):
            status, refused, _ = await _send(gw, CHAT, body)
            too_big, _, _ = await _send(gw, CHAT, {**body, "max_tokens": 2**31})
            after, _, _ = await _send(gw, CHAT, {"model": "mock-model", "messages": HI})
    assert (status, refused["error"]["code"]) == (429, "budget_exceeded")
    assert too_big == 400
    assert after == 200  # the refused reservation left nothing held


@pytest.mark.parametrize("budget", [float("inf"), 1e300])
async def test_an_infinite_or_enormous_budget_never_makes_a_500(
    tmp_path: Path, budget: float
) -> None:
    """Regression: ``budget: .inf`` (or 1e300) in a static key passes config validation (``ge=0``
    without ``allow_inf_nan=False`` nor an upper bound), and ``round(budget * 10**9)`` raises
    OverflowError on every request: 500 internal_error. The config should refuse it (as
    keyfields.check_money refuses inf; 1e300 passes there too) or the request be served."""
    async with mock_backend(tokens=3) as mock:
        try:
            config = _config(mock.url, budget=budget)
        except pydantic.ValidationError:
            return  # refused where the operator sees it: correct
        async with _gateway(config, tmp_path) as (gw, _):
            status, _, _ = await _send(gw, CHAT, {"model": "mock-model", "messages": HI})
    assert status == 200


async def test_an_enormous_price_never_makes_a_500(tmp_path: Path) -> None:
    """Regression: ``input_per_million: 1e306`` is finite (``allow_inf_nan=False`` holds) but
    Price.of multiplies it by 1000 to inf, and ``round(inf)`` raises in the admission (and in the
    finish phase without a budget): 500. The config should bound prices."""
    pricing = {"mock-model": {"input_per_million": 1e306, "output_per_million": 1.0}}
    async with mock_backend(tokens=3) as mock:
        try:
            config = _config(mock.url, budget=1.0, pricing=pricing)
        except pydantic.ValidationError:
            return
        async with _gateway(config, tmp_path) as (gw, _):
            status, _, _ = await _send(
                gw, CHAT, {"model": "mock-model", "messages": HI, "max_tokens": 3}
            )
    assert status != 500


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"model": "mock-model", "input": "hi"}),
        ("/v1/messages/count_tokens", {"model": "mock-model", "messages": HI}),
    ],
)
async def test_requests_without_output_reserve_no_output(
    tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    """Regression: input is free, output 0.001 a token, budget 0.5 untouched. An embeddings or
    count_tokens request can cost nothing, yet it reserves ``default_max_tokens`` (1024) output
    tokens = 1.024 > 0.5 and is refused 429 budget_exceeded ("is spent")."""
    async with mock_backend(tokens=3) as mock:
        async with _gateway(_config(mock.url, budget=0.5), tmp_path) as (gw, _):
            status, answer, _ = await _send(gw, path, body)
    assert status == 200, answer


async def test_a_spent_budget_still_lists_models(tmp_path: Path) -> None:
    """A budget of 0 refuses generation (429 budget_exceeded) but not ``GET /v1/models``."""
    async with mock_backend(tokens=3) as mock:
        async with _gateway(_config(mock.url, budget=0.0), tmp_path) as (gw, _):
            listed, _, _ = await _send(gw, "/v1/models", None, "GET")
            status, refused, _ = await _send(gw, CHAT, {"model": "mock-model", "messages": HI})
    assert listed == 200
    assert (status, refused["error"]["code"]) == (429, "budget_exceeded")


async def test_a_backend_error_after_admission_charges_nothing(tmp_path: Path) -> None:
    """A backend 500 after admission: the record costs 0 and the reservation is released, so a
    budget for exactly two requests still admits two once the backend recovers."""
    body = {"model": "mock-model", "messages": HI, "max_tokens": 3}
    async with mock_backend(tokens=3, fault="500") as mock:
        async with _gateway(_config(mock.url), tmp_path) as (gw, sink):
            failed, _, _ = await _send(gw, CHAT, body)
            await asyncio.sleep(0.1)  # the settlement runs as its own task
            mock.settings = dataclasses.replace(mock.settings, fault=None)
            ok = [(await _send(gw, CHAT, body))[0] for _ in range(3)]
            records = await _records(sink, 3)
    assert failed >= 500
    assert ok == [200, 200, 429]
    assert _spent(records) == pytest.approx(0.006)


async def test_a_request_retried_on_another_backend_is_charged_once(tmp_path: Path) -> None:
    """Two backends, one answering 500: every request is retried on the other and charged
    once; a budget for two admits exactly two and the records add up to it."""
    body = {"model": "mock-model", "messages": HI, "max_tokens": 3}
    async with mock_backend(tokens=3, fault="500") as bad, mock_backend(tokens=3) as good:
        config = _config(bad.url, also=good.url)
        async with _gateway(config, tmp_path) as (gw, sink):
            statuses = [(await _send(gw, CHAT, body))[0] for _ in range(3)]
            records = await _records(sink, 2)  # a refusal before forwarding has no record
    assert statuses == [200, 200, 429]
    assert sorted(r.cost or 0.0 for r in records) == [0.003, 0.003]
    assert _spent(records) == pytest.approx(0.006)


async def test_a_client_leaving_mid_stream_frees_the_rest_of_its_reservation(
    tmp_path: Path,
) -> None:
    """A streamed request reserving 5 tokens (0.005 of 0.006) whose client leaves after the
    first chunk is charged for what it received, and the rest of the budget is usable again."""
    body = {"model": "mock-model", "messages": HI, "max_tokens": 5, "stream": True}
    async with mock_backend(tokens=5, itl=0.2) as mock:
        async with _gateway(_config(mock.url), tmp_path) as (gw, sink):
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    gw.url + CHAT, json=body, headers={"Authorization": f"Bearer {KEY}"}
                ) as response,
            ):
                assert response.status == 200
                await response.content.readany()
            (record,) = await _records(sink, 1)
            await asyncio.sleep(0.1)
            status, _, _ = await _send(gw, CHAT, {**body, "stream": False, "max_tokens": 4})
    assert record.cost is not None
    assert record.cost < 0.005
    assert status == 200


@pytest.fixture
async def usage_store(tmp_path: Path) -> AsyncIterator[UsageStore]:
    store = open_usage_store("usage.db", tmp_path)
    await store.open()
    yield store
    await store.close()


async def test_a_zero_budget_raises_no_alert_while_nothing_is_spent(
    usage_store: UsageStore,
) -> None:
    """Regression: an operator who blocks a team with ``--budget 0`` gets "budget of team x: 100 %
    spent (0.00 of 0.00 USD)" alerts and webhook events on its first request."""
    raised: list[BudgetAlert] = []
    book = SpendBook(usage_store, outbox=True, on_alert=raised.append)
    await book.spent("team:blocked", "blocked", Budget(0.0, "daily"))
    await book.refresh()
    assert raised == []


async def test_raising_a_budget_rearms_its_alerts(usage_store: UsageStore) -> None:
    """Regression: budget 1.0 a day, 0.85 spent: the 80 % alert. The operator raises the budget to
    10.0; spend reaches 9.0 (90 % of the new budget) and no alert comes — neither from this
    process's memory nor from the store (the same id ``budget:key:a:<day>:0.8``)."""
    now = time.time()
    raised: list[BudgetAlert] = []
    book = SpendBook(usage_store, outbox=True, on_alert=raised.append)
    await usage_store.write([make_record(1, key_id="a", cost=0.85, time=now - 1)], outbox=False)
    await book.spent("key:a", "alice", Budget(1.0, "daily"))
    await book.refresh()
    assert [a.threshold for a in raised] == [0.8]
    await book.spent("key:a", "alice", Budget(10.0, "daily"))
    await usage_store.write([make_record(2, key_id="a", cost=8.15, time=now - 1)], outbox=False)
    await book.refresh()
    assert [(a.threshold, a.budget) for a in raised] == [(0.8, 1.0), (0.8, 10.0)]


def test_the_stores_budget_check_refuses_amounts_that_overflow() -> None:
    """Regression: ``keyfields.check_money`` (teams add --budget, keys add --budget, PATCH /teams)
    takes 1e300, which ``budget_limits`` cannot turn into nano-units."""
    with pytest.raises(ValueError, match="budget"):
        check_money("budget", 1e300)
