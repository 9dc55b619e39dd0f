"""OpenAI's Responses API on the mock: answers, events, and the store behind follow-ups."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest

from llmproxy.mock import MockBackend, completion_text, estimate_tokens
from llmproxy.mock._state import ResponseStore

INSTRUCTIONS = "Be brief."
PROMPT_TOKENS = estimate_tokens(len(INSTRUCTIONS) + len("Say something."))


async def test_create(client: openai.AsyncOpenAI) -> None:
    """A response has `tokens` tokens of text, status completed, and the usage of both sides."""
    result = await client.responses.create(
        model="mock-model", instructions=INSTRUCTIONS, input="Say something."
    )
    assert result.id.startswith("resp_")
    assert (result.object, result.status, result.model) == ("response", "completed", "mock-model")
    assert result.output_text == completion_text(16)
    item = result.output[0]
    assert item.type == "message"
    assert item.id.startswith("msg_")
    assert (item.role, item.status) == ("assistant", "completed")
    assert result.incomplete_details is None
    assert result.instructions == INSTRUCTIONS
    assert result.previous_response_id is None
    assert result.usage is not None
    assert (result.usage.input_tokens, result.usage.output_tokens) == (PROMPT_TOKENS, 16)
    assert result.usage.total_tokens == PROMPT_TOKENS + 16
    assert result.usage.input_tokens_details.cached_tokens == 0
    assert result.usage.output_tokens_details.reasoning_tokens == 0


async def test_max_output_tokens(client: openai.AsyncOpenAI) -> None:
    """max_output_tokens sets the length, like max_tokens; the response is still completed."""
    result = await client.responses.create(model="mock-model", input="x", max_output_tokens=5)
    assert result.output_text == completion_text(5)
    assert (result.status, result.incomplete_details) == ("completed", None)
    assert result.max_output_tokens == 5
    assert result.usage is not None
    assert result.usage.output_tokens == 5


async def test_input_items(client: openai.AsyncOpenAI) -> None:
    """Prompt tokens count the text of message items (string or parts) and tool outputs."""
    # Raw wire items: the SDK's TypedDicts cannot tell an assistant message's two shapes apart.
    items: list[Any] = [
        {"role": "user", "content": "abcd"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "efgh"}],
        },
        {"role": "user", "content": [{"type": "input_text", "text": "ijkl"}]},
        {"type": "function_call_output", "call_id": "call_1", "output": "mnop"},
    ]
    result = await client.responses.create(model="mock-model", input=items)
    assert result.usage is not None
    assert result.usage.input_tokens == estimate_tokens(16)


async def test_stream_events(client: openai.AsyncOpenAI) -> None:
    """A stream has OpenAI's event order, numbered from 0, one text delta per token."""
    stream = await client.responses.create(
        model="mock-model", instructions=INSTRUCTIONS, input="Say something.", stream=True
    )
    events = [event async for event in stream]
    n = 16
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * n,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(n + 8))
    created = events[0]
    assert created.type == "response.created"
    assert (created.response.status, created.response.usage) == ("in_progress", None)
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    item_id = events[2].item.id  # type: ignore[union-attr]
    assert {(d.item_id, d.output_index, d.content_index) for d in deltas} == {(item_id, 0, 0)}
    assert "".join(d.delta for d in deltas) == completion_text(n)
    done = events[-4]
    assert done.type == "response.output_text.done"
    assert done.text == completion_text(n)
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.id == created.response.id
    assert completed.response.output_text == completion_text(n)
    assert completed.response.usage is not None
    assert completed.response.usage.input_tokens == PROMPT_TOKENS
    assert completed.response.usage.output_tokens == n


async def test_stream_helper(client: openai.AsyncOpenAI) -> None:
    """The SDK's stream helper assembles the text and the final response from the events."""
    async with client.responses.stream(
        model="mock-model", input="x", max_output_tokens=4
    ) as stream:
        texts = [
            event.delta async for event in stream if event.type == "response.output_text.delta"
        ]
        final = await stream.get_final_response()
    assert "".join(texts) == completion_text(4)
    assert final.status == "completed"
    assert final.output_text == completion_text(4)
    assert final.usage is not None
    assert final.usage.output_tokens == 4


