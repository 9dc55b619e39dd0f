"""The auth steps of the request path: find the key, recognise it, then decide on the request.

The key comes from the headers and is recognised (provider lookups, its state and IP
allowlist) before the body is read: a request with an unknown key gets its 401 without its body
being read, buffered or parsed. The decision that depends on the body (model allowlist, Lua) is
made once the body was judged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from llmproxy.apikey import PresentedKey
from llmproxy.auth.extract import extract_key
from llmproxy.auth.pipeline import AuthRequest, Identity, Recognised
from llmproxy.auth.refusal import AuthRefused
from llmproxy.errors import GatewayError
from llmproxy.gateway.request_path import under
from llmproxy.gateway.snapshot import Snapshot as Runtime
from llmproxy.http_fields import RawHeaders, header_value_problem
from llmproxy.notices import Notice

log = logging.getLogger("llmproxy.auth")

_MISSING = "no API key: send it as `Authorization: Bearer <key>` or in an `X-API-Key` header"


def needs_key(runtime: Runtime, path: str) -> bool:
    """True when auth is on and the canonical ``path`` is not under one of ``auth.skip_paths``
    (whole segments), nor the root: ``/`` is the reachability check agent tools make before
    they send a key (Claude Code's ``HEAD /``), answered ``{"status":"ok"}`` and nothing more."""
    return runtime.auth is not None and path != "/" and not under(path, runtime.auth_skip_paths)


def presented_key(runtime: Runtime, headers: RawHeaders) -> PresentedKey:
    """The request's key, or a 401 ``missing_api_key``."""
    secret = extract_key(headers, runtime.auth_header_names)
    if secret is None:
        raise GatewayError(
            401, _MISSING, "missing_api_key", headers=((b"www-authenticate", b"Bearer"),)
        )
    return PresentedKey.of(secret)


async def recognise(runtime: Runtime, key: PresentedKey, client_ip: str | None) -> Recognised:
    """The first step, on the headers alone; raises :class:`GatewayError` when refused."""
    pipeline = runtime.auth
    assert pipeline is not None
    notices = runtime.notices
    if notices is not None:
        changed = notices.read(Notice.KEYS)
        if changed != pipeline.keys_seen:  # another worker wrote the key store: load it first
            await pipeline.refresh_keys(changed)
    try:
        return await pipeline.recognise(key, client_ip)
    except AuthRefused as refused:
        raise _refusal(runtime, refused) from None


def trace_attributes(recognised: Recognised) -> dict[str, str | int]:
    """The auth span's attributes: which provider(s) knew the key (a cached lookup shows as a
    span of microseconds, a provider's as its round trip)."""
    names = ",".join(stage.provider.name for stage, _ in recognised.found)
    return {"llmproxy.auth.provider": names}


def decide(
    runtime: Runtime,
    recognised: Recognised,
    *,
    method: str,
    path: str,
    headers: RawHeaders,
    client_ip: str | None,
    model: str | None,
    stream: bool,
    proxied: bool,
) -> Identity:
    """The second step, once the body was judged; raises :class:`GatewayError` when refused."""
    pipeline = runtime.auth
    assert pipeline is not None
    request = AuthRequest(
        method=method,
        path=path,
        ip=client_ip,
        model=model,
        stream=stream,
        headers=_plain_headers(headers, runtime.secret_headers) if pipeline.uses_lua else {},
        proxied=proxied,
    )
    try:
        identity = pipeline.decide(recognised, request)
    except AuthRefused as refused:
        raise _refusal(runtime, refused) from None
    runtime.metrics.auth_decision(identity.provider, "allowed")
    return identity


def _refusal(runtime: Runtime, refused: AuthRefused) -> GatewayError:
    """Auth's refusal as the answer the client gets (and counted)."""
    runtime.metrics.auth_decision("none", "error" if refused.status >= 500 else "denied")
    return GatewayError(
        refused.status,
        refused.message,
        refused.code,
        param=refused.param,
        headers=refused.headers,
    )


def metadata_headers(forward: Mapping[str, str], identity: Identity) -> tuple[tuple[str, str], ...]:
    """Upstream headers carrying the decision metadata the operator chose to forward.

    A value that cannot be a header (a CR or LF from a provider's data or a Lua decision) is
    never sent: the request is refused with a 500 and the log names the provider and the item.
    """
    if not forward:
        return ()
    values = {"user_id": identity.user_id, "key_id": identity.key_id, **identity.metadata}
    out = []
    for name, header in forward.items():
        value = values.get(name)
        if value in (None, ""):
            continue
        text = str(value)
        problem = header_value_problem(text)
        if problem is not None:
            log.error(
                "auth provider %s gave key %s a `%s` that cannot be forwarded as %s: %s",
                identity.provider,
                identity.key_prefix,
                name,
                header,
                problem,
            )
            raise GatewayError(
                500,
                f"the gateway cannot forward this key's `{name}` (see the gateway's log)",
                "invalid_forwarded_metadata",
            )
        out.append((header, text))
    return tuple(out)


def _plain_headers(headers: RawHeaders, secret: frozenset[bytes]) -> dict[str, str]:
    """The request headers a Lua script may read: never the ones carrying a key."""
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in headers
        if name not in secret
    }
