"""``GET /v1/models``: the union of the models every backend serves, as far as the key may see.

Backends that list ``models`` in the config are taken at their word; the others are asked for their
own ``/v1/models`` (bounded by a short timeout, cached for a while) so the union is real.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import msgspec

from llmproxy.gateway.snapshot import Snapshot as Runtime

log = logging.getLogger("llmproxy.gateway")

_DISCOVERY_TIMEOUT = aiohttp.ClientTimeout(total=2.0)
_CACHE_SECONDS = 30.0


class _ModelEntry(msgspec.Struct):
    id: str


class _ModelList(msgspec.Struct):
    data: list[_ModelEntry]


_LIST_DECODER = msgspec.json.Decoder(_ModelList)
_ENCODER = msgspec.json.Encoder()


async def _discover(runtime: Runtime, name: str) -> list[str]:
    client = runtime.clients[name]
    try:
        async with client.session.get(
            client.base_url + "/v1/models",
            headers=dict(client.extra_headers),
            timeout=_DISCOVERY_TIMEOUT,
        ) as response:
            if response.status != 200:
                return []
            return [entry.id for entry in _LIST_DECODER.decode(await response.read()).data]
    except (aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError) as exc:
        log.info("could not list the models of backend %s: %s", name, type(exc).__name__)
        return []


async def _served(runtime: Runtime) -> tuple[str, ...]:
    """Every model some backend serves, sorted (cached for a while)."""
    cache = runtime.model_list_cache
    now = time.monotonic()
    if cache is not None and cache[0] > now:
        return cache[1]
    owners: dict[str, str] = {}
    unlisted = []
    for backend in runtime.config.backends:
        if backend.models:
            for model in backend.models:
                owners.setdefault(model, backend.display_name)
        else:
            unlisted.append(backend.display_name)
    found = await asyncio.gather(*(_discover(runtime, name) for name in unlisted))
    for name, models in zip(unlisted, found, strict=True):
        for model in models:
            owners.setdefault(model, name)
    # Discovered names become allowed metric label values (anything else is labelled "other").
    runtime.metrics.allow_models(owners)
    served = tuple(sorted(owners))
    runtime.model_list_cache = (now + _CACHE_SECONDS, served)
    return served


def _entry(model: str, created: int) -> dict[str, object]:
    return {"id": model, "object": "model", "created": created, "owned_by": "llmproxy"}


async def list_models(runtime: Runtime, allowed: frozenset[str] | None = None) -> bytes:
    """The OpenAI model list document, as bytes: the models served, and of those only the ones
    in ``allowed`` (a key's allowlist; None: every one)."""
    created = int(time.time())
    served = await _served(runtime)
    return _ENCODER.encode(
        {
            "object": "list",
            "data": [
                _entry(model, created) for model in served if allowed is None or model in allowed
            ],
        }
    )


async def retrieve_model(
    runtime: Runtime, model: str, allowed: frozenset[str] | None = None
) -> bytes | None:
    """``GET /v1/models/{model}``: the model's document, or None when it is not served or not
    in ``allowed`` (a key learns nothing of models it may not use)."""
    if allowed is not None and model not in allowed:
        return None
    if model not in await _served(runtime):
        return None
    return _ENCODER.encode(_entry(model, int(time.time())))
