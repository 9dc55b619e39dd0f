"""The chat completions side of the translation: the answer fields read, and the mappings from
them to Anthropic's words that the whole answer and the stream share."""

from __future__ import annotations

import secrets
from typing import Any

import msgspec

RAW_ARGUMENTS = "_raw_arguments"
"""The one ``tool_use.input`` key under which tool-call arguments that are not a JSON object
(a model can write broken JSON) are handed to the client as text, instead of as ``{}``: nothing the
model wrote is lost, the client's tool call fails on its schema with the text in view, and when
the history comes back the request translation restores exactly that text as ``arguments``."""


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ErrorObject(msgspec.Struct):
    message: str | None = None
    code: Any = None


class FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: FunctionDelta | None = None


class Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # vLLM's newer name for reasoning_content
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(msgspec.Struct):
    index: int = 0
    delta: Delta | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # vLLM: the stop string matched, or a token id


class Chunk(msgspec.Struct):
    """One ``chat.completion.chunk``, or an error sent in its place: ``{"error": {...}}`` or
    older vLLM's ``{"object": "error", "message", "code"}``."""

    id: str | None = None
    object: str | None = None
    choices: list[ChunkChoice] | None = None
    usage: Usage | None = None
    error: ErrorObject | str | None = None
    message: str | None = None
    code: Any = None


class Function(msgspec.Struct):
    name: str = ""
    arguments: str | dict[str, Any] | None = None  # some servers send an object, not JSON text


class ToolCall(msgspec.Struct):
    function: Function
    id: str | None = None


class AnswerMessage(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(msgspec.Struct):
    message: AnswerMessage
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class Completion(msgspec.Struct):
    choices: list[Choice]
    id: str | None = None
    usage: Usage | None = None


def message_id(chat_id: str | None) -> str:
    """``msg_`` and the backend's id without its ``chatcmpl-`` prefix, so that a Messages answer
    can be found in backend logs; a random one when the backend gave none."""
    if chat_id:
        return "msg_" + chat_id.removeprefix("chatcmpl-")
    return "msg_" + secrets.token_hex(12)


def tool_use_id(chat_id: str | None) -> str:
    """The backend's tool-call id as is (it comes back verbatim as ``tool_result.tool_use_id``
    and so as ``tool_call_id``), or a random one for a backend that sent none."""
    return chat_id or "toolu_" + secrets.token_hex(12)


def stop_reason(
    finish_reason: str | None, matched: int | str | None, called_tools: bool
) -> tuple[str, str | None]:
    """Anthropic's ``(stop_reason, stop_sequence)`` for a chat ``finish_reason``.

    ``matched`` is vLLM's ``stop_reason``: a string only when one of the request's ``stop``
    strings ended the answer, which is Anthropic's ``stop_sequence``. An answer with tool calls is
    ``tool_use`` even when the backend says ``stop`` (some tool parsers do), because clients run
    tools on that ``stop_reason``. ``content_filter`` is ``refusal``; a reason this does not know
    (vLLM's ``abort``...) is ``end_turn``, the plain end of an answer.
    """
    if finish_reason == "length":
        return "max_tokens", None
    if called_tools or finish_reason in ("tool_calls", "function_call"):
        return "tool_use", None
    if finish_reason == "content_filter":
        return "refusal", None
    if isinstance(matched, str) and matched:
        return "stop_sequence", matched
    return "end_turn", None
