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


def sse_error_event(message: str, code: str, status: int = 502) -> bytes:
    """An SSE ``error`` event that ends a stream whose upstream failed after it began.

    The OpenAI Python client raises ``APIError`` on an event named ``error`` whose data holds an
    ``error`` object, so a broken stream is never mistaken for a finished one.
    """
    return b"event: error\ndata: " + error_body(status, message, code) + b"\n\n"
