"""OpenAI's Responses API on the mock: ``POST /v1/responses``, ``GET``/``DELETE`` by id.

The answer follows the same clock, GPU and faults as a chat completion. What sets this API apart
is its state: a response created with ``store`` on (the default) is kept by the backend that made
it (:class:`~llmproxy.mock._state.ResponseStore`), and a follow-up naming it as
``previous_response_id`` anywhere else gets OpenAI's 404 ``previous_response_not_found``. A
gateway test uses that to prove a conversation stayed on its backend.

- Length: like a chat's ``max_tokens``, ``max_output_tokens`` sets it; without it the answer
  has ``tokens`` tokens. Either way the response is ``"completed"`` and a stream ends with
  ``response.completed``: OpenAI would call a cut answer ``"incomplete"``, but the SDK's stream
  helper then has no final response, and a short answer is what tests ask for most.
- Prompt tokens: :func:`~llmproxy.mock._text.estimate_tokens` of the characters of
  ``instructions`` and of the text in ``input`` (message contents, function call outputs). The
  previous response's conversation is not counted again. ``tools`` are echoed, never called.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from llmproxy.mock._endpoints import (
    APIError,
    decode,
    json_response,
    served_model,
    sse_response,
    stream_tokens,
    wait_for_answer,
)
from llmproxy.mock._state import BackendState
from llmproxy.mock._text import TOKENS_JSON, completion_text, estimate_tokens
from llmproxy.mock._wire import PositiveInt, new_id
from llmproxy.mock.settings import MockSettings

_encode = msgspec.json.encode


class InputPart(msgspec.Struct):
    type: str = "input_text"
    text: str | None = None  # images and files carry no text and cost no prompt tokens here


class InputItem(msgspec.Struct):
    """A message (``role`` and ``content``) or another item; a ``function_call_output`` carries
    its text in ``output``."""

    type: str = "message"
    role: str = ""
    content: str | list[InputPart] | None = None
    output: str | list[InputPart] | None = None

    def text(self) -> str:
        return _text(self.content) + _text(self.output)


def _text(value: str | list[InputPart] | None) -> str:
    if isinstance(value, str):
        return value
    return "".join(part.text or "" for part in value or ())


class ResponsesRequest(msgspec.Struct, kw_only=True):
    model: str | None = None
    input: str | list[InputItem] = ""
    instructions: str | None = None
    stream: bool | None = False
    max_output_tokens: PositiveInt | None = None
    previous_response_id: str | None = None
    store: bool | None = True
    metadata: dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = "auto"

    def _turns(self) -> list[tuple[str, str]]:
        turns = [("system", self.instructions)] if self.instructions else []
        if isinstance(self.input, str):
            turns.append(("user", self.input))
        else:
            turns.extend((item.role or item.type, item.text()) for item in self.input)
        return turns

    def prompt_tokens(self) -> int:
        return estimate_tokens(sum(len(text) for _, text in self._turns()))

    def prompt_text(self) -> str:
        """The prompt as the prefix cache sees it: the instructions, then each input item."""
        return "".join(f"{role}\x1f{text}\x1e" for role, text in self._turns())


def response_not_found(response_id: str, param: str | None = None) -> APIError:
    """OpenAI's 404 for an unknown response id; as ``previous_response_id``, with its code."""
    if param == "previous_response_id":
        message = f"Previous response with id '{response_id}' not found."
        code: str | None = "previous_response_not_found"
    else:
        message, code = f"Response with id '{response_id}' not found.", None
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return APIError(404, message, _encode({"error": error}))


