"""Read only the fields of a request body that routing and accounting need.

The body is decoded once with msgspec into a tiny struct (unknown fields are skipped without being
built), and the original bytes are what gets forwarded. Every way a body can be wrong becomes a 400
that says what is wrong.
"""

from __future__ import annotations

import msgspec

from llmproxy.gateway.errors import GatewayError


class RequestPeek(msgspec.Struct, frozen=True):
    """What the gateway reads from an OpenAI request body."""

    model: str | None = None
    stream: bool | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None

    @property
    def streaming(self) -> bool:
        """True when the client asked for server-sent events."""
        return bool(self.stream)


_DECODER = msgspec.json.Decoder(RequestPeek)
EMPTY_PEEK = RequestPeek()


def peek_body(body: bytes, *, model_required: bool) -> RequestPeek:
    """Decode ``body`` or raise a 400 :class:`GatewayError` naming the problem."""
    if not body:
        if model_required:
            raise GatewayError(400, "the request body is empty; send a JSON object", "invalid_body")
        return EMPTY_PEEK
    try:
        peek = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "Expected `object`" in text and "at `$" not in text:
            raise GatewayError(
                400, "the request body must be a JSON object", "invalid_body"
            ) from None
        field = text.rsplit("at `$.", 1)[-1].rstrip("`") if "at `$." in text else None
        raise GatewayError(
            400, f"invalid request body: {text}", "invalid_body", param=field
        ) from None
    except msgspec.DecodeError as exc:
        raise GatewayError(
            400, f"the request body is not valid JSON: {exc}", "invalid_json"
        ) from None
    if model_required and not peek.model:
        raise GatewayError(
            400, "you must provide a model parameter", "missing_model", param="model"
        )
    return peek


def with_member(body: bytes, name: str, value: int) -> bytes:
    """``body`` (a JSON object, already peeked) with the top-level member ``name`` set to
    ``value``: added in front when absent; when the client sent its own, the object is
    re-encoded with the gateway's value (a client must not choose its own priority).
    """
    member = msgspec.json.encode(name)
    if member not in body:
        start = body.find(b"{")
        return (
            body[: start + 1] + member + b":" + str(int(value)).encode() + b"," + body[start + 1 :]
        )
    members = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
    members[name] = msgspec.Raw(str(int(value)).encode())
    return msgspec.json.encode(members)
