"""A key's own budget in money, enforced in one process: requests are admitted while what they
can cost fits, then refused with 429 ``budget_exceeded`` and the period's end as Retry-After; a
restart keeps what was spent (the usage store's spend table is the floor)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from llmproxy.budgets import period_bounds
from llmproxy.config.model import Config
from tests.gateway.test_usage_e2e import _gateway, _records
from tests.harness import RunningGateway, make_config, mock_backend

KEY = "sk-budget-test"
QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
# Output only, 0.001 per token: a 3-token answer costs (and reserves) 0.003.
PRICING = {"mock-model": {"input_per_million": 0.0, "output_per_million": 1000.0}}


def _config(url: str, budget: float, period: str, **limits: Any) -> Config:
    key = {"key": KEY, "name": "alice", "budget": budget, "budget_period": period}
    return make_config(
        [{"url": url}],
        auth={"enabled": True, "pipeline": [{"name": "k", "type": "static", "keys": [key]}]},
        usage={"database": "usage.db"},
        rate_limit={"enabled": True, **limits},
        pricing=PRICING,
    )


async def _chat(gw: RunningGateway) -> None:
    async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0) as client:
        await client.chat.completions.create(model="mock-model", messages=QUESTION, max_tokens=3)


async def _refused(gw: RunningGateway) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as refused:
        await _chat(gw)
    return refused.value


async def test_a_spent_budget_refuses_until_its_period_ends(tmp_path: Path) -> None:
    """Budget 0.006 a day: two 0.003 requests pass, the third is 429 budget_exceeded with
    Retry-After at the end of the UTC day; after a restart it is still spent."""
    async with mock_backend(tokens=3) as mock:
        config = _config(mock.url, 0.006, "daily")
        async with _gateway(config, tmp_path) as (gw, sink):
            await _chat(gw)
            await _chat(gw)
            refused = await _refused(gw)
            records = await _records(sink, 2)
        assert refused.code == "budget_exceeded"
        assert "this API key" in refused.message
        assert "0.006 USD daily) is spent" in refused.message
        _, end = period_bounds("daily", time.time())
        assert end is not None
        wait = int(refused.response.headers["retry-after"])
        assert end - time.time() - 5 <= wait <= end - time.time() + 5
        assert sorted(r.cost for r in records) == [0.003, 0.003]
        # A new process (the limit store starts empty) counts from what the usage store holds.
        async with _gateway(config, tmp_path) as (gw, _):
            again = await _refused(gw)
        assert again.code == "budget_exceeded"


async def test_a_total_budget_never_renews(tmp_path: Path) -> None:
    """A total budget refuses without Retry-After: waiting will not help."""
    async with mock_backend(tokens=3) as mock:
        async with _gateway(_config(mock.url, 0.003, "total"), tmp_path) as (gw, _):
            await _chat(gw)
            refused = await _refused(gw)
    assert refused.code == "budget_exceeded"
    assert "retry-after" not in refused.response.headers
    assert "0.003 USD in total) is spent" in refused.message


async def test_requests_in_flight_hold_the_rest_of_a_budget(tmp_path: Path) -> None:
    """Three slow requests against a budget for two: the third is refused while the first two
    are in flight (Retry-After 1, they may settle lower)."""
    async with mock_backend(tokens=3, ttft=0.5) as mock:
        async with _gateway(_config(mock.url, 0.006, "monthly"), tmp_path) as (gw, _):
            first = asyncio.create_task(_chat(gw))
            second = asyncio.create_task(_chat(gw))
            await asyncio.sleep(0.2)
            refused = await _refused(gw)
            await asyncio.gather(first, second)
    assert refused.code == "budget_exceeded"
    assert "in flight" in refused.message
    assert refused.response.headers["retry-after"] == "1"


async def test_count_tokens_is_never_charged_even_when_the_budget_is_spent(
    tmp_path: Path,
) -> None:
    """count_tokens costs nothing: a spent budget still lets it through (chat is refused)."""
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}
    async with mock_backend(tokens=3) as mock:
        async with _gateway(_config(mock.url, 0.003, "total"), tmp_path) as (gw, _):
            await _chat(gw)
            assert (await _refused(gw)).code == "budget_exceeded"
            async with httpx.AsyncClient() as client:
                counted = await client.post(
                    gw.url + "/v1/messages/count_tokens",
                    json=body,
                    headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
                )
    assert counted.status_code == 200, counted.text
    assert counted.json()["input_tokens"] > 0
