"""CORS for browser clients: answer preflights, and add the allow headers to real responses.

Only requests that carry an ``Origin`` pay for this, and only when ``server.cors.enabled``.
"""

from __future__ import annotations

from llmproxy.config.model import CORSConfig
from llmproxy.errors import GatewayError
from llmproxy.gateway.asgi import Message, Send
from llmproxy.gateway.responses import send_error


def allowed_origin(config: CORSConfig, origin: bytes) -> bytes | None:
    """The value for ``Access-Control-Allow-Origin``, or None when ``origin`` is not allowed."""
    if "*" in config.allow_origins:
        return origin if config.allow_credentials else b"*"
    text = origin.decode("latin-1")
    return origin if text in config.allow_origins else None


def _common(config: CORSConfig, allowed: bytes) -> list[tuple[bytes, bytes]]:
    headers = [(b"access-control-allow-origin", allowed), (b"vary", b"Origin")]
    if config.allow_credentials:
        headers.append((b"access-control-allow-credentials", b"true"))
    return headers


async def preflight(send: Send, config: CORSConfig, origin: bytes, request_id: bytes) -> None:
    """Answer an ``OPTIONS`` preflight: 204 with the allowed methods and headers, or 403."""
    allowed = allowed_origin(config, origin)
    if allowed is None:
        await send_error(
            send, GatewayError(403, "origin not allowed", "cors_origin_denied"), request_id
        )
        return
    headers = _common(config, allowed)
    headers += [
        (b"access-control-allow-methods", ", ".join(config.allow_methods).encode()),
        (b"access-control-allow-headers", ", ".join(config.allow_headers).encode()),
        (b"access-control-max-age", str(int(config.max_age)).encode()),
        (b"x-request-id", request_id),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def wrap_send(send: Send, config: CORSConfig, origin: bytes) -> Send:
    """A ``send`` that adds the CORS headers to the response start."""
    allowed = allowed_origin(config, origin)
    if allowed is None:
        return send
    extra = _common(config, allowed)
    if config.expose_headers:
        extra.append((b"access-control-expose-headers", ", ".join(config.expose_headers).encode()))

    async def send_with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message["headers"], *extra]
        await send(message)

    return send_with_cors
