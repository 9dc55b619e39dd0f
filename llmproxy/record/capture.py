"""From what the request path captured to one :class:`RecordedRequest` line (pure, no I/O).

The request path hands over only what it already has — arrival time, endpoint, model, key id,
the body bytes as the client sent them, the outcome — in a :class:`Captured`. Parsing the body,
redacting it or reducing it to its shape happens here, in the recorder's writer thread, and only
for the requests that were sampled: an unsampled request never pays for a second parse.

Redaction keeps lengths: every text is replaced by as many ``x`` characters, so a replay of a
redacted recording sends prompts of the same size (the load on the inference server depends on
the prompt length, not on its words).
"""

from __future__ import annotations

from typing import Any

import msgspec

from llmproxy.record.format import MessageShape, Outcome, RecordedRequest, RequestShape
from llmproxy.usage.extract import content_chars

_decode = msgspec.json.Decoder().decode


class Captured(msgspec.Struct, frozen=True):
    """One sampled request as the request path hands it over (cheap to build: no parsing)."""

    arrival: float
    """Monotonic time at which the request arrived (:func:`time.monotonic`)."""
    endpoint: str
    model: str
    stream: bool
    key_id: str
    body: bytes
    """The body as the client sent it, before the gateway added ``stream_options``."""
    outcome: Outcome


def recorded_request(
    captured: Captured, *, offset: float, time: float, bodies: bool, redact: bool
) -> RecordedRequest:
    """The line for ``captured``: with its body (redacted when asked) or, without bodies, its
    shape. A body that is not a JSON object (which the gateway refuses before forwarding, so
    this is defensive) is recorded as an empty shape.
    """
    try:
        data = _decode(captured.body)
    except msgspec.DecodeError:
        data = None
    if not isinstance(data, dict):
        data = None
    body: dict[str, Any] | None = None
    shape: RequestShape | None = None
    if bodies and data is not None:
        body = redacted(data) if redact else data
    else:
        shape = request_shape(data or {})
    return RecordedRequest(
        offset=offset,
        time=time,
        endpoint=captured.endpoint,
        model=captured.model,
        stream=captured.stream,
        key_id=captured.key_id,
        body=body,
        shape=shape,
        outcome=captured.outcome,
    )


def request_shape(body: dict[str, Any]) -> RequestShape:
    """Roles and lengths of a request: what a replay needs to send one of the same size.

    Message lengths count the characters of ``content`` (a string, or the ``text`` of its parts);
    ``prompt_chars`` those of a completions ``prompt`` or an embeddings ``input`` (strings, or
    lists of strings; pre-tokenized prompts count no characters).
    """
    messages = body.get("messages")
    shapes: tuple[MessageShape, ...] = ()
    if isinstance(messages, list):
        shapes = tuple(_message_shape(message) for message in messages)
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, list) and any(isinstance(item, dict) for item in prompt):
        shapes = tuple(_message_shape(item) for item in prompt)  # Responses input items
        prompt = None
    system = body.get("system", body.get("instructions"))  # Anthropic's; the Responses API's
    if system is not None:
        shapes = (MessageShape(role="system", chars=content_chars(system)), *shapes)
    return RequestShape(
        messages=shapes,
        prompt_chars=_prompt_chars(prompt),
        max_tokens=_max_tokens(body),
    )


def redacted(body: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``body`` whose texts are ``x`` characters of the same lengths.

    Replaced: each message's ``content`` (a string, or the ``text`` of its parts), the
    ``arguments`` of its tool calls, a completions ``prompt`` and an embeddings ``input`` (a
    string or a list of strings). Everything else (model, roles, parameters) is kept.
    """
    copy = dict(body)
    messages = body.get("messages")
    if isinstance(messages, list):
        copy["messages"] = [_redacted_message(message) for message in messages]
    for field in ("prompt", "input"):
        if field in body:
            copy[field] = _redacted_prompt(body[field])
    for field in ("system", "instructions"):  # Anthropic's; the Responses API's
        value = body.get(field)
        if isinstance(value, str):
            copy[field] = _xs(value)
        elif isinstance(value, list):
            copy[field] = [_redacted_part(part) for part in value]
    return copy


def _redacted_message(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    copy = dict(message)
    content = message.get("content")
    if isinstance(content, str):
        copy["content"] = _xs(content)
    elif isinstance(content, list):
        copy["content"] = [_redacted_part(part) for part in content]
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        copy["tool_calls"] = [_redacted_call(call) for call in calls]
    return copy


def _redacted_part(part: Any) -> Any:
    """A content part or block with its text as ``x`` characters: ``text``, ``thinking``, a
    tool result's ``content``, a tool use's ``input`` (kept as an object of the same size)."""
    if not isinstance(part, dict):
        return part
    copy = dict(part)
    for field in ("text", "thinking"):
        if isinstance(part.get(field), str):
            copy[field] = _xs(part[field])
    content = part.get("content")
    if isinstance(content, str):
        copy["content"] = _xs(content)
    elif isinstance(content, list):
        copy["content"] = [_redacted_part(item) for item in content]
    if isinstance(part.get("input"), dict):
        copy["input"] = {"redacted": "x" * len(msgspec.json.encode(part["input"]))}
    return copy


def _redacted_call(call: Any) -> Any:
    if not isinstance(call, dict):
        return call
    function = call.get("function")
    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
        return {**call, "function": {**function, "arguments": _xs(function["arguments"])}}
    return call


def _redacted_prompt(prompt: Any) -> Any:
    if isinstance(prompt, str):
        return _xs(prompt)
    if isinstance(prompt, list):
        return [
            _xs(item)
            if isinstance(item, str)
            else _redacted_message(item)
            if isinstance(item, dict)
            else item
            for item in prompt
        ]
    return prompt


def _xs(text: str) -> str:
    return "x" * len(text)


def _message_shape(message: Any) -> MessageShape:
    if not isinstance(message, dict):
        return MessageShape(role="", chars=0)
    role = message.get("role")
    return MessageShape(
        role=role if isinstance(role, str) else "", chars=content_chars(message.get("content"))
    )


def _prompt_chars(prompt: Any) -> int:
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list):
        return sum(len(item) for item in prompt if isinstance(item, str))
    return 0


def _max_tokens(body: dict[str, Any]) -> int | None:
    for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
