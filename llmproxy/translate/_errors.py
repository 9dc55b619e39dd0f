"""The two ways a translation fails, and the backend's error bodies said in Anthropic's shape."""

from __future__ import annotations

from typing import Any

import msgspec

from llmproxy.errors import anthropic_error_body

_MAX_RAW_MESSAGE = 1000
"""A backend error body that is not JSON is quoted up to this many characters (an HTML error page
from a proxy in front of the backend says nothing useful past its title)."""


class TranslationError(Exception):
    """A Messages request that cannot be expressed as chat completions: the gateway answers 400
    ``invalid_request_error`` with this message (never silently drops something).

    ``param`` is the path of the offending member, as in ``messages[2].content[0].type``.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class UpstreamResponseError(Exception):
    """A 2xx backend answer that is not a chat completion: the backend is at fault, so the
    gateway answers 502 ``api_error`` rather than blaming the client's request."""


class _ErrorObject(msgspec.Struct):
    message: str | None = None


class _ErrorBody(msgspec.Struct):
    """The error bodies OpenAI-compatible servers write: ``{"error": {"message"}}`` (OpenAI,
    vLLM), ``{"error": "..."}``, ``{"object": "error", "message"}`` (older vLLM) and
    ``{"detail": "..."}`` (a FastAPI server's own validation errors)."""

    error: _ErrorObject | str | None = None
    message: str | None = None
    detail: str | None = None


_decode_error_body = msgspec.json.Decoder(_ErrorBody).decode


def chat_error_to_messages(status: int, body: bytes) -> bytes:
    """An OpenAI-style error body from the backend -> Anthropic's error shape.

    The type follows ``status`` (404 ``not_found_error``, 429 ``rate_limit_error``, 503 and 529
    ``overloaded_error``, other 5xx ``api_error``...), which is what the ``anthropic`` SDK and
    Claude Code branch on; the message is the backend's own.
    """
    return anthropic_error_body(status, error_message(body, status))


def error_message(body: bytes, status: int) -> str:
    """The human message in a backend error body, or its text (bounded) when it has none."""
    try:
        fields = _decode_error_body(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        fields = _ErrorBody()
    error = fields.error
    for candidate in (
        error.message if isinstance(error, _ErrorObject) else error,
        fields.message,
        fields.detail,
    ):
        if candidate:
            return candidate
    text = body.decode("utf-8", "replace").strip()[:_MAX_RAW_MESSAGE]
    return text or f"the backend answered HTTP {status} with no message"


def status_of(code: Any) -> int:
    """The HTTP status an in-stream error object names in its ``code`` (vLLM writes the status
    there), or 502: the backend failed mid-answer, whatever it was."""
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        return code
    return 502
