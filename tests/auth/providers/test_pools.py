"""The shared pool registry: lazy creation, sharing by server, clean close, scrubbed errors."""

from __future__ import annotations

import pytest

from llmproxy.apikey import PresentedKey
from llmproxy.auth.providers.base import KeyProvider, ProviderError
from llmproxy.auth.providers.database import DatabaseProvider
from llmproxy.auth.providers.redis import RedisProvider
from llmproxy.auth.providers.webhook import WebhookProvider
from llmproxy.config.model import DatabaseConnection, RedisConnection, WebhookConnection
from llmproxy.connections import ConnectionPools, PoolError
from tests.auth.providers.conftest import MYSQL_DSN, POSTGRES_DSN


async def test_pools_are_created_without_connecting():
    """Creating pools for servers that are down succeeds: a server is first reached on use."""
    pools = ConnectionPools()
    try:
        await pools.redis(RedisConnection(addr="127.0.0.1:1"))
        await pools.postgres("postgres://postgres@127.0.0.1:1/test", 2, 0.5)
        await pools.mysql("root:@tcp(127.0.0.1:1)/test", 2, 0.5)
    finally:
        await pools.close()


async def test_close_closes_everything_and_refuses_new_pools():
    """After close() every pool and the HTTP session are closed and new requests are refused."""
    pools = ConnectionPools()
    client = await pools.redis(RedisConnection(addr="127.0.0.1:6379"))
    assert await client.ping()
    postgres = await pools.postgres(POSTGRES_DSN, 2, 1.0)
    assert await postgres.fetchval("SELECT 1") == 1
    mysql = await pools.mysql(MYSQL_DSN, 2, 1.0)
    async with mysql.acquire() as connection, connection.cursor() as cursor:
        await cursor.execute("SELECT 1")
    session = pools.http()
    await pools.close()
    assert session.closed
    assert postgres.is_closing()
    assert mysql.closed
    with pytest.raises(PoolError, match="closed"):
        await pools.redis(RedisConnection())
    with pytest.raises(PoolError, match="closed"):
        pools.http()
    await pools.close()  # a second close is harmless


async def test_http_session_is_shared(pools):
    """Every caller gets the one HTTP session."""
    assert pools.http() is pools.http()


@pytest.mark.parametrize(
    "call",
    [
        lambda pools: pools.postgres("mysql://app:hunter2@db/keys", 2, 1.0),
        lambda pools: pools.mysql("app:hunter2@udp(db)/keys", 2, 1.0),
        lambda pools: pools.redis(RedisConnection(addr="redis:x", password="hunter2")),
    ],
)
async def test_bad_targets_are_pool_errors_without_the_password(pools, call):
    """A DSN or address that cannot work is a PoolError whose message hides the password."""
    with pytest.raises(PoolError) as caught:
        await call(pools)
    assert "hunter2" not in str(caught.value)


async def test_providers_refuse_lookups_once_the_pools_close():
    """After the registry closes, every provider answers ProviderError instead of reconnecting."""
    pools = ConnectionPools()
    providers: list[KeyProvider] = [
        RedisProvider("r", RedisConnection(addr="127.0.0.1:6379"), pools),
        DatabaseProvider("pg", DatabaseConnection(driver="postgres", dsn=POSTGRES_DSN), pools),
        DatabaseProvider("my", DatabaseConnection(driver="mysql", dsn=MYSQL_DSN), pools),
        WebhookProvider("w", WebhookConnection(url="http://127.0.0.1:1/keys"), pools),
    ]
    for provider in providers:
        await provider.open()
    await pools.close()
    key = PresentedKey.of("sk-test-closed")
    for provider in providers:
        with pytest.raises(ProviderError, match="not open"):
            await provider.lookup(key)
