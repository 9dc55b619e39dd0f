"""Anthropic's Messages API in front of a backend that speaks only OpenAI chat completions.

A gateway answering ``POST /v1/messages`` (the ``anthropic`` SDK, Claude Code) for such a backend
translates the request on the way in and the answer on the way out; everything here is pure, over
bytes, so the gateway keeps the I/O::

    try:
        chat_body = messages_request_to_chat(body)
    except TranslationError as exc:
        ...  # 400 invalid_request_error, exc.message, exc.param
    # whole answer
    answer = chat_response_to_messages(upstream_body, model)  # 2xx
    error = chat_error_to_messages(status, upstream_body)     # otherwise
    # streamed answer
    stream = ChatStreamToMessages(model)
    for chunk in upstream: client.write(stream.feed(chunk))
    client.write(stream.finish())

What maps how, and the few places where the APIs differ and a choice was made, is said where it
is done: the request in :mod:`~llmproxy.translate._request`, stop reasons and tool arguments in
:mod:`~llmproxy.translate._chat_wire`.
"""

from __future__ import annotations

from llmproxy.translate._chat_wire import stop_reason
from llmproxy.translate._errors import (
    TranslationError,
    UpstreamResponseError,
    chat_error_to_messages,
)
from llmproxy.translate._request import messages_request_to_chat
from llmproxy.translate._response import chat_response_to_messages
from llmproxy.translate._stream import ChatStreamToMessages


def messages_stop_reason(finish_reason: str) -> str:
    """Anthropic's ``stop_reason`` for a chat ``finish_reason`` (``length`` → ``max_tokens``):
    a translated request's usage record says it as its client's API does."""
    return stop_reason(finish_reason, None, called_tools=False)[0]


__all__ = [
    "ChatStreamToMessages",
    "TranslationError",
    "UpstreamResponseError",
    "chat_error_to_messages",
    "chat_response_to_messages",
    "messages_request_to_chat",
    "messages_stop_reason",
]
