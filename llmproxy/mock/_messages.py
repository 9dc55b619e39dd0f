"""Anthropic's Messages API on the mock: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

So a gateway that serves (or translates to) Anthropic's wire format is tested with the official
``anthropic`` client and without a model. The answer follows the same clock, GPU and faults as a
chat completion; only the bytes differ:

- Length: ``min(max_tokens, tokens)`` tokens of :func:`~llmproxy.mock._text.completion_text`.
  ``max_tokens`` is required here and clients send large values, so it caps the answer instead of
  setting its length: ``stop_reason`` is ``"max_tokens"`` when ``max_tokens <= tokens`` (the
  answer was cut), else ``"end_turn"``.
- Tools: offered ``tools`` and not answering a ``tool_result``, the model calls a tool (the one
  ``tool_choice`` names, else the first) with ``{"query": "lorem"}``, three output tokens, and
  ``stop_reason`` ``"tool_use"``; ``tool_choice: {"type": "none"}`` gets text.
- Prompt tokens: :func:`~llmproxy.mock._text.estimate_tokens` of the characters of ``system``,
  of text blocks and of tool results' text; images, tool calls and tool definitions are free.
- Errors: Anthropic's ``{"type": "error", "error": {"type": ..., "message": ...}}``
  (:func:`anthropic_error_body`), for the faults too (``"529"`` is ``overloaded_error``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgspec
from aiohttp import web

from llmproxy.mock._endpoints import (
    decode,
    json_response,
    served_model,
    sse_response,
    stream_tokens,
    wait_for_answer,
)
from llmproxy.mock._state import BackendState
from llmproxy.mock._text import (
    TOKENS_JSON,
    TOOL_ARGUMENT_PIECES,
    TOOL_ARGUMENTS,
    completion_text,
    estimate_tokens,
)
from llmproxy.mock._wire import PositiveInt, new_id
from llmproxy.mock.settings import MockSettings

_encode = msgspec.json.encode
_TOOL_INPUT: dict[str, Any] = msgspec.json.decode(TOOL_ARGUMENTS)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class Block(msgspec.Struct):
    """One content block. Only what a prompt is billed for is read: a text block's ``text`` and
    a tool result's ``content``; other fields (images, tool inputs, signatures) are skipped."""

    type: str
    text: str | None = None
    content: str | list[Block] | None = None

    def billed_text(self) -> str:
        if self.type == "text":
            return self.text or ""
        if self.type != "tool_result":
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(block.billed_text() for block in self.content or ())


class Message(msgspec.Struct):
    role: str
    content: str | list[Block]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(block.billed_text() for block in self.content)

    def answers_tool(self) -> bool:
        """True when the message carries a tool's result, which the model answers in text."""
        blocks = () if isinstance(self.content, str) else self.content
        return any(block.type == "tool_result" for block in blocks)


class Tool(msgspec.Struct):
    name: str


class ToolChoice(msgspec.Struct):
    type: str = "auto"
    name: str | None = None


class MessagesPrompt(msgspec.Struct, kw_only=True):
    """What ``count_tokens`` reads, and the prompt part of a message request."""

    model: str
    messages: list[Message]
    system: str | list[Block] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None

    def _turns(self) -> Iterator[tuple[str, str]]:
        system = self.system
        if system:
            text = system if isinstance(system, str) else "".join(b.billed_text() for b in system)
            yield "system", text
        for message in self.messages:
            yield message.role, message.text()

    def prompt_tokens(self) -> int:
        return estimate_tokens(sum(len(text) for _, text in self._turns()))

    def prompt_text(self) -> str:
        """The prompt as the prefix cache sees it: the system prompt, then each message."""
        return "".join(f"{role}\x1f{text}\x1e" for role, text in self._turns())

    def tool_to_use(self) -> str | None:
        """The tool the answer calls, or None for a text answer (see the module docstring)."""
        choice = self.tool_choice
        if not self.tools or (choice is not None and choice.type == "none"):
            return None
        if self.messages and self.messages[-1].answers_tool():
            return None
        if choice is not None and choice.type == "tool" and choice.name:
            return choice.name
        return self.tools[0].name


class MessagesRequest(MessagesPrompt, kw_only=True):
    max_tokens: PositiveInt
    stream: bool = False


def anthropic_error_body(status: int, message: str) -> bytes:
    """The error body Anthropic's API returns, which the ``anthropic`` client parses."""
    error_type = _ERROR_TYPES.get(status, "api_error")
    return _encode({"type": "error", "error": {"type": error_type, "message": message}})


