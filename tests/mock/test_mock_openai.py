"""The official OpenAI client accepts every answer of the mock as a real vLLM answer."""

from __future__ import annotations

import openai
import pytest

from llmproxy.mock import MockBackend, MockSettings, completion_text, estimate_tokens

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "Say something."}
]


async def test_chat_completion(client: openai.AsyncOpenAI) -> None:
    """A non-streamed chat returns max_tokens filler tokens, finish_reason length and usage."""
    result = await client.chat.completions.create(
        model="mock-model", messages=MESSAGES, max_tokens=5
    )
    assert result.id.startswith("chatcmpl-")
    assert result.model == "mock-model"
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == completion_text(5)
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None
    prompt_tokens = estimate_tokens(len("Say something."))
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (prompt_tokens, 5)
    assert result.usage.total_tokens == prompt_tokens + 5


async def test_chat_default_tokens_stop(client: openai.AsyncOpenAI) -> None:
    """Without max_tokens the completion has the `tokens` knob's length and finishes with stop."""
    result = await client.chat.completions.create(model="mock-model", messages=MESSAGES)
    assert result.choices[0].message.content == completion_text(16)
    assert result.choices[0].finish_reason == "stop"


async def test_chat_stream_with_usage(client: openai.AsyncOpenAI) -> None:
    """A streamed chat yields one delta per token, then a choices-less usage chunk."""
    stream = await client.chat.completions.create(
        model="mock-model",
        messages=MESSAGES,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 5
    deltas = [c.choices[0].delta for c in chunks[:4]]
    assert [d.role for d in deltas] == ["assistant", None, None, None]
    assert "".join(d.content or "" for d in deltas) == completion_text(4)
    assert [c.choices[0].finish_reason for c in chunks[:4]] == [None, None, None, "length"]
    assert chunks[4].choices == []
    assert chunks[4].usage is not None
    assert chunks[4].usage.completion_tokens == 4


async def test_completions(client: openai.AsyncOpenAI) -> None:
    """Text completions work streamed and not, with the same text."""
    result = await client.completions.create(model="mock-model", prompt="abcdefgh", max_tokens=3)
    assert result.choices[0].text == completion_text(3)
    assert result.usage is not None
    assert result.usage.prompt_tokens == 2
    stream = await client.completions.create(
        model="mock-model", prompt="abcdefgh", max_tokens=3, stream=True
    )
    texts = [chunk.choices[0].text async for chunk in stream]
    assert texts == ["lorem ", "ipsum ", "dolor "]


async def test_embeddings(client: openai.AsyncOpenAI) -> None:
    """Embeddings (base64 by default in the client) decode to deterministic vectors of dim 8."""
    first = await client.embeddings.create(model="mock-model", input=["a", "b"])
    again = await client.embeddings.create(
        model="mock-model", input=["a", "b"], encoding_format="float"
    )
    assert [d.index for d in first.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in first.data)
    assert first.data[0].embedding != first.data[1].embedding
    for base64_item, float_item in zip(first.data, again.data, strict=True):
        assert base64_item.embedding == pytest.approx(float_item.embedding, abs=1e-6)
    assert first.usage.prompt_tokens == 2


async def test_models(client: openai.AsyncOpenAI) -> None:
    """/v1/models lists the configured models, owned by llmproxy-mock."""
    models = [m async for m in client.models.list()]
    assert [(m.id, m.owned_by) for m in models] == [("mock-model", "llmproxy-mock")]


async def test_unknown_model(client: openai.AsyncOpenAI) -> None:
    """A model the backend does not serve gets vLLM's 404 NotFoundError."""
    with pytest.raises(openai.NotFoundError, match=r"The model `gpt-x` does not exist\."):
        await client.chat.completions.create(model="gpt-x", messages=MESSAGES)


async def test_api_key_enforced() -> None:
    """With api_key set, /v1 refuses a wrong bearer token with 401 and accepts the right one."""
    async with MockBackend(MockSettings(api_key="sk-good")) as mock:
        url = mock.url + "/v1"
        async with openai.AsyncOpenAI(base_url=url, api_key="sk-bad", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError):
                await bad.models.list()
        async with openai.AsyncOpenAI(base_url=url, api_key="sk-good", max_retries=0) as good:
            assert [m.id async for m in good.models.list()] == ["mock-model"]
