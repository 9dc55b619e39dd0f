"""The auth step of the request path: find the key, ask the pipeline, pass the identity on.

The key is looked for before the body is read (a request without one costs nothing more); the
pipeline is asked once the model is known, because allowlists and Lua decisions depend on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from llmproxy.auth.extract import extract_key
from llmproxy.auth.keys import PresentedKey
from llmproxy.auth.pipeline import AuthRequest, Identity
from llmproxy.gateway.errors import GatewayError
from llmproxy.gateway.headers import RawHeaders

if TYPE_CHECKING:
    from llmproxy.daemon.runtime import Runtime

_MISSING = "no API key: send it as `Authorization: Bearer <key>` or in an `X-API-Key` header"


def needs_key(runtime: Runtime, path: str) -> bool:
    """True when auth is on and ``path`` is not one of ``auth.skip_paths`` (prefix match)."""
    return runtime.auth is not None and not path.startswith(runtime.auth_skip_paths)


def presented_key(runtime: Runtime, headers: RawHeaders) -> PresentedKey:
    """The request's key, or a 401 ``missing_api_key``."""
    secret = extract_key(headers, runtime.auth_header_names)
    if secret is None:
        raise GatewayError(
            401, _MISSING, "missing_api_key", headers=((b"www-authenticate", b"Bearer"),)
        )
    return PresentedKey.of(secret)


async def identify(
    runtime: Runtime,
    key: PresentedKey,
    *,
    method: str,
    path: str,
    headers: RawHeaders,
    client_ip: str | None,
    model: str | None,
    stream: bool,
) -> Identity:
    """Ask the pipeline; raises :class:`GatewayError` when the key may not pass."""
    pipeline = runtime.auth
    assert pipeline is not None
    request = AuthRequest(
        method=method,
        path=path,
        ip=client_ip,
        model=model,
        stream=stream,
        headers=_plain_headers(headers, runtime.secret_headers) if pipeline.uses_lua else {},
    )
    try:
        identity = await pipeline.authenticate(key, request)
    except GatewayError as error:
        runtime.metrics.auth_decision("none", "error" if error.status >= 500 else "denied")
        raise
    runtime.metrics.auth_decision(identity.provider, "allowed")
    return identity


def metadata_headers(forward: Mapping[str, str], identity: Identity) -> tuple[tuple[str, str], ...]:
    """Upstream headers carrying the decision metadata the operator chose to forward."""
    if not forward:
        return ()
    values = {"user_id": identity.user_id, "key_id": identity.key_id, **identity.metadata}
    return tuple(
        (header, str(values[name]))
        for name, header in forward.items()
        if values.get(name) not in (None, "")
    )


def _plain_headers(headers: RawHeaders, secret: frozenset[bytes]) -> dict[str, str]:
    """The request headers a Lua script may read: never the ones carrying a key."""
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in headers
        if name not in secret
    }
