"""The official OpenAI client, pointed at the gateway, works as it does against OpenAI."""

from __future__ import annotations

import openai
import pytest
from openai import AsyncStream
from openai.types.chat import ChatCompletionChunk

from tests.harness import gateway, make_config, mock_backend


async def test_chat_completion_through_gateway() -> None:
    """A non-streamed chat completion arrives whole, with the backend's usage."""
    async with mock_backend(tokens=5) as mock, gateway(make_config([{"url": mock.url}])) as gw:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-test", max_retries=0)
        async with client:
            reply = await client.chat.completions.create(
                model="mock-model", messages=[{"role": "user", "content": "hello"}], max_tokens=5
            )
        assert reply.choices[0].message.content
        assert reply.usage is not None
        assert reply.usage.completion_tokens == 5
        assert mock.stats.completed == 1


async def test_streamed_chat_completion_through_gateway() -> None:
    """Every streamed chunk reaches the client, including the usage chunk it asked for."""
    async with mock_backend() as mock, gateway(make_config([{"url": mock.url}])) as gw:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-test", max_retries=0)
        async with client:
            stream = await client.chat.completions.create(
                model="mock-model",
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=7,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
        content = [c for c in chunks if c.choices and c.choices[0].delta.content]
        assert len(content) == 7
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 7


async def test_completions_embeddings_and_models() -> None:
    """Legacy completions, embeddings and the model list all pass through."""
    async with (
        mock_backend(models=("m1", "m2")) as mock,
        gateway(make_config([{"url": mock.url, "models": ["m1", "m2"]}])) as gw,
    ):
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-test", max_retries=0)
        async with client:
            completion = await client.completions.create(model="m1", prompt="hi", max_tokens=3)
            embedding = await client.embeddings.create(model="m2", input=["a", "b"])
            models = await client.models.list()
        assert completion.choices[0].text
        assert len(embedding.data) == 2
        assert sorted(m.id for m in models.data) == ["m1", "m2"]


async def test_typed_errors_for_gateway_failures() -> None:
    """Unknown model, and a backend that is down, raise the client's typed errors."""
    async with mock_backend() as mock:
        config = make_config(
            [
                {"url": mock.url, "models": ["mock-model"]},
                {"url": "http://127.0.0.1:1", "models": ["down"]},
            ]
        )
        async with gateway(config) as gw:
            client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-test", max_retries=0)
            async with client:
                with pytest.raises(openai.NotFoundError) as missing:
                    await client.chat.completions.create(model="nope", messages=[])
                assert missing.value.code == "model_not_found"
                with pytest.raises(openai.InternalServerError) as down:
                    await client.chat.completions.create(model="down", messages=[])
                assert down.value.status_code == 502
                with pytest.raises(openai.BadRequestError):
                    await client.chat.completions.create(model="", messages=[])


async def test_mid_stream_failure_raises_in_client() -> None:
    """A backend dying mid-stream makes the client raise, never end as if finished."""
    async with mock_backend(fault="reset_mid", fault_after=3) as mock:
        config = make_config([{"url": mock.url}])
        async with gateway(config) as gw:
            client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-test", max_retries=0)
            async with client:
                stream = await client.chat.completions.create(
                    model="mock-model", messages=[], max_tokens=10, stream=True
                )
                received: list[ChatCompletionChunk] = []
                with pytest.raises(openai.APIError, match="closed the stream"):
                    await _collect(stream, received)
        finishes = [c.choices[0].finish_reason for c in received if c.choices]
        assert all(reason is None for reason in finishes)
        assert 1 <= len(received) <= 3


async def _collect(
    stream: AsyncStream[ChatCompletionChunk], into: list[ChatCompletionChunk]
) -> None:
    async for chunk in stream:
        into.append(chunk)
