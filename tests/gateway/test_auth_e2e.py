"""Auth end to end: real gateway, real providers, the official OpenAI client."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from llmproxy.apikey import generate_key, key_sha256
from llmproxy.keystore import KeyStore
from tests.harness import gateway, make_config, mock_backend

CHAT = "/v1/chat/completions"
BODY = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}


def _client(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


async def _status(
    url: str, key: str | None, body: dict[str, Any] = BODY, **headers: str
) -> tuple[int, dict[str, Any]]:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with aiohttp.ClientSession() as session:
        async with session.post(url + CHAT, json=body, headers=headers) as response:
            return response.status, await response.json()


def _static(*keys: dict[str, Any], lua: str = "", **extra: Any) -> dict[str, Any]:
    return {"name": "inline", "type": "static", "keys": list(keys), "lua_script": lua, **extra}


async def test_missing_and_unknown_keys_are_401() -> None:
    """No key is 401 missing_api_key; an unknown key is 401 invalid_api_key (typed error)."""
    async with mock_backend() as mock:
        config = make_config(
            [{"url": mock.url}], auth={"enabled": True, "pipeline": [_static({"key": "sk-good"})]}
        )
        async with gateway(config) as gw:
            status, body = await _status(gw.url, None)
            assert status == 401
            assert body["error"]["code"] == "missing_api_key"
            async with _client(gw.url, "sk-wrong") as client:
                with pytest.raises(openai.AuthenticationError) as refused:
                    await client.chat.completions.create(**BODY)  # type: ignore[call-overload]
                assert refused.value.code == "invalid_api_key"
            async with _client(gw.url, "sk-good") as client:
                reply = await client.chat.completions.create(**BODY)  # type: ignore[call-overload]
                assert reply.choices[0].message.content
            # Health stays open (skip_paths), models need a key.
            async with aiohttp.ClientSession() as session:
                async with session.get(gw.url + "/health") as response:
                    assert response.status == 200
                async with session.get(gw.url + "/v1/models") as response:
                    assert response.status == 401
    assert mock.stats.requests == 1


async def test_bad_checksum_is_refused_before_any_provider() -> None:
    """A mistyped sk-llmp- key is refused without asking the providers."""
    good = generate_key()
    broken = good[:-1] + ("A" if good[-1] != "A" else "B")
    async with mock_backend() as mock:
        webhook_calls: list[object] = []

        async def handler(request: web.Request) -> web.Response:
            webhook_calls.append(await request.json())
            return web.json_response({"status": "active"})

        async with _webhook_server(handler) as hook_url:
            config = make_config(
                [{"url": mock.url}],
                auth={
                    "enabled": True,
                    "pipeline": [{"name": "hook", "type": "webhook", "webhook": {"url": hook_url}}],
                },
            )
            async with gateway(config) as gw:
                status, body = await _status(gw.url, broken)
                assert status == 401
                assert "checksum" in body["error"]["message"]
                assert webhook_calls == []
                status, _ = await _status(gw.url, good)
                assert status == 200
                assert len(webhook_calls) == 1


async def test_key_states_use_the_configured_answers() -> None:
    """Disabled, expired and quota-exceeded keys get the status_codes answers and typed errors."""
    keys: list[dict[str, Any]] = [
        {"key": "sk-disabled", "status": "disabled"},
        {"key": "sk-expired", "expires_at": int(time.time()) - 10},
        {"key": "sk-spent", "total_quota": 100, "used_quota": 100},
        {"key": "sk-seed-number", "status": 1},
    ]
    async with mock_backend() as mock:
        config = make_config(
            [{"url": mock.url}],
            auth={
                "enabled": True,
                "pipeline": [_static(*keys)],
                "status_codes": {"disabled": {"http_code": 403, "message": "Key 已禁用"}},
            },
        )
        async with gateway(config) as gw:
            async with _client(gw.url, "sk-disabled") as client:
                with pytest.raises(openai.PermissionDeniedError, match="Key 已禁用"):
                    await client.chat.completions.create(**BODY)  # type: ignore[call-overload]
            async with _client(gw.url, "sk-expired") as client:
                with pytest.raises(openai.AuthenticationError, match="expired"):
                    await client.chat.completions.create(**BODY)  # type: ignore[call-overload]
            async with _client(gw.url, "sk-spent") as client:
                with pytest.raises(openai.RateLimitError) as spent:
                    await client.chat.completions.create(**BODY)  # type: ignore[call-overload]
                assert spent.value.code == "insufficient_quota"
            status, _ = await _status(gw.url, "sk-seed-number")
            assert status == 403
    assert mock.stats.requests == 0


async def test_ip_and_model_allowlists() -> None:
    """A key limited to other addresses or models is refused with 403."""
    keys = [
        {"key": "sk-far", "allowed_ips": ["10.0.0.0/8"]},
        {"key": "sk-near", "allowed_ips": ["127.0.0.0/8"], "models": ["other-model"]},
    ]
    async with mock_backend() as mock:
        config = make_config(
            [{"url": mock.url}], auth={"enabled": True, "pipeline": [_static(*keys)]}
        )
        async with gateway(config) as gw:
            status, body = await _status(gw.url, "sk-far")
            assert (status, body["error"]["code"]) == (403, "ip_not_allowed")
            status, body = await _status(gw.url, "sk-near")
            assert (status, body["error"]["code"]) == (403, "model_not_allowed")


async def test_lua_decides_and_metadata_flows_upstream() -> None:
    """Lua denies with its own message and status; its metadata reaches the backend as headers."""
    lua = """
    if tonumber(metadata.balance) <= 0 then
      return {allow = false, message = "余额不足，请充值", status = 402}
    end
    return {allow = true, metadata = {tier = metadata.tier, user_id = data.user_id}}
    """
    keys = [
        {"key": "sk-rich", "user_id": "u1", "metadata": {"tier": "gold", "balance": 5}},
        {"key": "sk-poor", "user_id": "u2", "metadata": {"tier": "free", "balance": 0}},
    ]
    async with mock_backend() as mock:
        config = make_config(
            [{"url": mock.url}],
            auth={
                "enabled": True,
                "pipeline": [_static(*keys, lua=lua)],
                "forward_metadata": {"tier": "X-Tier", "user_id": "X-User-Id"},
            },
        )
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            status, body = await _status(gw.url, "sk-poor")
            assert status == 402
            assert body["error"]["message"] == "余额不足，请充值"
            forged = {"Authorization": "Bearer sk-rich", "X-User-Id": "forged", "X-Tier": "forged"}
            async with session.post(gw.url + "/v1/echo", json={}, headers=forged) as response:
                echoed = await response.json()
    assert echoed["headers"]["x-tier"] == "gold"
    assert echoed["headers"]["x-user-id"] == "u1"
    assert "authorization" not in echoed["headers"]


async def test_broken_lua_at_runtime_is_500_and_syntax_error_refuses_the_config() -> None:
    """A script that errors gives 500 auth_script_error; one that does not compile fails startup."""
    from llmproxy.auth.lua import LuaCompileError
    from llmproxy.daemon.runtime import Runtime

    async with mock_backend() as mock:
        config = make_config(
            [{"url": mock.url}],
            auth={"enabled": True, "pipeline": [_static({"key": "sk-a"}, lua="return nil + 1")]},
        )
        async with gateway(config) as gw:
            status, body = await _status(gw.url, "sk-a")
            assert (status, body["error"]["code"]) == (500, "auth_script_error")
            runaway = make_config(
                [{"url": mock.url}],
                auth={
                    "enabled": True,
                    "pipeline": [_static({"key": "sk-a"}, lua="while true do end")],
                },
            )
        async with gateway(runaway) as gw:
            started = time.monotonic()
            status, body = await _status(gw.url, "sk-a")
            assert (status, body["error"]["code"]) == (500, "auth_script_error")
            assert time.monotonic() - started < 2
        broken = make_config(
            [{"url": mock.url}],
            auth={"enabled": True, "pipeline": [_static({"key": "sk-a"}, lua="return {allow = ")]},
        )
        with pytest.raises(LuaCompileError, match="provider inline"):
            Runtime(broken)


async def test_builtin_store_and_invalidation(tmp_path: Path) -> None:
    """Keys from the builtin store work; a revoked key is refused once the store is reloaded."""
    store = KeyStore(tmp_path / "keys.db")
    store.open()
    try:
        secret, record = store.add(name="team-a", user_id="team-a")
        async with mock_backend() as mock:
            config = make_config(
                [{"url": mock.url}],
                auth={
                    "enabled": True,
                    "builtin_db": str(tmp_path / "keys.db"),
                    "pipeline": [{"name": "builtin", "type": "builtin"}],
                },
            )
            async with gateway(config) as gw:
                status, _ = await _status(gw.url, secret)
                assert status == 200
                store.revoke(record.id)
                pipeline = gw.runtime.auth
                assert pipeline is not None
                provider = pipeline.stages[0].provider
                await provider.reload_now()  # type: ignore[attr-defined]
                status, _ = await _status(gw.url, secret)
                assert status == 401
    finally:
        store.close()


async def test_redis_provider_with_cache_and_outage() -> None:
    """A Redis key works, is cached for the TTL, and Redis being down follows on_error."""
    prefix = f"llmproxy-test:{uuid.uuid4().hex[:8]}:"
    client = aioredis.Redis(host="127.0.0.1", port=6379)
    try:
        await client.hset(prefix + "sk-redis", mapping={"status": "active", "user_id": "r1"})
        await client.set(prefix + "sk-json", json.dumps({"status": 1}))
        async with mock_backend() as mock:
            redis_entry = {
                "name": "redis",
                "type": "redis",
                "redis": {"addr": "127.0.0.1:6379", "key_pattern": prefix + "{api_key}"},
            }
            config = make_config(
                [{"url": mock.url}],
                auth={"enabled": True, "pipeline": [redis_entry], "cache": {"ttl": "300ms"}},
            )
            async with gateway(config) as gw:
                assert (await _status(gw.url, "sk-redis"))[0] == 200
                assert (await _status(gw.url, "sk-json"))[0] == 403
                await client.hset(prefix + "sk-redis", "status", "disabled")
                assert (await _status(gw.url, "sk-redis"))[0] == 200  # cached
                await asyncio.sleep(0.35)
                assert (await _status(gw.url, "sk-redis"))[0] == 403
            down = {**redis_entry, "redis": {"addr": "127.0.0.1:1", "timeout": "200ms"}}
            deny = make_config([{"url": mock.url}], auth={"enabled": True, "pipeline": [down]})
            async with gateway(deny) as gw:
                status, body = await _status(gw.url, "sk-redis")
                assert (status, body["error"]["code"]) == (503, "auth_unavailable")
            skip = make_config(
                [{"url": mock.url}],
                auth={
                    "enabled": True,
                    "pipeline": [{**down, "on_error": "skip"}, _static({"key": "sk-fallback"})],
                },
            )
            async with gateway(skip) as gw:
                assert (await _status(gw.url, "sk-fallback"))[0] == 200
                assert (await _status(gw.url, "sk-redis"))[0] == 401
    finally:
        await client.delete(prefix + "sk-redis", prefix + "sk-json")
        await client.aclose()


SEED_SCRIPT = """
if tonumber(data.balance) <= 0 then
  return {allow = false, message = "insufficient balance"}
