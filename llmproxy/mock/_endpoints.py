"""The OpenAI ``/v1/*`` endpoints of the fake vLLM, and what every API of the mock shares.

Each endpoint takes the request, the settings already merged with its ``x-mock-*`` headers, and the
backend's state (the simulated GPU with its slots, prefix cache and live counters; the stored
Responses API objects), and returns a response. Two exceptions leave an endpoint early:
:class:`APIError` becomes an error body in the shape of the API called (an :data:`ErrorBody`), and
:class:`ConnectionDroppedError` means the mock aborted the TCP connection itself (``reset_*``
faults), which the server must not count as a cancellation.

The Anthropic (:mod:`._messages`) and Responses (:mod:`._responses`) endpoints are built from the
same pieces — :func:`decode`, :func:`served_model`, :func:`stream_tokens`, :func:`wait_for_answer`
— so every API keeps the same clock (``ttft``, ``itl``, the GPU's queue and prefill) and faults.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any, Literal, TypeVar

import msgspec
from aiohttp import web

from llmproxy.mock._state import BackendState
from llmproxy.mock._text import (
    TOOL_ARGUMENT_PIECES,
    TOOL_ARGUMENTS,
    completion_text,
    embedding,
    embedding_base64,
)
from llmproxy.mock._wire import (
    DONE,
    ChatRequest,
    ChunkEncoder,
    CompletionRequest,
    EmbeddingRequest,
    error_body,
    new_id,
    usage,
)
from llmproxy.mock.gpu import Prefill
from llmproxy.mock.settings import MockSettings

Endpoint = Callable[[web.BaseRequest, MockSettings, BackendState], Awaitable[web.StreamResponse]]

ErrorBody = Callable[[int, str], bytes]
"""Renders an error's status and message in one API's shape: vLLM's :func:`error_body` by
default, Anthropic's for ``/v1/messages``."""

STALL_SECONDS = 86_400.0
"""A ``stall`` sleeps this long: forever for a test, yet still cancellable by a disconnect."""

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_STARTED = int(time.time())
_Req = TypeVar("_Req", bound=msgspec.Struct)


