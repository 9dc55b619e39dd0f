"""The auth pipeline: providers asked in order, each optionally followed by a Lua decision.

A request is judged in two steps, because its body must not be read for a key nobody knows:
:meth:`AuthPipeline.recognise` runs on the headers alone (provider lookups, the key's state and
its IP allowlist), before the body is read; :meth:`AuthPipeline.decide` runs once the body was
judged (model allowlist, then the Lua decision, which may look at the model).

``mode: first_match`` — the first provider that knows the key decides (allow or refuse);
``mode: all`` — every enabled provider must know the key and let it in. A provider that cannot
answer follows its ``on_error``: ``deny`` refuses with 503, ``skip`` asks the next one; a failure is
never an allow. Lookups are cached per provider (:class:`LookupCache`); the decision itself —
status, expiry, quota, IP and model allowlists, then Lua — is made on every request, because it
depends on the request (client address, model, headers) and on the clock.

A provider with a decision script owns the fields the seed leaves to scripts: ``balance`` (and
any custom field of its data) is judged by the script alone, so a key with balance 0 reaches
``if tonumber(data.balance) <= 0 then return {allow = false, message = ...} end`` and its client
sees the script's message; without a script the built-in rule (balance <= 0 is
``quota_exceeded``) applies. Status, expiry, quota and the allowlists are the key's own and
are checked before any script, either way.

Every refusal is an :class:`AuthRefused` carrying the OpenAI-style status and code, so the official
clients raise ``AuthenticationError`` (401), ``PermissionDeniedError`` (403) or ``RateLimitError``
(429, quota). Nothing here logs or returns the secret key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from llmproxy.apikey import PresentedKey, has_valid_checksum, is_llmproxy_key
from llmproxy.auth.cache import LookupCache
from llmproxy.auth.keydata import (
    KeyInfo,
    KeyLimits,
    KeyState,
    effective_state,
    ip_allowed,
    key_info,
    model_allowed,
)
from llmproxy.auth.lua import LuaError, LuaScript
from llmproxy.auth.providers.base import KeyData, KeyProvider, ProviderError
from llmproxy.auth.providers.builtin import BuiltinProvider
from llmproxy.auth.refusal import AuthRefused
from llmproxy.budgets import Budget
from llmproxy.config.model import AuthCacheConfig, AuthConfig, StatusCodeConfig

log = logging.getLogger("llmproxy.auth")

_CODES: dict[KeyState | str, str] = {
    "disabled": "key_disabled",
    "expired": "key_expired",
    "quota_exceeded": "insufficient_quota",
    "not_found": "invalid_api_key",
}


class _Skipped(Exception):
    """The provider failed and its ``on_error`` is ``skip``: go on to the next one."""


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """What a decision may look at besides the key: the request, without any secret."""

    method: str
    path: str
    ip: str | None
    model: str | None
    stream: bool
    headers: Mapping[str, str]
    proxied: bool = False
    """The request goes to a backend: a key limited to some models must then name one (a request
    that names none would get whatever model the backend defaults to)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a let-in request belongs to: flows into limits, usage records and upstream headers."""

    key_id: str
    key_prefix: str
    name: str
    user_id: str
    provider: str
    limits: KeyLimits
    metadata: Mapping[str, object] = field(default_factory=dict)
    models: frozenset[str] | None = None
    """The models the key may use (None: any); ``GET /v1/models`` lists only these."""
    team: str = ""
    """The team the key belongs to ("" for none): its limits and budget apply too, and its
    cost is reported under it."""
    budget: Budget | None = None
    """The key's own budget in money over a period (None: none)."""


@dataclass(frozen=True, slots=True)
class _Known:
    """A cached lookup: the raw data (for Lua) and its typed reading."""

    data: KeyData
    info: KeyInfo


@dataclass(frozen=True, slots=True)
class Recognised:
    """A key the pipeline knows, in a state and from an address that may pass: the first step of
    a request's judgement, made before its body is read."""

    key: PresentedKey
    found: tuple[tuple[Stage, _Known], ...]
    """The stage(s) that decide: the first that knows the key, or every one (``mode: all``)."""


