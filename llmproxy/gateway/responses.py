"""Small complete responses the gateway answers itself (errors, health, JSON documents)."""

from __future__ import annotations

from collections.abc import Sequence

from llmproxy.errors import GatewayError
from llmproxy.gateway.asgi import Send

JSON = b"application/json"


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Send a whole response with a ``content-length``."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode("latin-1")),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(
    send: Send, error: GatewayError, request_id: bytes, *, anthropic: bool = False
) -> None:
    """Send ``error`` as an OpenAI-style JSON error body, or Anthropic's (``anthropic``: the
    request was for ``/v1/messages``)."""
    status, body = error.anthropic() if anthropic else (error.status, error.body())
    await send_bytes(send, status, body, headers=((b"x-request-id", request_id), *error.headers))