async def test_raw_sse_framing(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """Each frame is `event: <type>` then `data: <json>` with the same type."""
    body = {"model": "mock-model", "input": "hi", "stream": True, "max_output_tokens": 2}
    async with http.post(mock.url + "/v1/responses", json=body) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["x-mock-backend"] == "mock"
        raw = (await response.read()).decode()
    frames = raw.split("\n\n")
    assert frames[-1] == ""
    for frame in frames[:-1]:
        name_line, data_line = frame.split("\n")
        assert json.loads(data_line.removeprefix("data: "))["type"] == name_line.removeprefix(
            "event: "
        )
    delta = json.loads(frames[4].split("\n")[1].removeprefix("data: "))
    assert delta["delta"] == "lorem "
    assert (delta["sequence_number"], delta["logprobs"]) == (4, [])


async def test_follow_up_same_backend(mock: MockBackend, client: openai.AsyncOpenAI) -> None:
    """previous_response_id of a response this backend made is accepted and echoed."""
    first = await client.responses.create(model="mock-model", input="one")
    stream = await client.responses.create(
        model="mock-model", input="two", previous_response_id=first.id, stream=True
    )
    events = [event async for event in stream]
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.previous_response_id == first.id
    again = await client.responses.create(
        model="mock-model", input="three", previous_response_id=completed.response.id
    )
    assert again.previous_response_id == completed.response.id
    assert len(mock.responses) == 3


async def test_follow_up_other_backend(client: openai.AsyncOpenAI) -> None:
    """Another backend does not know the response: OpenAI's previous_response_not_found 404."""
    first = await client.responses.create(model="mock-model", input="one")
    async with MockBackend() as other:
        url = other.url + "/v1"
        async with openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0) as elsewhere:
            with pytest.raises(openai.NotFoundError) as caught:
                await elsewhere.responses.create(
                    model="mock-model", input="two", previous_response_id=first.id
                )
    assert caught.value.body == {
        "message": f"Previous response with id '{first.id}' not found.",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "previous_response_not_found",
    }
    assert caught.value.code == "previous_response_not_found"


async def test_retrieve_and_delete(mock: MockBackend, client: openai.AsyncOpenAI) -> None:
    """GET returns the stored response; DELETE forgets it, and a follow-up on it is then a 404."""
    created = await client.responses.create(model="mock-model", input="one", max_output_tokens=3)
    retrieved = await client.responses.retrieve(created.id)
    assert retrieved.model_dump() == created.model_dump()
    await client.responses.delete(created.id)
    assert len(mock.responses) == 0
    with pytest.raises(openai.NotFoundError, match="not found"):
        await client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.responses.create(
            model="mock-model", input="two", previous_response_id=created.id
        )
    assert caught.value.code == "previous_response_not_found"
    assert mock.stats.by_path[f"/v1/responses/{created.id}"] == 4  # GET, DELETE, GET, DELETE


async def test_delete_body(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """DELETE answers OpenAI's deletion object."""
    async with http.post(mock.url + "/v1/responses", json={"input": "x"}) as response:
        response_id = (await response.json())["id"]
    async with http.delete(f"{mock.url}/v1/responses/{response_id}") as response:
        assert response.status == 200
        assert response.headers["x-mock-backend"] == "mock"
        assert await response.json() == {"id": response_id, "object": "response", "deleted": True}


async def test_store_false(mock: MockBackend, client: openai.AsyncOpenAI) -> None:
    """store=false answers normally but keeps nothing to retrieve or follow up on."""
    result = await client.responses.create(model="mock-model", input="x", store=False)
    assert (result.model_extra or {}).get("store") is False
    assert len(mock.responses) == 0
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(result.id)


def test_store_is_bounded() -> None:
    """The store forgets its oldest response once full."""
    store = ResponseStore(capacity=2)
    for name in ("a", "b", "c"):
        store.put(name, name.encode())
    assert ("a" in store, store.get("b"), store.get("c"), len(store)) == (False, b"b", b"c", 2)
    assert store.delete("b")
    assert not store.delete("b")


async def test_unknown_model(client: openai.AsyncOpenAI) -> None:
    """An unserved model is the usual 404."""
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        await client.responses.create(model="gpt-x", input="x")


async def test_fault(client: openai.AsyncOpenAI) -> None:
    """The status faults apply to the Responses API too."""
    with pytest.raises(openai.RateLimitError):
        await client.responses.create(
            model="mock-model", input="x", extra_headers={"x-mock-fault": "429"}
        )


async def test_reset_mid(mock: MockBackend, http: aiohttp.ClientSession) -> None:
    """reset_mid drops a stream after fault_after deltas; nothing completes or is stored."""
    body = {"model": "mock-model", "input": "x", "stream": True}
    headers = {"x-mock-fault": "reset_mid", "x-mock-fault-after": "2"}
    lines: list[bytes] = []

    async def read_all() -> None:
        url = mock.url + "/v1/responses"
        async with http.post(url, json=body, headers=headers) as response:
            async for line in response.content:
                lines.append(line)

    with pytest.raises(aiohttp.ClientPayloadError):
        await read_all()
    assert lines.count(b"event: response.output_text.delta\n") == 2
    assert b"event: response.completed\n" not in lines
    assert len(mock.responses) == 0
    assert mock.stats.cancellations == 0
