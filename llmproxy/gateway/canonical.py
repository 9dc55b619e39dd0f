"""The canonical request: built once at the edge, before any decision, and read by every step.

Auth, skip paths, endpoint rules, limits, billing, recording and forwarding all read this one
object, so no step can judge one form of the request while another forwards a different one:

* ``target`` is the raw path and query exactly as they will be sent upstream (the path checked
  to be in canonical form by :mod:`llmproxy.gateway.request_path`);
* ``path`` is what that path decodes to — what the backend's router will see;
* ``endpoint`` is ``path`` in lower case: the key every rule is looked up by, so a backend that
  matches paths without regard to case cannot be reached under a spelling the gateway judged
  as some other endpoint;
* ``client`` is the client's address as ``server.trusted_proxies`` allows it to be known.

The body is judged later, by :mod:`llmproxy.gateway.request_body`, once the key is recognised.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import msgspec

from llmproxy.errors import GatewayError
from llmproxy.gateway.asgi import BODY_WRITER, BodyWriter, Scope
from llmproxy.gateway.client_address import ClientAddress, ProxyTrust
from llmproxy.gateway.request_path import PathRefused, canonical_path
from llmproxy.http_fields import RawHeaders

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

ABORT = "llmproxy.abort"
"""The ASGI scope extension under which the listener offers to cut a connection short."""

# What a query string may hold when it is passed on untouched: printable ASCII, no space.
_QUERY_OK = re.compile(rb"[!-~]*")


class CanonicalRequest(msgspec.Struct, frozen=True):
    """One client request in the form every step judges and the backend receives.

    A msgspec struct: one is built per request, and a frozen dataclass costs five times as much.
    """

    method: str
    path: str
    endpoint: str
    target: str
    headers: RawHeaders
    client: ClientAddress
    request_id: str
    upstream_id: str
    """The ``X-Request-Id`` sent to the backend: ``request_id`` when the gateway made it, else
    the client's id followed by one of the gateway's (unique whatever the client sends)."""
    abort: Callable[[], None] | None = None
    """Closes the client's connection without ending the response (the listener's): how an
    answer that broke after its status line was sent is cut short, so the client never takes
    it for complete."""
    writer: BodyWriter | None = None
    """The listener's direct writer of this request's response body (see
    :class:`~llmproxy.gateway.asgi.BodyWriter`)."""

    @property
    def client_ip(self) -> str | None:
        """The client's address (see :class:`ClientAddress`)."""
        return self.client.ip


def canonical_request(
    scope: Scope, trust: ProxyTrust, request_id: str, upstream_id: str
) -> CanonicalRequest:
    """Build the canonical request from the ASGI scope, or raise 400 ``invalid_path``."""
    method: str = scope["method"]
    if method not in _METHODS:
        # CONNECT would be rewritten by the HTTP client; the rest are not the API's.
        raise GatewayError(405, f"the method {method} is not served", "method_not_allowed")
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    try:
        path = canonical_path(raw)
    except PathRefused as refused:
        raise GatewayError(400, str(refused), "invalid_path") from None
    query: bytes = scope["query_string"]
    if query and _QUERY_OK.fullmatch(query) is None:
        raise GatewayError(
            400,
            "the query string must be printable ASCII (percent-encode the rest)",
            "invalid_path",
        )
    target = path.raw + b"?" + query if query else path.raw
    headers: RawHeaders = scope["headers"]
    peer = scope.get("client")
    extensions = scope.get("extensions") or {}
    return CanonicalRequest(
        method=method,
        path=path.path,
        endpoint=path.path.lower(),
        target=target.decode("ascii"),
        headers=headers,
        client=trust.resolve(peer[0] if peer else None, headers),
        request_id=request_id,
        upstream_id=upstream_id,
        abort=extensions.get(ABORT),
        writer=extensions.get(BODY_WRITER),
    )