class _Answer:
    """The objects and events of one response, from its creation to its last event.

    A streamed answer has the sequence numbers 0-3 for its opening events (created, in progress,
    output item and content part added), ``4 + i`` for the delta of token ``i``, then the four
    closing events (text, content part and output item done, then completed).
    """

    def __init__(self, body: ResponsesRequest, model: str, prompt_tokens: int, n: int) -> None:
        self.id = new_id("resp_")
        self.item_id = new_id("msg_")
        self.created_at = int(time.time())
        self.body, self.model, self.prompt_tokens, self.n = body, model, prompt_tokens, n
        self.stored = body.store is not False
        self._delta_head = (
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            b'"item_id":"' + self.item_id.encode() + b'","output_index":0,"content_index":0,'
            b'"logprobs":[],"delta":'
        )

    def response(self, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        """The response object; ``usage`` only once it is no longer in progress."""
        body, done = self.body, status != "in_progress"
        usage = {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.n,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.prompt_tokens + self.n,
        }
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "metadata": body.metadata or {},
            "model": self.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": self.stored,
            "temperature": 1.0 if body.temperature is None else body.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": body.tool_choice,
            "tools": body.tools or [],
            "top_p": 1.0 if body.top_p is None else body.top_p,
            "truncation": "disabled",
            "usage": usage if done else None,
            "user": None,
        }

    def message(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [_output_text(text)]
        item: dict[str, Any] = {"id": self.item_id, "type": "message", "status": status}
        item["role"] = "assistant"
        item["content"] = content
        return item

    def final(self) -> dict[str, Any]:
        return self.response("completed", [self.message("completed", completion_text(self.n))])

    def head(self) -> bytes:
        started = self.response("in_progress", [])
        return b"".join(
            (
                _event(0, {"type": "response.created", "response": started}),
                _event(1, {"type": "response.in_progress", "response": started}),
                _event(
                    2,
                    {
                        "type": "response.output_item.added",
                        "output_index": 0,
                        "item": self.message("in_progress", None),
                    },
                ),
                _event(3, {"type": "response.content_part.added", **self._part(_output_text(""))}),
            )
        )

    def token(self, i: int) -> bytes:
        event = b"".join(
            (
                self._delta_head,
                TOKENS_JSON[i % len(TOKENS_JSON)],
                b',"sequence_number":%d}\n\n' % (i + 4),
            )
        )
        return self.head() + event if i == 0 else event

    def tail(self, final: dict[str, Any]) -> bytes:
        seq, text = 4 + self.n, completion_text(self.n)
        item = final["output"][0]
        done = {"type": "response.output_text.done", **self._part(None), "text": text}
        done["logprobs"] = []
        return b"".join(
            (
                _event(seq, done),
                _event(
                    seq + 1,
                    {"type": "response.content_part.done", **self._part(item["content"][0])},
                ),
                _event(
                    seq + 2, {"type": "response.output_item.done", "output_index": 0, "item": item}
                ),
                _event(seq + 3, {"type": "response.completed", "response": final}),
            )
        )

    def _part(self, part: dict[str, Any] | None) -> dict[str, Any]:
        where: dict[str, Any] = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        if part is not None:
            where["part"] = part
        return where


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _event(sequence_number: int, data: dict[str, Any]) -> bytes:
    data["sequence_number"] = sequence_number
    name: str = data["type"]
    return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"


async def create_response(
    request: web.BaseRequest, settings: MockSettings, state: BackendState
) -> web.StreamResponse:
    """``POST /v1/responses``: one answer on the simulated GPU, streamed or not, then stored."""
    body = await decode(request, ResponsesRequest)
    model = served_model(body.model, settings)
    previous = body.previous_response_id
    if previous is not None and previous not in state.responses:
        raise response_not_found(previous, "previous_response_id")
    prompt_tokens = body.prompt_tokens()
    # Hashing the prompt costs time per request: only when there is a cache to look it up in.
    prompt_text = body.prompt_text() if settings.prefix_cache_blocks else ""
    answer = _Answer(body, model, prompt_tokens, body.max_output_tokens or settings.tokens)
    gpu, n = state.gpu, answer.n
    if body.stream:
        response = await sse_response(request, settings)
        async with gpu.generation(settings, model, prompt_text, prompt_tokens) as prefill:
            await stream_tokens(request, response, settings, prefill, n, answer.token)
            final = answer.final()
            if answer.stored:  # before the last event: a follow-up sent on it must find it
                state.responses.put(answer.id, _encode(final))
            await response.write(answer.tail(final))
        return response
    async with gpu.generation(settings, model, prompt_text, prompt_tokens) as prefill:
        await wait_for_answer(request, settings, prefill, n)
    result = _encode(answer.final())
    if answer.stored:
        state.responses.put(answer.id, result)
    return json_response(200, result, settings)


def _response_id(request: web.BaseRequest) -> str:
    return request.path.rpartition("/")[2]


async def retrieve_response(
    request: web.BaseRequest, settings: MockSettings, state: BackendState
) -> web.StreamResponse:
    """``GET /v1/responses/{id}``: a stored response object as it was created."""
    response_id = _response_id(request)
    stored = state.responses.get(response_id)
    if stored is None:
        raise response_not_found(response_id)
    return json_response(200, stored, settings)


async def delete_response(
    request: web.BaseRequest, settings: MockSettings, state: BackendState
) -> web.StreamResponse:
    """``DELETE /v1/responses/{id}``: forget a stored response; a follow-up on it is then a 404."""
    response_id = _response_id(request)
    if not state.responses.delete(response_id):
        raise response_not_found(response_id)
    result = {"id": response_id, "object": "response", "deleted": True}
    return json_response(200, _encode(result), settings)
