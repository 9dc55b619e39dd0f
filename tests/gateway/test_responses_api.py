"""OpenAI's Responses API through the gateway, with the official ``openai`` SDK: routed by model,
billed from ``response.completed``, and a response's follow-ups (``previous_response_id``,
``GET`` / ``DELETE /v1/responses/{id}``) sent to the one backend that holds it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from llmproxy.mock import MockBackend
from tests.gateway.test_usage_e2e import _gateway, _records
from tests.harness import make_config, mock_backend


@contextlib.asynccontextmanager
async def _three() -> AsyncIterator[list[MockBackend]]:
    async with (
        mock_backend(name="a", tokens=5) as a,
        mock_backend(name="b", tokens=5) as b,
        mock_backend(name="c", tokens=5) as c,
    ):
        yield [a, b, c]


async def test_responses_are_answered_streamed_and_billed(tmp_path: Path) -> None:
    async with mock_backend(tokens=7) as mock:
        config = make_config([{"url": mock.url}], usage={"database": "usage.db"})
        async with (
            _gateway(config, tmp_path) as (gw, sink),
            openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0) as client,
        ):
            reply = await client.responses.create(model="mock-model", input="hello there")
            stream = await client.responses.create(
                model="mock-model", input="and again", stream=True
            )
            kinds = [event.type async for event in stream]
            records = await _records(sink, 2)
    assert reply.output_text
    assert reply.usage is not None
    assert reply.usage.output_tokens == 7
    assert kinds.count("response.output_text.delta") == 7
    assert kinds[-1] == "response.completed"
    by_stream = {record.stream: record for record in records}
    assert by_stream[False].completion_tokens == 7
    assert by_stream[False].prompt_tokens == reply.usage.input_tokens
    assert by_stream[True].completion_tokens == 7
    assert {r.usage_source for r in records} == {"backend"}
    assert {r.endpoint for r in records} == {"/v1/responses"}
    assert {r.api for r in records} == {"responses"}


async def test_a_follow_up_lands_on_the_backend_that_made_the_response(tmp_path: Path) -> None:
    """Among three backends (round robin), every ``previous_response_id`` goes where its
    response was made, and so do ``GET`` and ``DELETE``; an id no backend made through this
    gateway is a 404 from the gateway."""
    async with _three() as mocks:
        config = make_config([{"url": m.url, "name": m.settings.name} for m in mocks])
        async with (
            _gateway(config, tmp_path) as (gw, _),
            openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0) as client,
        ):
            made = [
                await client.responses.create(model="mock-model", input=f"topic {i}")
                for i in range(6)
            ]
            for first in made:
                follow_up = await client.responses.with_raw_response.create(
                    model="mock-model", input="and then?", previous_response_id=first.id
                )
                first_raw = await client.responses.with_raw_response.retrieve(first.id)
                assert follow_up.headers["x-mock-backend"] == first_raw.headers["x-mock-backend"]
                assert follow_up.parse().previous_response_id == first.id
            served = {m.settings.name: m.stats.completed for m in mocks}
            await client.responses.delete(made[0].id)
            with pytest.raises(openai.NotFoundError):
                await client.responses.retrieve(made[0].id)
            with pytest.raises(openai.NotFoundError) as unknown:
                await client.responses.create(
                    model="mock-model", input="x", previous_response_id="resp_neverseen"
                )
    assert all(count >= 2 for count in served.values()), served  # spread over all three
    assert unknown.value.body is not None
    assert "resp_neverseen" in str(unknown.value)


async def test_responses_go_only_to_backends_that_speak_them(tmp_path: Path) -> None:
    """``backends[].apis``: a backend that lists only chat completions never gets a Responses
    request (its neighbour that speaks everything does); with none left, a 404 names why."""
    async with mock_backend(name="all") as full, mock_backend(name="chat") as chat_only:
        both = make_config(
            [
                {"url": full.url, "name": "all"},
                {"url": chat_only.url, "name": "chat", "apis": ["chat_completions"]},
            ]
        )
        async with (
            _gateway(both, tmp_path) as (gw, _),
            openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0) as client,
        ):
            for _ in range(4):
                await client.responses.create(model="mock-model", input="hi")
            await client.chat.completions.create(
                model="mock-model", messages=[{"role": "user", "content": "hi"}]
            )
            await client.chat.completions.create(
                model="mock-model", messages=[{"role": "user", "content": "hi"}]
            )
        assert full.stats.by_path["/v1/responses"] == 4
        assert chat_only.stats.by_path.get("/v1/responses", 0) == 0
        assert chat_only.stats.by_path["/v1/chat/completions"] == 1  # round robin for chat
        alone = make_config([{"url": chat_only.url, "apis": ["chat_completions"]}])
        async with (
            _gateway(alone, tmp_path / "alone") as (gw, _),
            openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0) as client,
        ):
            with pytest.raises(openai.NotFoundError) as refused:
                await client.responses.create(model="mock-model", input="hi")
    assert "responses API" in str(refused.value)
