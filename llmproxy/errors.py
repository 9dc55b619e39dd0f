"""OpenAI-style error bodies, built once at the boundary.

Every failure the gateway reports — its own or a translated upstream one — has the body the OpenAI
API uses, ``{"error": {"message", "type", "param", "code"}}``, so that the official clients raise
their typed exceptions (``BadRequestError``, ``NotFoundError``, ``RateLimitError``...). Raising a
:class:`GatewayError` anywhere on the request path ends the request with that body.
"""

from __future__ import annotations

import msgspec

_ENCODER = msgspec.json.Encoder()

_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class GatewayError(Exception):
    """A request failure with the status and OpenAI error fields the client will see."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        *,
        error_type: str | None = None,
        param: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.error_type = error_type or _TYPE_FOR_STATUS.get(status, "api_error")
        self.param = param
        self.headers = headers

    def body(self) -> bytes:
        """The JSON body, as bytes."""
        return error_body(self.status, self.message, self.code, self.error_type, self.param)

    def anthropic(self) -> tuple[int, bytes]:
        """The status and body an Anthropic client expects for this error (on ``/v1/messages``):
        the ``anthropic`` SDK raises its typed exceptions from these."""
        status = ANTHROPIC_STATUS.get(self.status, self.status)
        return status, anthropic_error_body(status, self.message)


def error_body(
    status: int,
    message: str,
    code: str | None = None,
    error_type: str | None = None,
    param: str | None = None,
) -> bytes:
    """Encode ``{"error": {...}}`` for ``status``."""
    return _ENCODER.encode(
        {
            "error": {
                "message": message,
                "type": error_type or _TYPE_FOR_STATUS.get(status, "api_error"),
                "param": param,
                "code": code,
            }
        }
    )


_ANTHROPIC_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

ANTHROPIC_STATUS = {503: 529}
"""Statuses said otherwise to Anthropic clients: capacity refusals (the gateway shedding load, no
backend slot, a body budget spent) are Anthropic's 529 ``overloaded_error``, which its clients
know to retry."""


def anthropic_error_body(status: int, message: str, error_type: str | None = None) -> bytes:
    """Encode Anthropic's ``{"type": "error", "error": {"type", "message"}}`` for ``status``."""
    kind = error_type or _ANTHROPIC_TYPE_FOR_STATUS.get(status, "api_error")
    return _ENCODER.encode({"type": "error", "error": {"type": kind, "message": message}})


def anthropic_error_event(message: str, status: int = 502) -> bytes:
    """Anthropic's ``error`` event, ending a Messages stream whose upstream failed after it
    began (the ``anthropic`` SDK raises on it)."""
    return b"event: error\ndata: " + anthropic_error_body(status, message) + b"\n\n"


def sse_error_event(message: str, code: str, status: int = 502) -> bytes:
    """An SSE ``error`` event that ends a stream whose upstream failed after it began.

    The OpenAI Python client raises ``APIError`` on an event named ``error`` whose data holds an
    ``error`` object, so a broken stream is never mistaken for a finished one.
    """
    return b"event: error\ndata: " + error_body(status, message, code) + b"\n\n"