@dataclass(slots=True)
class Stage:
    """One pipeline entry: provider, its decision script, its error policy and its cache."""

    provider: KeyProvider
    script: LuaScript | None
    skip_on_error: bool
    cache: LookupCache[_Known] | None

    @classmethod
    def create(
        cls,
        provider: KeyProvider,
        script: LuaScript | None,
        *,
        skip_on_error: bool,
        cache: AuthCacheConfig | None,
    ) -> Stage:
        """A stage whose lookups are cached as ``cache`` says (None: every lookup asks)."""
        return cls(
            provider=provider,
            script=script,
            skip_on_error=skip_on_error,
            cache=LookupCache(cache.ttl, cache.negative_ttl, cache.max_entries)
            if cache is not None and cache.enabled
            else None,
        )


class AuthPipeline:
    """Authenticate one presented key for one request; see the module docstring."""

    def __init__(self, config: AuthConfig, stages: Sequence[Stage]) -> None:
        self.config = config
        self.stages = tuple(stages)
        self._all = config.mode == "all"
        self._status_codes = config.status_codes
        self.uses_lua = any(stage.script is not None for stage in self.stages)
        """Whether any decision script runs (only then are request headers collected for it)."""
        self.keys_seen = 0
        """The daemon's count of key store writes this pipeline has loaded (several workers:
        see :mod:`llmproxy.notices`)."""
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshing_for = 0

    async def open(self) -> None:
        """Connect every provider."""
        for stage in self.stages:
            await stage.provider.open()

    async def close(self) -> None:
        """Disconnect every provider; one failing to close does not keep the others open."""
        for stage in self.stages:
            try:
                await stage.provider.close()
            except Exception:
                log.exception("closing auth provider %s failed", stage.provider.name)

    async def refresh_keys(self, seen: int) -> None:
        """Load the key store again (another worker wrote it) and forget cached lookups; the
        requests that notice the same change wait for one reload. A reload that started before
        the change ``seen`` counts (its read may predate the write) is waited out, then another
        one runs: a request never passes on keys older than the change it saw."""
        while self.keys_seen < seen:
            task = self._refreshing
            if task is None or task.done():
                task = self._refreshing = asyncio.ensure_future(self._refresh_keys(seen))
                self._refreshing_for = seen
            elif self._refreshing_for < seen:
                await asyncio.shield(task)  # too old for this request: let it end, go again
                continue
            await asyncio.shield(task)

    async def _refresh_keys(self, seen: int) -> None:
        for stage in self.stages:
            if isinstance(stage.provider, BuiltinProvider):
                try:
                    await stage.provider.reload_now()
                except ProviderError as exc:
                    # Its poll retries (the store's version moved); failing every request
                    # until then would turn a read error into an outage.
                    log.warning("key store changed but not reloaded yet: %s", exc)
        self.invalidate()
        self.keys_seen = max(self.keys_seen, seen)

    def invalidate(self, sha256: str | None = None) -> None:
        """Forget cached lookups of one key (after a revoke or an update), or of all keys."""
        for stage in self.stages:
            if stage.cache is not None:
                stage.cache.invalidate(sha256)

    async def authenticate(self, key: PresentedKey, request: AuthRequest) -> Identity:
        """Both steps at once: the identity of an allowed request, or a :class:`AuthRefused`."""
        return self.decide(await self.recognise(key, request.ip), request)

    async def recognise(self, key: PresentedKey, ip: str | None) -> Recognised:
        """Find the key (cached lookups) and check what does not depend on the request body:
        its state and IP allowlist. Raises :class:`AuthRefused` when the key may not pass."""
        if is_llmproxy_key(key.secret) and not has_valid_checksum(key.secret):
            raise AuthRefused(
                401, "invalid API key: its checksum does not match", "invalid_api_key"
            )
        now = time.time()
        found: list[tuple[Stage, _Known]] = []
        for stage in self.stages:
            try:
                known = await self._lookup(stage, key)
            except _Skipped:
                continue
            if known is None:
                if self._all:
                    raise self._refusal("not_found")
                continue
            self._check_standing(known.info, ip, now)
            found.append((stage, known))
            if not self._all:
                break
        if not found:
            raise self._refusal("not_found")
        return Recognised(key, tuple(found))

    def decide(self, recognised: Recognised, request: AuthRequest) -> Identity:
        """Finish the judgement once the body is known: model allowlist, then each deciding
        stage's Lua script, in order. Raises :class:`AuthRefused` when refused."""
        now = time.time()
        metadata: dict[str, object] = {}
        identity: Identity | None = None
        for stage, known in recognised.found:
            identity = self._decide(stage, known, recognised.key, request, metadata, now)
        assert identity is not None  # recognise() never returns an empty Recognised
        return _with_metadata(identity, metadata) if self._all else identity

    async def _lookup(self, stage: Stage, key: PresentedKey) -> _Known | None:
        cache = stage.cache
        if cache is not None:
            hit, cached = cache.get(key.sha256)
            if hit:
                return cached
        provider = stage.provider
        try:
            data = await provider.lookup(key)
            fallback_id = "sha256:" + key.sha256[:12]
            scripted = stage.script is not None
            known = (
                None
                if data is None
                else _Known(data, key_info(data, fallback_id, scripted=scripted))
            )
        except (ProviderError, ValueError) as exc:
            # A provider that cannot answer, or answers nonsense, is never an allow.
            log.warning("auth provider %s failed for key %s: %s", provider.name, key.prefix, exc)
            if stage.skip_on_error:
                raise _Skipped from None
            raise AuthRefused(
                503,
                f"authentication is unavailable: provider {provider.name} did not answer",
                "auth_unavailable",
            ) from None
        if cache is not None:
            cache.put(key.sha256, known)
        return known

    def _decide(
        self,
        stage: Stage,
        known: _Known,
        key: PresentedKey,
        request: AuthRequest,
        metadata: dict[str, object],
        now: float,
    ) -> Identity:
        info = known.info
        if not model_allowed(info, request.model):
            raise AuthRefused(
                403,
                f"this API key may not use the model `{request.model}`",
                "model_not_allowed",
                param="model",
            )
        if request.proxied and request.model is None and info.models is not None:
            raise AuthRefused(
                403,
                "this API key may only use the models it is allowed: name one in the `model` "
                "member of a JSON body",
                "model_required",
                param="model",
            )
        metadata.update(info.metadata)
        if stage.script is not None:
            try:
                decision = stage.script.decide(
                    api_key=key.prefix,
                    data=known.data,
                    request=_lua_request(request),
                    metadata=metadata,
                    now=now,
                )
            except LuaError as exc:
                log.error("auth script %s failed: %s", stage.script.name, exc)
                raise AuthRefused(
                    500, "the authentication script failed", "auth_script_error"
                ) from None
            metadata.update(decision.metadata)
            if not decision.allow:
                status = decision.status or 403
                raise AuthRefused(
                    status,
                    decision.message or "access denied",
                    "insufficient_quota" if status == 429 else "access_denied",
                )
        return Identity(
            key_id=info.key_id,
            key_prefix=key.prefix,
            name=info.name,
            user_id=str(metadata.get("user_id") or info.user_id),
            provider=stage.provider.name,
            limits=info.limits,
            metadata=dict(metadata),
            models=info.models,
            team=info.team,
            budget=info.budget,
        )

    def _check_standing(self, info: KeyInfo, ip: str | None, now: float) -> None:
        state = effective_state(info, now)
        if state != "active":
            rule: StatusCodeConfig = getattr(self._status_codes, state)
            if not rule.allow:
                raise self._refusal(state)
        if not ip_allowed(info, ip):
            raise AuthRefused(
                403, "this API key may not be used from this address", "ip_not_allowed"
            )

    def _refusal(self, state: KeyState | str) -> AuthRefused:
        rule: StatusCodeConfig = getattr(self._status_codes, state)
        return AuthRefused(
            rule.http_code, rule.message or "access denied", _CODES.get(state, "access_denied")
        )


def _with_metadata(identity: Identity, metadata: Mapping[str, object]) -> Identity:
    user_id = str(metadata.get("user_id") or identity.user_id)
    # replace(): every other field (team, budget...) is the deciding stage's, as it was.
    return dataclasses.replace(identity, user_id=user_id, metadata=dict(metadata))


def _lua_request(request: AuthRequest) -> dict[str, object]:
    return {
        "method": request.method,
        "path": request.path,
        "ip": request.ip or "",
        "model": request.model or "",
        "stream": request.stream,
        "headers": dict(request.headers),
    }
