"""``GET /v1/models``: the union of the models every backend serves.

Backends that list ``models`` in the config are taken at their word; the others are asked for their
own ``/v1/models`` (bounded by a short timeout, cached for a while) so the union is real.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import aiohttp
import msgspec

if TYPE_CHECKING:
    from llmproxy.daemon.runtime import Runtime

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


async def list_models(runtime: Runtime) -> bytes:
    """The OpenAI model list document, as bytes."""
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
    created = int(time.time())
    body = _ENCODER.encode(
        {
            "object": "list",
            "data": [
                {"id": model, "object": "model", "created": created, "owned_by": "llmproxy"}
                for model in sorted(owners)
            ],
        }
    )
    runtime.model_list_cache = (now + _CACHE_SECONDS, body)
    return body
