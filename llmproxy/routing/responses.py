"""Which backend created each OpenAI Responses API response: where its follow-ups must go.

A response lives in the memory of the inference server that made it (vLLM keeps its store per
process), so ``previous_response_id`` and ``GET`` / ``DELETE /v1/responses/{id}`` only work on
that server. The gateway notes each response id it relays with its backend's name and routes
those requests there; an id it never saw is a 404 from the gateway, never a guess.

Each id is noted with its maker too — the key that created it and the model it was made with —
so only that key reaches it, judged on that model (a key limited to other models, or another
tenant, gets the same 404 as an id never seen). The first backend to name an id keeps it: a
backend cannot claim another's response.

Two places: a bounded table in this process (most recent :data:`MAX_IDS`), and — when limits
are on Redis, so several workers and replicas share a Redis already — Redis (``SET NX`` with a
:data:`TTL`), written in the background off the relay path and read when the local table does
not know an id.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Final, NamedTuple

import msgspec

if TYPE_CHECKING:  # redis is an extra; a client is passed in only when it is installed
    from redis.asyncio import Redis

log = logging.getLogger("llmproxy.routing")

MAX_IDS: Final = 100_000
"""Response ids remembered by one process (~100 bytes each)."""
TTL: Final = 7 * 24 * 3600
"""Seconds a response id is remembered in Redis."""
PREFIX: Final = "llmproxy:response:"

_ID: Final = re.compile(rb'"id"\s*:\s*"(resp[_-][A-Za-z0-9_-]{1,200})"')
"""A response id as vLLM and OpenAI write it (``resp_`` then letters and digits)."""


class Home(NamedTuple):
    """Where a response lives and who made it."""

    backend: str
    owner: str
    """The key id that created it ("" without auth)."""
    model: str


_decode_home = msgspec.json.Decoder(tuple[str, str, str]).decode


def response_id_in(data: bytes) -> str | None:
    """The first response id in a Responses answer (its body, or its stream's first events:
    ``response.created`` holds the response with its id)."""
    found = _ID.search(data)
    return found.group(1).decode("ascii") if found is not None else None


@functools.cache
def _redis_faults() -> tuple[type[Exception], ...]:
    """What a Redis call raises when Redis cannot answer. A call, evaluated only when an
    exception is being matched (redis is an extra, installed whenever a client exists)."""
    from redis.exceptions import RedisError

    return (RedisError, OSError)


class ResponseHomes:
    """Response id → the name of the backend that created it; see the module docstring."""

    def __init__(self, max_ids: int = MAX_IDS) -> None:
        self._local: OrderedDict[str, Home] = OrderedDict()
        self._max = max_ids
        self._writes: set[asyncio.Task[None]] = set()

    def remember(self, response_id: str, home: Home, redis: Redis | None) -> None:
        """Note where ``response_id`` was made and by whom (on the event loop; Redis in the
        background); an id already noted keeps its first home."""
        local = self._local
        known = local.get(response_id)
        if known is not None:
            if known.backend != home.backend:
                log.warning(
                    "backend %s named response %s, made on %s: ignored",
                    home.backend,
                    response_id,
                    known.backend,
                )
            return
        local[response_id] = home
        if len(local) > self._max:
            local.popitem(last=False)
        if redis is not None:
            task = asyncio.get_running_loop().create_task(self._store(redis, response_id, home))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    @staticmethod
    async def _store(redis: Redis, response_id: str, home: Home) -> None:
        try:
            await redis.set(PREFIX + response_id, msgspec.json.encode(home), ex=TTL, nx=True)
        except _redis_faults() as exc:
            log.warning("cannot share response %s's backend through Redis: %s", response_id, exc)

    async def lookup(self, response_id: str, redis: Redis | None) -> Home | None:
        """Where ``response_id`` was made, or None when no gateway noted it."""
        found = self._local.get(response_id)
        if found is not None or redis is None:
            return found
        try:
            value = await redis.get(PREFIX + response_id)
        except _redis_faults() as exc:
            log.warning("cannot read response %s's backend from Redis: %s", response_id, exc)
            return None
        if value is None:
            return None
        try:
            home = Home(*_decode_home(value))
        except msgspec.MsgspecError:
            return None  # written by another version: not ours to guess
        self._local[response_id] = home
        return home

    def forget(self, response_id: str, redis: Redis | None) -> None:
        """The response was deleted on its backend."""
        self._local.pop(response_id, None)
        if redis is not None:
            task = asyncio.get_running_loop().create_task(self._delete(redis, response_id))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    @staticmethod
    async def _delete(redis: Redis, response_id: str) -> None:
        try:
            await redis.delete(PREFIX + response_id)
        except _redis_faults() as exc:
            log.warning("cannot forget response %s in Redis: %s", response_id, exc)
