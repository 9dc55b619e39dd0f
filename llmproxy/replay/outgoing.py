"""The request a replay sends, rebuilt from a recorded line.

A line with a ``body`` is sent as the client sent it, with two changes: ``--model`` replaces the
model, and a streamed request asks for ``stream_options.include_usage`` so the final usage event
gives the exact output token count. A line with only a ``shape`` becomes a request of the same
size with made-up text (:mod:`llmproxy.replay.text`); its output length is the ``max_tokens``
the client asked for or, when it asked for none, the number of tokens the original answer had,
so the server does about the same work. Bodies are encoded once, here, not on the send path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec

from llmproxy.apis import ASKS_FOR_USAGE, CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES, RESPONSES
from llmproxy.record.format import RecordedRequest, RequestShape
from llmproxy.replay.text import made_up_text

SHAPED_ENDPOINTS: Final = frozenset({CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES, RESPONSES})
DEFAULT_MAX_TOKENS: Final = 256
"""Anthropic's API requires ``max_tokens``: when a shape recorded none."""
"""Endpoints whose body can be rebuilt from a shape."""

BODYLESS_METHODS: Final = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})

_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One request ready to send: what goes on the wire and what the report groups it by."""

    method: str
    endpoint: str
    """Path, e.g. ``/v1/chat/completions``; appended to the target URL."""
    model: str
    stream: bool
    body: bytes | None
    line: int | None = None
    """Line of the recording it came from (None for synthetic requests)."""
    offset: float | None = None
    """Seconds since the recording started, as recorded (None for synthetic requests)."""


def unrebuildable(request: RecordedRequest) -> str | None:
    """Why a recorded line cannot be sent, or None when it can."""
    if not request.endpoint.startswith("/"):
        return f"endpoint {request.endpoint!r} is not a path"
    if request.body is not None or request.method.upper() in BODYLESS_METHODS:
        return None
    if request.endpoint not in SHAPED_ENDPOINTS:
        return (
            f"only the shape of a {request.method} {request.endpoint} request was recorded, and "
            "its body cannot be made up (record bodies, or replay chat, completions, "
            "embeddings, messages, responses)"
        )
    return None


def from_recorded(
    request: RecordedRequest,
    *,
    line: int | None = None,
    model: str | None = None,
    salt: int = 0,
    arrival: float | None = None,
) -> Outgoing:
    """The request to send for a recorded line (see the module docstring).

    ``model`` overrides the recorded one; ``salt`` makes made-up text unique per request;
    ``arrival`` replaces the recorded offset (when files are merged by Unix time).
    """
    method = request.method.upper()
    offset = request.offset if arrival is None else arrival
    if method in BODYLESS_METHODS:
        return Outgoing(method, request.endpoint, model or request.model, False, None, line, offset)
    if request.body is not None:
        body: dict[str, Any] = dict(request.body)
        if model:
            body["model"] = model
        stream = body.get("stream") is True
        if stream and request.endpoint in ASKS_FOR_USAGE:
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        sent_model = str(body.get("model") or request.model)
        return Outgoing(method, request.endpoint, sent_model, stream, _encode(body), line, offset)
    sent_model = model or request.model
    shape = request.shape or RequestShape()
    output = shape.max_tokens
    if output is None and request.outcome is not None and request.outcome.completion_tokens > 0:
        output = request.outcome.completion_tokens
    stream = request.stream and request.endpoint != EMBEDDINGS
    body = shaped_body(request.endpoint, shape, sent_model, stream, output, salt)
    return Outgoing(method, request.endpoint, sent_model, stream, _encode(body), line, offset)


def shaped_body(
    endpoint: str,
    shape: RequestShape,
    model: str,
    stream: bool,
    max_tokens: int | None,
    salt: int,
) -> dict[str, Any]:
    """A body for ``endpoint`` of the size ``shape`` describes, with made-up text."""
    body: dict[str, Any] = {"model": model} if model else {}
    if endpoint == EMBEDDINGS:
        body["input"] = made_up_text(max(1, shape.prompt_chars), salt)
        return body
    messages = [
        {"role": message.role, "content": made_up_text(message.chars, salt)}
        for message in shape.messages
    ] or [{"role": "user", "content": made_up_text(max(1, shape.prompt_chars), salt)}]
    if endpoint == CHAT:
        body["messages"] = messages
    elif endpoint == MESSAGES:
        system = [m["content"] for m in messages if m["role"] == "system"]
        if system:
            body["system"] = "\n\n".join(system)
        body["messages"] = [m for m in messages if m["role"] != "system"] or [
            {"role": "user", "content": made_up_text(1, salt)}
        ]
        max_tokens = max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS
    elif endpoint == RESPONSES:
        body["input"] = messages
        if max_tokens is not None:
            body["max_output_tokens"] = max_tokens
        max_tokens = None
    else:
        body["prompt"] = made_up_text(max(1, shape.prompt_chars), salt)
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
        if endpoint in ASKS_FOR_USAGE:
            body["stream_options"] = {"include_usage": True}
    return body