class APIError(Exception):
    """Answer with ``status`` and an error body instead of a result.

    The body is the called API's usual shape for ``message``, unless ``body`` gives the exact
    bytes, for an error whose ``type``, ``param`` or ``code`` clients branch on.
    """

    def __init__(self, status: int, message: str, body: bytes | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body


class ConnectionDroppedError(Exception):
    """The mock aborted the connection on purpose; there is no response to send."""


def json_response(status: int, body: bytes, settings: MockSettings) -> web.Response:
    headers = {"Content-Type": "application/json", "x-mock-backend": settings.name}
    return web.Response(status=status, body=body, headers=headers)


def error_response(
    status: int, message: str, settings: MockSettings, errors: ErrorBody = error_body
) -> web.Response:
    return json_response(status, errors(status, message), settings)


def drop_connection(request: web.BaseRequest) -> ConnectionDroppedError:
    """Close the connection at once, mid-response, like a crashed inference server.

    A plain close (FIN), not a RST: a RST may make the peer's kernel discard tokens it already
    received, and tests need to know exactly how many arrived before the break.
    """
    if request.transport is not None:
        request.transport.abort()
    return ConnectionDroppedError()


_FAULT_ERRORS = {
    "500": (500, "mock fault: internal server error"),
    "429": (429, "mock fault: too many requests"),
    "529": (529, "mock fault: overloaded"),
}


async def inject_fault(
    request: web.BaseRequest, settings: MockSettings, errors: ErrorBody = error_body
) -> web.Response | None:
    """Apply the faults that happen before any output; ``reset_mid`` is left to the endpoint."""
    fault = settings.fault
    if fault is None:
        return None
    if fault in _FAULT_ERRORS:
        status, message = _FAULT_ERRORS[fault]
        response = error_response(status, message, settings, errors)
        if status == 429:
            response.headers["Retry-After"] = "1"
        return response
    if fault == "reset_before":
        raise drop_connection(request)
    if fault == "stall":
        await asyncio.sleep(STALL_SECONDS)
    return None


async def decode(request: web.BaseRequest, kind: type[_Req]) -> _Req:
    """The JSON body as a ``kind`` struct; a body that does not fit is a 400 saying where."""
    try:
        return msgspec.json.decode(await request.read(), type=kind)
    except msgspec.ValidationError as exc:  # first: it is a DecodeError too
        raise APIError(400, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise APIError(400, f"malformed JSON body: {exc}") from None


def served_model(requested: str | None, settings: MockSettings) -> str:
    """The model that answers: the one requested, the first served when none is, else a 404."""
    if requested is None:
        return settings.models[0]
    if requested not in settings.models:
        raise APIError(404, f"The model `{requested}` does not exist.")
    return requested


async def sse_response(request: web.BaseRequest, settings: MockSettings) -> web.StreamResponse:
    """Send a stream's status line and headers now, before queueing for a slot, as vLLM does,
    so a wait shows up in the time to the first *event*, not to the status line."""
    response = web.StreamResponse(headers={**_SSE_HEADERS, "x-mock-backend": settings.name})
    await response.prepare(request)
    return response


async def stream_tokens(
    request: web.BaseRequest,
    response: web.StreamResponse,
    settings: MockSettings,
    prefill: Prefill,
    n: int,
    token: Callable[[int], bytes],
) -> None:
    """Write ``token(i)`` for ``i`` in ``range(n)``: the first after ``ttft`` plus the prefill,
    the others ``itl`` apart, each written (and so flushed) on its own like vLLM's output.

    ``reset_mid`` drops the connection after ``fault_after`` tokens, or after the last one when
    there are fewer: the events that end a stream (``[DONE]``, ``message_stop``) never go out.
    """
    itl = settings.itl
    reset_at = settings.fault_after if settings.fault == "reset_mid" else -1
    first = settings.ttft + prefill.seconds
    if first:
        await asyncio.sleep(first)
    for i in range(n):
        if i == reset_at:
            raise drop_connection(request)
        if itl and i:
            await asyncio.sleep(itl)
        await response.write(token(i))
    if reset_at >= 0:
        raise drop_connection(request)


async def wait_for_answer(
    request: web.BaseRequest, settings: MockSettings, prefill: Prefill, n: int
) -> None:
    """Wait as long as the last of ``n`` tokens takes, for a non-streamed answer; ``reset_mid``
    then drops the connection with the body unsent."""
    wait = settings.ttft + prefill.seconds + settings.itl * (n - 1)
    if wait:
        await asyncio.sleep(wait)
    if settings.fault == "reset_mid":
        raise drop_connection(request)


async def _generate(
    request: web.BaseRequest,
    settings: MockSettings,
    state: BackendState,
    kind: Literal["chat", "text"],
    body: ChatRequest | CompletionRequest,
) -> web.StreamResponse:
    """Run one completion on the simulated GPU: queue for a slot, prefill, then the tokens.

    A chat offered tools answers with a call instead (:meth:`ChatRequest.tool_to_call`): one
    token per piece of :data:`~llmproxy.mock._text.TOOL_ARGUMENT_PIECES`, whatever ``max_tokens``.
    """
    model = served_model(body.model, settings)
    tool = body.tool_to_call() if isinstance(body, ChatRequest) else None
    requested = body.max_tokens
    if isinstance(body, ChatRequest) and body.max_completion_tokens is not None:
        requested = body.max_completion_tokens
    n = requested or settings.tokens
    finish_reason = "length" if requested else "stop"
    if tool is not None:
        n, finish_reason = len(TOOL_ARGUMENT_PIECES), "tool_calls"
    prompt_tokens = body.prompt_tokens()
    # Hashing the prompt costs time per request: only when there is a cache to look it up in.
    prompt_text = body.prompt_text() if settings.prefix_cache_blocks else ""
    gpu = state.gpu
    if body.stream:
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        chunks = ChunkEncoder(kind, new_id(prefix), model, finish_reason)
        usage_event = chunks.usage(prompt_tokens, n) if body.include_usage else None
        response = await sse_response(request, settings)
        async with gpu.generation(settings, model, prompt_text, prompt_tokens) as prefill:
            if tool is None:
                return await _stream(request, response, settings, prefill, chunks, n, usage_event)
            events = _tool_call_events(chunks, tool)
            await stream_tokens(request, response, settings, prefill, n, events.__getitem__)
            await response.write(chunks.delta({}, finish_reason) + (usage_event or b"") + DONE)
            return response
    async with gpu.generation(settings, model, prompt_text, prompt_tokens) as prefill:
        await wait_for_answer(request, settings, prefill, n)
        result = _result(kind, model, n, finish_reason, prompt_tokens, tool)
        return json_response(200, result, settings)


async def _stream(
    request: web.BaseRequest,
    response: web.StreamResponse,
    settings: MockSettings,
    prefill: Prefill,
    chunks: ChunkEncoder,
    n: int,
    usage_event: bytes | None,
) -> web.StreamResponse:
    """One event per token, the last with the finish_reason, then the usage event and [DONE]."""
    last, token = n - 1, chunks.token
    await stream_tokens(request, response, settings, prefill, n, lambda i: token(i, i == last))
    if usage_event is not None:
        await response.write(usage_event)
    await response.write(DONE)
    return response


def _tool_call_events(chunks: ChunkEncoder, name: str) -> list[bytes]:
    """One event per argument piece; the first also opens the call (id, type, name), as OpenAI's
    first tool-call delta does."""
    opening: dict[str, Any] = {"index": 0, "id": new_id("call_"), "type": "function"}
    opening["function"] = {"name": name, "arguments": ""}
    head = chunks.delta({"role": "assistant", "content": None, "tool_calls": [opening]})
    events = [
        chunks.delta({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        for piece in TOOL_ARGUMENT_PIECES
    ]
    events[0] = head + events[0]
    return events


def _result(
    kind: Literal["chat", "text"],
    model: str,
    n: int,
    finish_reason: str,
    prompt_tokens: int,
    tool: str | None = None,
) -> bytes:
    choice: dict[str, Any] = {"index": 0}
    if tool is not None:
        call: dict[str, Any] = {"id": new_id("call_"), "type": "function"}
        call["function"] = {"name": tool, "arguments": TOOL_ARGUMENTS}
        choice["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
    elif kind == "chat":
        choice["message"] = {"role": "assistant", "content": completion_text(n)}
    else:
        choice["text"] = completion_text(n)
    choice["logprobs"] = None
    choice["finish_reason"] = finish_reason
    return msgspec.json.encode(
        {
            "id": new_id("chatcmpl-" if kind == "chat" else "cmpl-"),
            "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": usage(prompt_tokens, n),
        }
    )


async def chat_completions(
    request: web.BaseRequest, settings: MockSettings, state: BackendState
) -> web.StreamResponse:
    return await _generate(request, settings, state, "chat", await decode(request, ChatRequest))


async def completions(
    request: web.BaseRequest, settings: MockSettings, state: BackendState
) -> web.StreamResponse:
    body = await decode(request, CompletionRequest)
    return await _generate(request, settings, state, "text", body)


async def embeddings(
    request: web.BaseRequest, settings: MockSettings, state: BackendState
) -> web.StreamResponse:
    body = await decode(request, EmbeddingRequest)
    model = served_model(body.model, settings)
    if settings.ttft:
        await asyncio.sleep(settings.ttft)
    if settings.fault == "reset_mid":
        raise drop_connection(request)
    as_base64 = body.encoding_format == "base64"
    data, prompt_tokens = [], 0
    for index, (text, tokens) in enumerate(body.texts()):
        vector = embedding(text, settings.embedding_dim)
        encoded = embedding_base64(vector) if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
        prompt_tokens += tokens
    result = {
        "id": new_id("embd-"),
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return json_response(200, msgspec.json.encode(result), settings)


@lru_cache(maxsize=8)
def _models_body(models: tuple[str, ...]) -> bytes:
    data = [
        {"id": m, "object": "model", "created": _STARTED, "owned_by": "llmproxy-mock", "root": m}
        for m in models
    ]
    return msgspec.json.encode({"object": "list", "data": data})


async def list_models(
    request: web.BaseRequest, settings: MockSettings, state: BackendState
) -> web.StreamResponse:
    return json_response(200, _models_body(settings.models), settings)


async def echo(
    request: web.BaseRequest, settings: MockSettings, state: BackendState
) -> web.StreamResponse:
    """What the mock received, so a gateway test can check what was forwarded (and what not)."""
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    result = {
        "method": request.method,
        "path": request.path,
        "query": request.query_string,
        "headers": headers,
        "body": (await request.read()).decode(errors="replace"),
    }
    return json_response(200, msgspec.json.encode(result), settings)
