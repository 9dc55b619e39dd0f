"""Which headers cross the gateway, in each direction. Pure functions over ASGI header lists.

A proxy must not forward hop-by-hop headers (RFC 9110 §7.6.1), nor any header the ``Connection``
header names; the client's API key belongs to the gateway and is never sent to a backend (the
backend's own ``api_key`` from the config is sent instead).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

from llmproxy.errors import GatewayError
from llmproxy.http_fields import RawHeaders

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Set by the gateway or the HTTP client for the upstream leg; a client's copy would be wrong there.
# The gateway reads usage from the backend's answers: it never asks for them compressed.
_REQUEST_MANAGED = frozenset(
    {b"host", b"content-length", b"x-request-id", b"expect", b"accept-encoding"}
)
# The ASGI server writes its own; copying the backend's would duplicate them.
_RESPONSE_MANAGED = frozenset({b"server", b"date", b"x-request-id"})


@functools.lru_cache(maxsize=16)
def _dropped(secret_headers: frozenset[bytes], trusted_forwarding: bool) -> frozenset[bytes]:
    """The client headers never forwarded (cached: a runtime has one set of secret headers)."""
    drop = HOP_BY_HOP | _REQUEST_MANAGED | secret_headers
    return drop if trusted_forwarding else drop | _FORWARDING


def _connection_named(headers: RawHeaders) -> frozenset[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return frozenset(named)


# Forwarding headers a client may write itself; passed on only from a trusted proxy.
_FORWARDING = frozenset({b"forwarded", b"x-real-ip", b"x-forwarded-host", b"x-forwarded-proto"})


def upstream_request_headers(
    client_headers: RawHeaders,
    secret_headers: frozenset[bytes],
    extra: Iterable[tuple[str, str]],
    request_id: str,
    forwarded_for: str | None,
    *,
    trusted_forwarding: bool = False,
) -> dict[str, str]:
    """Headers for the request to the backend.

    ``secret_headers`` are the lowercase names that carry the client's API key (``authorization``,
    ``x-api-key`` and any configured ``auth.header_names``) or that the gateway fills itself
    (forwarded metadata). A client header is dropped when its name *or* its name with ``_``
    read as ``-`` is one of them: servers behind CGI-style header maps (``HTTP_X_USER_ID``)
    cannot tell ``x_user_id`` from ``x-user-id``. ``extra`` is the backend's configured headers,
    including its own ``Authorization``. ``forwarded_for`` is the upstream ``X-Forwarded-For``
    (see :mod:`llmproxy.gateway.client_address`); ``trusted_forwarding`` passes the client's
    other forwarding headers on (the peer is a trusted proxy).
    """
    drop = _dropped(secret_headers, trusted_forwarding)
    named = _connection_named(client_headers)
    if named:
        drop = drop | named
    out: dict[str, str] = {}
    for raw_name, raw_value in client_headers:
        name = raw_name.lower()
        if name in drop or name == b"x-forwarded-for":
            continue
        if b"_" in name and name.replace(b"_", b"-") in drop:
            continue
        key = name.decode("latin-1")
        try:
            # The HTTP client writes values as UTF-8: decoded so, the bytes the backend gets
            # are the bytes the client sent; a value that is not UTF-8 cannot be passed on.
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            raise GatewayError(
                400, f"header {key} is neither ASCII nor UTF-8", "invalid_header"
            ) from None
        out[key] = f"{out[key]}, {value}" if key in out else value
    if forwarded_for:
        out["x-forwarded-for"] = forwarded_for
    for key, value in extra:
        out[key.lower()] = value
    out["x-request-id"] = request_id
    return out


_RESPONSE_DROP = HOP_BY_HOP | _RESPONSE_MANAGED
_RESPONSE_DROP_CHANGED = _RESPONSE_DROP | {b"content-length"}


def client_response_headers(
    upstream_headers: Iterable[tuple[bytes, bytes]],
    request_id: bytes,
    extra: Sequence[tuple[bytes, bytes]] = (),
    *,
    body_changes: bool = False,
) -> list[tuple[bytes, bytes]]:
    """Headers for the response to the client, from the backend's raw headers.

    ``extra`` (the gateway's rate-limit headers) replaces any copy the backend sent.
    ``body_changes``: the gateway relays a different body (the usage event cut out of a
    stream), so the backend's ``Content-Length`` would be a lie and is dropped.
    """
    upstream = list(upstream_headers)
    drop = _RESPONSE_DROP_CHANGED if body_changes else _RESPONSE_DROP
    named = _connection_named(upstream)
    if named:
        drop = drop | named
    if extra:
        drop = drop | {name for name, _ in extra}
    out = [(name.lower(), value) for name, value in upstream if name.lower() not in drop]
    out.append((b"x-request-id", request_id))
    out.extend(extra)
    return out


# What an HTTP/1.1 server may not write in a header value (uvicorn refuses to, mid-response).
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def unsendable_header(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The name of the first header whose value cannot be relayed (a control character the
    backend's HTTP parser let through), or None. One search over all the values at once."""
    pairs = list(headers)
    if _BAD_VALUE.search(b"\t".join(value for _, value in pairs)) is None:
        return None
    return next(name for name, value in pairs if _BAD_VALUE.search(value))


def find_header(headers: RawHeaders, name: bytes) -> bytes | None:
    """The first value of a lowercase header ``name``, or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None
