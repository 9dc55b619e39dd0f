"""A whole chat completion -> an Anthropic Message."""

from __future__ import annotations

from typing import Any

import msgspec

from llmproxy.translate._chat_wire import (
    RAW_ARGUMENTS,
    Completion,
    Function,
    message_id,
    stop_reason,
    tool_use_id,
)
from llmproxy.translate._errors import UpstreamResponseError

_decode_completion = msgspec.json.Decoder(Completion).decode
decode_object = msgspec.json.Decoder(dict[str, Any]).decode
"""A JSON object (tool arguments), or a msgspec error."""
_encode = msgspec.json.encode


def chat_response_to_messages(body: bytes, model: str) -> bytes:
    """A non-streamed chat completion JSON (2xx) -> an Anthropic Message JSON.

    Only the first choice is read: a Message is one answer. Blocks come in the order the model
    wrote them: ``thinking`` (from ``reasoning_content``, with an empty signature), ``text``
    (left out when empty), then one ``tool_use`` per tool call. Raises
    :class:`UpstreamResponseError` when ``body`` is not a chat completion.
    """
    try:
        completion = _decode_completion(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamResponseError(
            f"the backend's answer is not a chat completion: {exc}"
        ) from None
    if not completion.choices:
        raise UpstreamResponseError("the backend's answer has no choices")
    choice = completion.choices[0]
    answer = choice.message
    content: list[dict[str, Any]] = []
    reasoning = answer.reasoning_content or answer.reasoning
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if answer.content:
        content.append({"type": "text", "text": answer.content})
    if answer.refusal:
        content.append({"type": "text", "text": answer.refusal})
    for call in answer.tool_calls or ():
        content.append(
            {
                "type": "tool_use",
                "id": tool_use_id(call.id),
                "name": call.function.name,
                "input": _tool_input(call.function),
            }
        )
    finish = "content_filter" if answer.refusal else choice.finish_reason
    reason, sequence = stop_reason(finish, choice.stop_reason, bool(answer.tool_calls))
    usage = completion.usage
    return _encode(
        {
            "id": message_id(completion.id),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": {
                "input_tokens": usage.prompt_tokens if usage else 0,
                "output_tokens": usage.completion_tokens if usage else 0,
            },
        }
    )


def _tool_input(function: Function) -> dict[str, Any]:
    """The arguments as ``tool_use.input``: ``{}`` for none, the object they encode, or the text
    itself under :data:`RAW_ARGUMENTS` when it is not a JSON object."""
    arguments = function.arguments
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or not arguments.strip():
        return {}
    try:
        return decode_object(arguments)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {RAW_ARGUMENTS: arguments}
