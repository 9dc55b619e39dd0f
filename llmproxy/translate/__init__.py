"""Translations between the model APIs the gateway serves and those its backends speak."""

from __future__ import annotations

from llmproxy.translate.messages import (
    ChatStreamToMessages,
    TranslationError,
    UpstreamResponseError,
    chat_error_to_messages,
    chat_response_to_messages,
    messages_request_to_chat,
    messages_stop_reason,
)

__all__ = [
    "ChatStreamToMessages",
    "TranslationError",
    "UpstreamResponseError",
    "chat_error_to_messages",
    "chat_response_to_messages",
    "messages_request_to_chat",
    "messages_stop_reason",
]
