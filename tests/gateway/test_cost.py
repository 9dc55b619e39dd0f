"""Cost end to end: each usage record's ``cost`` is its tokens at the configured prices —
streamed, non-streamed, cut short by the client, with prefix-cached prompt tokens — and
``llmproxy_cost_total`` adds up the same numbers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from llmproxy.config.model import Config
from llmproxy.usage.record import UsageRecord
from tests.gateway.test_usage_e2e import _gateway, _records
from tests.harness import RunningGateway, make_config, mock_backend

KEY = "sk-cost-test"
PRICES = {"input_per_million": 3.0, "cached_input_per_million": 0.3, "output_per_million": 15.0}
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "what is the price of a token, in a few words?"}
]


def _config(url: str, pricing: dict[str, Any] | None = None) -> Config:
    return make_config(
        [{"url": url, "models": ["mock-model", "free-model"]}],
        auth={
            "enabled": True,
            "pipeline": [
                {"name": "keys", "type": "static", "keys": [{"key": KEY, "name": "alice"}]}
            ],
        },
        usage={"database": "usage.db"},
        pricing=pricing if pricing is not None else {"mock-model": PRICES},
        pricing_currency="EUR",
    )


def _expected(record: UsageRecord, cached: int = 0) -> float:
    """3 per million prompt tokens, 0.3 per million cached ones, 15 per million completion."""
    nanos = (record.prompt_tokens - cached) * 3000 + cached * 300 + record.completion_tokens * 15000
    return round(nanos) / 1e9


async def _cost_metric(gw: RunningGateway) -> dict[tuple[str, str], float]:
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as answer:
        text = await answer.text()
    return {
        (sample.labels["model"], sample.labels["team"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "llmproxy_cost"
        for sample in family.samples
        if sample.name == "llmproxy_cost_total"
    }


async def _chat(gw: RunningGateway, model: str = "mock-model", *, stream: bool = False) -> int:
    """One chat completion through the openai SDK; answers the completion tokens it reported
    (streamed: the content chunks it read)."""
    async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0) as client:
        if not stream:
            reply = await client.chat.completions.create(model=model, messages=QUESTION)
            assert reply.usage is not None
            return reply.usage.completion_tokens
        chunks = await client.chat.completions.create(model=model, messages=QUESTION, stream=True)
        return sum(
            [1 async for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
        )


async def test_streamed_and_non_streamed_records_cost_their_tokens(tmp_path: Path) -> None:
    """Both records cost prompt × input + completion × output; the metric sums them under the
    model and no team."""
    async with mock_backend(tokens=12) as mock, _gateway(_config(mock.url), tmp_path) as (gw, sink):
        assert await _chat(gw) == 12
        assert await _chat(gw, stream=True) == 12
        records = await _records(sink, 2)
        metric = await _cost_metric(gw)
    assert {r.stream for r in records} == {False, True}
    for record in records:
        assert record.completion_tokens == 12
        assert record.prompt_tokens > 0
        assert record.cost == _expected(record) > 0
    assert metric[("mock-model", "none")] == pytest.approx(sum(r.cost for r in records))


async def test_a_client_that_leaves_mid_stream_pays_for_what_it_got(tmp_path: Path) -> None:
    """Cut after a few tokens: the record is cancelled and costs the tokens billed for it."""
    async with (
        mock_backend(tokens=500, itl=0.01) as mock,
        _gateway(_config(mock.url), tmp_path) as (gw, sink),
    ):
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
        async with client:
            stream = await client.chat.completions.create(
                model="mock-model", messages=QUESTION, stream=True
            )
            seen = 0
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    seen += 1
                if seen == 5:
                    break
            await stream.close()
        (record,) = await _records(sink, 1)
    assert record.cancelled
    assert 5 <= record.completion_tokens < 500
    assert record.cost == _expected(record) > 0


async def test_a_model_without_a_price_costs_nothing_and_star_prices_the_rest(
    tmp_path: Path,
) -> None:
    """Without an entry a model costs 0; ``"*"`` prices every model not listed."""
    async with mock_backend(tokens=4, models=("mock-model", "free-model")) as mock:
        async with _gateway(_config(mock.url), tmp_path / "a") as (gw, sink):
            await _chat(gw, "free-model")
            (free,) = await _records(sink, 1)
        pricing = {"*": {"input_per_million": 3.0, "output_per_million": 15.0}}
        async with _gateway(_config(mock.url, pricing), tmp_path / "b") as (gw, sink):
            await _chat(gw, "free-model")
            (starred,) = await _records(sink, 1)
    assert free.cost == 0.0
    assert starred.cost == _expected(starred) > 0


@contextlib.asynccontextmanager
async def _caching_backend() -> AsyncIterator[str]:
    """A backend that reports 80 of its 100 prompt tokens as read from its prefix cache, as
    vLLM does (``prompt_tokens_details.cached_tokens``), streamed and not."""
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 2,
        "total_tokens": 102,
        "prompt_tokens_details": {"cached_tokens": 80},
    }

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        message = {"role": "assistant", "content": "ok"}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"id": "c1", "object": "chat.completion.chunk", "model": body["model"]}
        for token in ("o", "k"):
            delta = {"index": 0, "delta": {"content": token}, "finish_reason": None}
            await response.write(b"data: " + _json({**chunk, "choices": [delta]}) + b"\n\n")
        await response.write(b"data: " + _json({**chunk, "choices": [], "usage": usage}) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


async def test_prefix_cached_prompt_tokens_are_priced_as_cached(tmp_path: Path) -> None:
    """80 cached of 100 prompt tokens: 20 × 3 + 80 × 0.3 + 2 × 15 per million, streamed or not;
    the record says how many were cached."""
    async with _caching_backend() as url, _gateway(_config(url), tmp_path) as (gw, sink):
        await _chat(gw)
        await _chat(gw, stream=True)
        records = await _records(sink, 2)
    for record in records:
        assert (record.prompt_tokens, record.cached_tokens, record.completion_tokens) == (
            100,
            80,
            2,
        )
        assert record.cost == (20 * 3000 + 80 * 300 + 2 * 15000) / 1e9


async def test_summary_answers_cost_in_the_configured_currency(tmp_path: Path) -> None:
    """The store's summary carries the records' cost."""
    async with mock_backend(tokens=3) as mock, _gateway(_config(mock.url), tmp_path) as (gw, sink):
        await _chat(gw)
        (record,) = await _records(sink, 1)
        (row,) = await sink.store.summary(0)
        await asyncio.sleep(0)
    assert row.cost == record.cost > 0
    assert gw.runtime.config.pricing_currency == "EUR"
