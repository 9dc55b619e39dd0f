"""The redis provider against the real Redis on 127.0.0.1:6379 (and a server that never answers)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from llmproxy.apikey import PresentedKey
from llmproxy.auth.providers.base import ProviderError
from llmproxy.auth.providers.redis import RedisProvider
from llmproxy.config.model import RedisConnection
from llmproxy.connections import ConnectionPools
from tests.auth.providers.conftest import DOWN_ADDR


@pytest.fixture
async def store(run_id: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A direct client to seed keys with; every key of this run is deleted afterwards."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=6379, decode_responses=True)
    try:
        yield client
    finally:
        stale = [name async for name in client.scan_iter(match=f"llmproxy-test:{run_id}:*")]
        if stale:
            await client.delete(*stale)
        await client.aclose()


def connection(run_id: str, **overrides: Any) -> RedisConnection:
    settings: dict[str, Any] = {
        "addr": "127.0.0.1:6379",
        "key_pattern": f"llmproxy-test:{run_id}:{{api_key}}",
        "timeout": 0.5,
    }
    return RedisConnection.model_validate(settings | overrides)


async def opened(
    conn: RedisConnection, pools: ConnectionPools, name: str = "keys"
) -> RedisProvider:
    provider = RedisProvider(name, conn, pools)
    await provider.open()
    return provider


async def test_hash_value_is_returned_with_string_values(pools, store, run_id, key):
    """A hash is returned field by field, every value a string as Redis keeps it."""
    provider = await opened(connection(run_id), pools)
    await store.hset(provider.redis_key(key), mapping={"status": "active", "balance": 12})
    assert await provider.lookup(key) == {"status": "active", "balance": "12"}


async def test_json_string_keeps_its_types(pools, store, run_id, key):
    """A string holding a JSON object is returned with its JSON types."""
    provider = await opened(connection(run_id), pools)
    value = {"status": "active", "total_quota": 1000, "ratio": 0.5, "tags": ["a"], "x": None}
    await store.set(provider.redis_key(key), json.dumps(value))
    assert await provider.lookup(key) == value


async def test_missing_key_is_unknown(pools, store, run_id, key):
    """A Redis key that does not exist means the key is unknown (None), not an error."""
    provider = await opened(connection(run_id), pools)
    assert await provider.lookup(key) is None


async def test_sha256_pattern_stores_no_secret(pools, store, run_id, key):
    """With {api_key_sha256} the Redis key holds the digest, never the secret."""
    conn = connection(run_id, key_pattern=f"llmproxy-test:{run_id}:{{api_key_sha256}}")
    provider = await opened(conn, pools)
    assert provider.redis_key(key) == f"llmproxy-test:{run_id}:{key.sha256}"
    await store.hset(f"llmproxy-test:{run_id}:{key.sha256}", mapping={"status": "active"})
    assert await provider.lookup(key) == {"status": "active"}


@pytest.mark.parametrize(
    "pattern", ["llmproxy:key", "k:{api_key}:{api_key}", "k:{api_key}:{api_key_sha256}", "{key}"]
)
def test_pattern_needs_exactly_one_placeholder(pattern):
    """A key_pattern without exactly one {api_key}/{api_key_sha256} is refused at construction."""
    conn = RedisConnection(key_pattern=pattern)
    with pytest.raises(ValueError, match=r"redis provider 'keys': key_pattern .* exactly one"):
        RedisProvider("keys", conn, ConnectionPools())


async def test_redis_down_fails_quickly(pools, key, run_id):
    """A refused connection is a ProviderError naming the provider, well within the timeout."""
    provider = await opened(connection(run_id, addr=DOWN_ADDR), pools, name="sessions")
    started = time.monotonic()
    with pytest.raises(ProviderError, match="redis 'sessions'") as caught:
        await provider.lookup(key)
    assert time.monotonic() - started < 0.5
    assert key.secret not in str(caught.value)


async def test_silent_server_times_out(pools, key, run_id):
    """A server that accepts but never answers is a ProviderError after `timeout`."""
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # read until the client gives up, answer nothing

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        provider = await opened(connection(run_id, addr=f"127.0.0.1:{port}", timeout=0.2), pools)
        started = time.monotonic()
        with pytest.raises(ProviderError, match=r"redis 'keys': timeout after 0.2s"):
            await provider.lookup(key)
        assert 0.15 < time.monotonic() - started < 1.0
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ("not json at all", "not valid JSON"),
        ('["a", "list"]', "JSON is a list, expected an object"),
        ("42", "JSON is a int, expected an object"),
    ],
)
async def test_string_that_is_not_a_json_object_fails(pools, store, run_id, key, stored, message):
    """A string value that is not a JSON object is a ProviderError, never data."""
    provider = await opened(connection(run_id), pools)
    await store.set(provider.redis_key(key), stored)
    with pytest.raises(ProviderError, match=message):
        await provider.lookup(key)


async def test_other_redis_types_fail(pools, store, run_id, key):
    """A list where a hash or string was expected is a ProviderError naming the type."""
    provider = await opened(connection(run_id), pools)
    await store.rpush(provider.redis_key(key), "a")
    with pytest.raises(ProviderError, match="holds a Redis list"):
        await provider.lookup(key)


async def test_script_is_reloaded_after_flush(pools, store, run_id, key):
    """After SCRIPT FLUSH (a restart, a failover) the lookup reloads its script and answers."""
    provider = await opened(connection(run_id), pools)
    await store.hset(provider.redis_key(key), mapping={"status": "active"})
    assert await provider.lookup(key) == {"status": "active"}
    await store.script_flush()
    assert await provider.lookup(key) == {"status": "active"}


async def test_field_holding_the_secret_is_dropped(pools, store, run_id, key):
    """A hash field whose value is the secret itself never reaches the decision."""
    provider = await opened(connection(run_id), pools)
    await store.hset(provider.redis_key(key), mapping={"key": key.secret, "status": "active"})
    assert await provider.lookup(key) == {"status": "active"}


async def test_providers_naming_one_server_share_a_client(pools, store, run_id, key):
    """Two providers naming the same server, db and user share one pooled client."""
    sessions = connection(run_id, key_pattern=f"llmproxy-test:{run_id}:s:{{api_key}}")
    accounts = connection(run_id, key_pattern=f"llmproxy-test:{run_id}:a:{{api_key_sha256}}")
    other_db = connection(run_id, db=1)
    assert await pools.redis(sessions) is await pools.redis(accounts)
    assert await pools.redis(sessions) is not await pools.redis(other_db)
    first, second = await opened(sessions, pools, "s"), await opened(accounts, pools, "a")
    await store.set(first.redis_key(key), '{"from": "sessions"}')
    await store.hset(second.redis_key(key), mapping={"from": "accounts"})
    assert await first.lookup(key) == {"from": "sessions"}
    assert await second.lookup(key) == {"from": "accounts"}


async def test_concurrent_lookups_share_the_pool(pools, store, run_id):
    """Many lookups at once all answer through the one bounded pool."""
    provider = await opened(connection(run_id), pools)
    keys = [PresentedKey.of(f"sk-test-{run_id}-{n}") for n in range(200)]
    for n, each in enumerate(keys):
        await store.hset(provider.redis_key(each), mapping={"n": n})
    results = await asyncio.gather(*(provider.lookup(each) for each in keys))
    assert results == [{"n": str(n)} for n in range(200)]


async def test_lookup_after_close_fails(pools, run_id, key):
    """A closed provider refuses lookups with a ProviderError."""
    provider = await opened(connection(run_id), pools)
    await provider.close()
    with pytest.raises(ProviderError, match="not open"):
        await provider.lookup(key)
