"""The ``/v1/*`` endpoints of the fake vLLM and the faults it injects on purpose.

Each endpoint takes the request, the settings already merged with its ``x-mock-*`` headers, and the
simulated GPU (its slots, prefix cache and live counters), and returns a response. Two exceptions
leave an endpoint early: :class:`APIError` becomes an OpenAI-style error body, and
:class:`ConnectionDroppedError` means the mock aborted the TCP connection itself (``reset_*``
faults), which the server must not count as a cancellation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any, Literal, TypeVar

import msgspec
from aiohttp import web

from llmproxy.mock._text import completion_text, embedding, embedding_base64
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
from llmproxy.mock.gpu import Gpu, Prefill
from llmproxy.mock.settings import MockSettings

Endpoint = Callable[[web.BaseRequest, MockSettings, Gpu], Awaitable[web.StreamResponse]]

STALL_SECONDS = 86_400.0
"""A ``stall`` sleeps this long: forever for a test, yet still cancellable by a disconnect."""

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_STARTED = int(time.time())
_Req = TypeVar("_Req", bound=msgspec.Struct)


class APIError(Exception):
    """Answer with ``status`` and vLLM's error body instead of a result."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ConnectionDroppedError(Exception):
    """The mock aborted the connection on purpose; there is no response to send."""


def json_response(status: int, body: bytes, settings: MockSettings) -> web.Response:
    headers = {"Content-Type": "application/json", "x-mock-backend": settings.name}
    return web.Response(status=status, body=body, headers=headers)


def error_response(status: int, message: str, settings: MockSettings) -> web.Response:
    return json_response(status, error_body(status, message), settings)


def drop_connection(request: web.BaseRequest) -> ConnectionDroppedError:
    """Close the connection at once, mid-response, like a crashed inference server.

    A plain close (FIN), not a RST: a RST may make the peer's kernel discard tokens it already
    received, and tests need to know exactly how many arrived before the break.
    """
    if request.transport is not None:
        request.transport.abort()
    return ConnectionDroppedError()


async def inject_fault(request: web.BaseRequest, settings: MockSettings) -> web.Response | None:
    """Apply the faults that happen before any output; ``reset_mid`` is left to the endpoint."""
    fault = settings.fault
    if fault == "500":
        return error_response(500, "mock fault: internal server error", settings)
    if fault == "429":
        response = error_response(429, "mock fault: too many requests", settings)
        response.headers["Retry-After"] = "1"
        return response
    if fault == "reset_before":
        raise drop_connection(request)
    if fault == "stall":
        await asyncio.sleep(STALL_SECONDS)
    return None


async def _decode(request: web.BaseRequest, kind: type[_Req]) -> _Req:
    try:
        return msgspec.json.decode(await request.read(), type=kind)
    except msgspec.DecodeError as exc:
        raise APIError(400, f"malformed JSON body: {exc}") from None
    except msgspec.ValidationError as exc:
        raise APIError(400, str(exc)) from None


def _served_model(requested: str | None, settings: MockSettings) -> str:
    if requested is None:
        return settings.models[0]
    if requested not in settings.models:
        raise APIError(404, f"The model `{requested}` does not exist.")
    return requested


async def _generate(
    request: web.BaseRequest,
    settings: MockSettings,
    gpu: Gpu,
    kind: Literal["chat", "text"],
    body: ChatRequest | CompletionRequest,
) -> web.StreamResponse:
    """Run one completion on the simulated GPU: queue for a slot, prefill, then the tokens.

    A streamed answer sends its headers before queueing, as vLLM does, so the wait shows up in
    the time to the first *event*, not to the status line.
    """
    model = _served_model(body.model, settings)
    requested = body.max_tokens
    if isinstance(body, ChatRequest) and body.max_completion_tokens is not None:
        requested = body.max_completion_tokens
    n = requested or settings.tokens
    finish_reason = "length" if requested else "stop"
    prompt_tokens = body.prompt_tokens()
    # Hashing the prompt costs time per request: only when there is a cache to look it up in.
    prompt_text = body.prompt_text() if settings.prefix_cache_blocks else ""
    if body.stream:
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        chunks = ChunkEncoder(kind, new_id(prefix), model, finish_reason)
        usage_event = chunks.usage(prompt_tokens, n) if body.include_usage else None
        response = web.StreamResponse(headers={**_SSE_HEADERS, "x-mock-backend": settings.name})
        await response.prepare(request)
        async with gpu.generation(settings, model, prompt_text, prompt_tokens) as prefill:
            return await _stream(request, response, settings, prefill, chunks, n, usage_event)
    async with gpu.generation(settings, model, prompt_text, prompt_tokens) as prefill:
        wait = settings.ttft + prefill.seconds + settings.itl * (n - 1)
        if wait:
            await asyncio.sleep(wait)
        if settings.fault == "reset_mid":
            raise drop_connection(request)
        return json_response(200, _result(kind, model, n, finish_reason, prompt_tokens), settings)


async def _stream(
    request: web.BaseRequest,
    response: web.StreamResponse,
    settings: MockSettings,
    prefill: Prefill,
    chunks: ChunkEncoder,
    n: int,
    usage_event: bytes | None,
) -> web.StreamResponse:
    """One event per token: the first after ``ttft`` plus the prefill, the others ``itl`` apart,
    each written (and so flushed) on its own like vLLM's token-by-token output."""
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
        await response.write(chunks.token(i, last=i == n - 1))
    if reset_at >= 0:  # fault_after >= n: all tokens went out, the end of the stream does not
        raise drop_connection(request)
    if usage_event is not None:
        await response.write(usage_event)
    await response.write(DONE)
    return response


def _result(
    kind: Literal["chat", "text"], model: str, n: int, finish_reason: str, prompt_tokens: int
) -> bytes:
    text = completion_text(n)
    choice: dict[str, Any] = {"index": 0}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
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
    request: web.BaseRequest, settings: MockSettings, gpu: Gpu
) -> web.StreamResponse:
    return await _generate(request, settings, gpu, "chat", await _decode(request, ChatRequest))


async def completions(
    request: web.BaseRequest, settings: MockSettings, gpu: Gpu
) -> web.StreamResponse:
    body = await _decode(request, CompletionRequest)
    return await _generate(request, settings, gpu, "text", body)


async def embeddings(
    request: web.BaseRequest, settings: MockSettings, gpu: Gpu
) -> web.StreamResponse:
    body = await _decode(request, EmbeddingRequest)
    model = _served_model(body.model, settings)
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
    request: web.BaseRequest, settings: MockSettings, gpu: Gpu
) -> web.StreamResponse:
    return json_response(200, _models_body(settings.models), settings)


async def echo(request: web.BaseRequest, settings: MockSettings, gpu: Gpu) -> web.StreamResponse:
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


API_ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/v1/completions"): completions,
    ("POST", "/v1/embeddings"): embeddings,
    ("GET", "/v1/models"): list_models,
    ("GET", "/v1/echo"): echo,
    ("POST", "/v1/echo"): echo,
}
