"""Fixtures for the limits: stores on the real Redis (a unique prefix per test, deleted
afterwards) and a private redis-server this test may pause, kill and restart."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio

from llmproxy.config.model import RedisConnection
from llmproxy.connections import ConnectionPools
from llmproxy.limits import Admission, MemoryLimitStore, RedisLimitStore
from llmproxy.limits.shared import SharedLimits, SharedLimitStore
from tests.private_redis import PrivateRedis

SHARED_REDIS = "127.0.0.1:6379"


class Clients:
    """Redis clients made the gateway's way (:class:`ConnectionPools`), one registry each — one
    gateway process each — all closed when the test ends."""

    def __init__(self) -> None:
        self._registries: list[ConnectionPools] = []

    async def new(self, addr: str = SHARED_REDIS, wait: float = 2.0) -> redis.asyncio.Redis:
        """A client of ``addr`` whose commands and connects give up after ``wait`` seconds."""
        pools = ConnectionPools()
        self._registries.append(pools)
        return await pools.redis(RedisConnection(addr=addr, timeout=wait))

    async def close(self) -> None:
        for pools in self._registries:
            await pools.close()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    registry = Clients()
    try:
        yield registry
    finally:
        await registry.close()


@pytest.fixture
def prefix() -> str:
    """Keys of this test only, under the shared Redis."""
    return f"llmproxy-test:limits:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def shared_redis(prefix: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of the machine's Redis; every key under ``prefix`` is deleted afterwards."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=6379, decode_responses=True)
    try:
        yield client
    finally:
        stale = [name async for name in client.scan_iter(match=f"{prefix}*", count=1000)]
        if stale:
            await client.delete(*stale)
        await client.aclose()


@pytest.fixture
async def redis_stores(
    shared_redis: redis.asyncio.Redis, prefix: str, clients: Clients
) -> AsyncIterator[list[RedisLimitStore]]:
    """Four independent stores on one key space, each with its own client (four processes)."""
    stores = [RedisLimitStore(await clients.new(), prefix=prefix, timeout=2.0) for _ in range(4)]
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


@pytest.fixture
def shared_table(tmp_path: Path) -> Path:
    """A daemon's limit table for two workers (a small one, so rebuilds are reachable)."""
    path = tmp_path / "limits.table"
    SharedLimits.create(path, workers=2, capacity=1024)
    return path


@pytest.fixture(params=["memory", "shared", "redis"])
def store(
    request: pytest.FixtureRequest, redis_stores: list[RedisLimitStore], shared_table: Path
) -> Iterator[MemoryLimitStore | SharedLimitStore | RedisLimitStore]:
    """The same behaviour is pinned for every store."""
    if request.param == "memory":
        yield MemoryLimitStore()
    elif request.param == "shared":
        handle = SharedLimits.attach(shared_table, worker=0)
        try:
            yield SharedLimitStore(handle)
        finally:
            handle.close()
    else:
        yield redis_stores[0]


async def eventually(condition: Callable[[], bool | Awaitable[bool]], within: float = 3.0) -> None:
    """Wait until ``condition()`` holds (a background repair has run), failing after ``within``."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def lease_of(admission: Admission) -> str:
    """The lease of an admission that must have one."""
    assert admission.lease is not None, admission
    return admission.lease


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own (never the machine's shared one)."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