end
return {allow = true}
"""
"""The seed's decision script (its design doc, translated): balance is the script's to judge."""


async def test_a_decision_script_owns_the_balance_it_judges() -> None:
    """With the seed's Redis provider and script, a key with balance 0 reaches the script: the
    client sees its message with the seed's 403 (a script's own status when it names one), a
    positive balance passes; without a script the built-in rule still refuses balance 0."""
    prefix = f"llmproxy-test:{uuid.uuid4().hex[:8]}:"
    client = aioredis.Redis(host="127.0.0.1", port=6379)
    keys = {"sk-broke": "0", "sk-rich": "12.50", "sk-text": "none"}
    try:
        for secret, balance in keys.items():
            await client.hset(prefix + secret, mapping={"status": "active", "balance": balance})
        async with mock_backend() as mock:
            provider = {
                "name": "redis_auth",
                "type": "redis",
                "redis": {"addr": "127.0.0.1:6379", "key_pattern": prefix + "{api_key}"},
            }

            def config(script: str) -> Any:
                entry = {**provider, "lua_script": script}
                return make_config([{"url": mock.url}], auth={"enabled": True, "pipeline": [entry]})

            async with gateway(config(SEED_SCRIPT)) as gw:
                async with _client(gw.url, "sk-broke") as broke:
                    with pytest.raises(openai.PermissionDeniedError) as refused:
                        await broke.chat.completions.create(**BODY)  # type: ignore[call-overload]
                assert refused.value.status_code == 403
                assert refused.value.message == "Error code: 403 - insufficient balance"
                async with _client(gw.url, "sk-rich") as rich:
                    answer = await rich.chat.completions.create(**BODY)  # type: ignore[call-overload]
                assert answer.choices[0].message.content
                # A balance the script reads its own way is its to judge too (tonumber: nil).
                status, body = await _status(gw.url, "sk-text")
                assert (status, body["error"]["code"]) == (500, "auth_script_error")
            worded = SEED_SCRIPT.replace(
                'message = "insufficient balance"', 'message = "top up", status = 402'
            )
            async with gateway(config(worded)) as gw:
                status, body = await _status(gw.url, "sk-broke")
                assert (status, body["error"]["message"]) == (402, "top up")
            async with gateway(config("")) as gw:
                status, body = await _status(gw.url, "sk-broke")
                assert (status, body["error"]["code"]) == (429, "insufficient_quota")
                assert (await _status(gw.url, "sk-rich"))[0] == 200
    finally:
        await client.delete(*(prefix + secret for secret in keys))
        await client.aclose()


async def test_all_mode_needs_every_provider() -> None:
    """In mode all, a key must be known to and allowed by every provider."""
    async with mock_backend() as mock:
        config = make_config(
            [{"url": mock.url}],
            auth={
                "enabled": True,
                "mode": "all",
                "pipeline": [
                    _static({"key": "sk-both"}, {"key": "sk-one"}),
                    {"name": "second", "type": "static", "keys": [{"key": "sk-both"}]},
                ],
            },
        )
        async with gateway(config) as gw:
            assert (await _status(gw.url, "sk-both"))[0] == 200
            assert (await _status(gw.url, "sk-one"))[0] == 401


async def test_key_never_reaches_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Across allowed, refused and failed requests, the secret never appears in a log record."""
    secret = generate_key()
    async with mock_backend() as mock:
        config = make_config(
            [{"url": mock.url}],
            auth={
                "enabled": True,
                "pipeline": [
                    {
                        "name": "down",
                        "type": "redis",
                        "on_error": "skip",
                        "redis": {"addr": "127.0.0.1:1", "timeout": "100ms"},
                    },
                    _static({"key": secret}, lua='log("checking " .. api_key); return true'),
                ],
            },
        )
        with caplog.at_level("DEBUG"):
            async with gateway(config) as gw:
                assert (await _status(gw.url, secret))[0] == 200
                assert (await _status(gw.url, secret + "x"))[0] == 401
    assert caplog.records
    assert all(secret not in record.getMessage() for record in caplog.records)