def _event(data: dict[str, Any]) -> bytes:
    """One SSE event as Anthropic frames it: its ``type`` both as the event name and in the data."""
    name: str = data["type"]
    return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"


_TEXT_DELTAS: tuple[bytes, ...] = tuple(
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":' + token + b"}}\n\n"
    for token in TOKENS_JSON
)
"""The delta event of every filler token, encoded once: streaming a token costs an index."""

_PING = _event({"type": "ping"})
_MESSAGE_STOP = _event({"type": "message_stop"})


def _message(
    message_id: str,
    model: str,
    content: list[dict[str, Any]],
    stop_reason: str | None,
    input_tokens: int,
    output_tokens: int,
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        },
    }


def _stream_events(
    message_id: str, model: str, tool: str | None, stop_reason: str, prompt_tokens: int, n: int
) -> tuple[Callable[[int], bytes], bytes]:
    """The events of a streamed answer: token ``i``'s bytes, and the tail that ends the stream.

    The opening events (``message_start``, ``ping``, ``content_block_start``) go out with the
    first token, so ``ttft`` is the time to the first event, as for a chat.
    """
    start = _message(message_id, model, [], None, prompt_tokens, 1)
    head = _event({"type": "message_start", "message": start}) + _PING
    if tool is None:
        block: dict[str, Any] = {"type": "text", "text": ""}
    else:
        block = {"type": "tool_use", "id": new_id("toolu_"), "name": tool, "input": {}}
    head += _event({"type": "content_block_start", "index": 0, "content_block": block})
    delta = {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}}
    delta["usage"] = {"output_tokens": n}
    tail = _event({"type": "content_block_stop", "index": 0}) + _event(delta) + _MESSAGE_STOP
    if tool is not None:
        pieces = [
            _event(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                }
            )
            for piece in TOOL_ARGUMENT_PIECES
        ]
        pieces[0] = head + pieces[0]
        return pieces.__getitem__, tail
    deltas, period, first = _TEXT_DELTAS, len(_TEXT_DELTAS), head + _TEXT_DELTAS[0]

    def token(i: int) -> bytes:
        return deltas[i % period] if i else first

    return token, tail


async def messages(
    request: web.BaseRequest, settings: MockSettings, state: BackendState
) -> web.StreamResponse:
    """``POST /v1/messages``: one answer on the simulated GPU, streamed or not."""
    body = await decode(request, MessagesRequest)
    model = served_model(body.model, settings)
    tool = body.tool_to_use()
    if tool is None:
        n = min(body.max_tokens, settings.tokens)
        stop_reason = "max_tokens" if body.max_tokens <= settings.tokens else "end_turn"
    else:
        n, stop_reason = len(TOOL_ARGUMENT_PIECES), "tool_use"
    prompt_tokens = body.prompt_tokens()
    # Hashing the prompt costs time per request: only when there is a cache to look it up in.
    prompt_text = body.prompt_text() if settings.prefix_cache_blocks else ""
    message_id = new_id("msg_")
    gpu = state.gpu
    if body.stream:
        token, tail = _stream_events(message_id, model, tool, stop_reason, prompt_tokens, n)
        response = await sse_response(request, settings)
        async with gpu.generation(settings, model, prompt_text, prompt_tokens) as prefill:
            await stream_tokens(request, response, settings, prefill, n, token)
            await response.write(tail)
        return response
    async with gpu.generation(settings, model, prompt_text, prompt_tokens) as prefill:
        await wait_for_answer(request, settings, prefill, n)
    content: list[dict[str, Any]]
    if tool is None:
        content = [{"type": "text", "text": completion_text(n)}]
    else:
        content = [{"type": "tool_use", "id": new_id("toolu_"), "name": tool, "input": _TOOL_INPUT}]
    result = _message(message_id, model, content, stop_reason, prompt_tokens, n)
    return json_response(200, _encode(result), settings)


async def count_tokens(
    request: web.BaseRequest, settings: MockSettings, state: BackendState
) -> web.StreamResponse:
    """``POST /v1/messages/count_tokens``: the prompt tokens a message request would be billed."""
    body = await decode(request, MessagesPrompt)
    served_model(body.model, settings)
    return json_response(200, _encode({"input_tokens": body.prompt_tokens()}), settings)