class _webhook_server:  # noqa: N801 - used as an async context manager factory
    def __init__(self, handler: Any) -> None:
        self._handler = handler
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_post("/auth", self._handler)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/auth"

    async def __aexit__(self, *_: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.mark.parametrize("driver", ["postgres", "mysql", "sqlite"])
async def test_database_provider_through_the_gateway(driver: str, tmp_path: Path) -> None:
    """Keys in PostgreSQL, MariaDB and SQLite let active keys in and refuse disabled ones."""
    table = f"keys_{uuid.uuid4().hex[:8]}"
    rows = [("sk-db-active", "active", "u1"), ("sk-db-off", "disabled", "u2")]
    columns = "api_key VARCHAR(64) PRIMARY KEY, status VARCHAR(16), user_id VARCHAR(16)"
    create = f"CREATE TABLE {table} ({columns})"
    if driver == "postgres":
        import asyncpg

        dsn = "postgres://postgres@127.0.0.1:5432/test"
        connection = await asyncpg.connect(dsn)
        await connection.execute(create)
        await connection.executemany(f"INSERT INTO {table} VALUES ($1, $2, $3)", rows)
    elif driver == "mysql":
        import aiomysql

        dsn = "root:@tcp(127.0.0.1:3306)/test"  # the seed's Go DSN form
        connection = await aiomysql.connect(
            host="127.0.0.1", port=3306, user="root", db="test", autocommit=True
        )
        async with connection.cursor() as cursor:
            await cursor.execute(create)
            await cursor.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)", rows)
    else:
        import sqlite3

        dsn = str(tmp_path / "keys.db")
        with sqlite3.connect(dsn) as db:
            db.execute(create)
            db.executemany(f"INSERT INTO {table} VALUES (?, ?, ?)", rows)
        db.close()
    entry = {
        "name": "sql",
        "type": "database",
        "database": {
            "driver": driver,
            "dsn": dsn,
            "table": table,
            "key_column": "api_key",
            "fields": ["status", "user_id"],
        },
    }
    try:
        async with mock_backend() as mock:
            config = make_config([{"url": mock.url}], auth={"enabled": True, "pipeline": [entry]})
            async with gateway(config) as gw:
                assert (await _status(gw.url, "sk-db-active"))[0] == 200
                status, body = await _status(gw.url, "sk-db-off")
                assert (status, body["error"]["code"]) == (403, "key_disabled")
                assert (await _status(gw.url, "sk-db-unknown"))[0] == 401
    finally:
        if driver == "postgres":
            await connection.execute(f"DROP TABLE {table}")
            await connection.close()
        elif driver == "mysql":
            async with connection.cursor() as cursor:
                await cursor.execute(f"DROP TABLE {table}")
            connection.close()


async def test_webhook_provider_allows_and_denies() -> None:
    """A webhook's JSON reply is the key's data; 404 is an unknown key; 500 is never an allow."""

    async def handler(request: web.Request) -> web.Response:
        payload = await request.json()
        assert "api_key" not in payload  # hash mode: the secret never leaves the gateway
        digest = payload["api_key_sha256"]
        if digest == key_sha256("sk-ok-0123456789"):
            return web.json_response({"status": "active", "user_id": "w1"})
        if digest == key_sha256("sk-err-0123456789"):
            return web.json_response({"error": "boom"}, status=500)
        return web.json_response({}, status=404)

    async with _webhook_server(handler) as hook_url, mock_backend() as mock:
        entry = {"name": "hook", "type": "webhook", "webhook": {"url": hook_url}}
        config = make_config([{"url": mock.url}], auth={"enabled": True, "pipeline": [entry]})
        async with gateway(config) as gw:
            assert (await _status(gw.url, "sk-ok-0123456789"))[0] == 200
            assert (await _status(gw.url, "sk-no-0123456789"))[0] == 401
            status, body = await _status(gw.url, "sk-err-0123456789")
            assert (status, body["error"]["code"]) == (503, "auth_unavailable")
