"""Limits end to end: buckets, concurrency slots, token budgets and quotas through the gateway."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis

from tests.harness import RunningGateway, gateway, make_config, mock_backend

CHAT = "/v1/chat/completions"


def _limited(mock_url: str, keys: list[dict[str, Any]], **rate_limit: Any) -> Any:
    return make_config(
        [{"url": mock_url}],
        auth={"enabled": True, "pipeline": [{"name": "keys", "type": "static", "keys": keys}]},
        rate_limit={"enabled": True, **rate_limit},
        # Fault injection below must not eject the only backend.
        health_check={"enabled": False, "passive": {"enabled": False}},
    )


async def _post(
    session: aiohttp.ClientSession,
    gw: RunningGateway,
    key: str,
    body: dict[str, Any] | None = None,
    **headers: str,
) -> tuple[int, dict[str, str], bytes]:
    payload = body or {"model": "mock-model", "messages": [], "max_tokens": 4}
    async with session.post(
        gw.url + CHAT, json=payload, headers={"Authorization": f"Bearer {key}", **headers}
    ) as response:
        return response.status, dict(response.headers), await response.read()


async def test_request_bucket_refuses_with_retry_after_and_headers() -> None:
    """Past the burst a key gets 429 rate_limit_exceeded with Retry-After and x-ratelimit-*;
    the limit header is the configured 60 per minute, the remaining what the burst has left."""
    async with mock_backend() as mock:
        config = _limited(
            mock.url,
            [{"key": "sk-a"}],
            per_key={"enabled": True, "requests_per_minute": 60, "burst_size": 3},
        )
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            results = [await _post(session, gw, "sk-a") for _ in range(5)]
    statuses = [status for status, _, _ in results]
    assert statuses == [200, 200, 200, 429, 429]
    ok_headers = results[0][1]
    assert ok_headers["x-ratelimit-limit-requests"] == "60"
    assert ok_headers["x-ratelimit-remaining-requests"] == "2"
    assert "x-ratelimit-reset-requests" in ok_headers
    _, refused_headers, refused_body = results[3]
    assert int(refused_headers["Retry-After"]) >= 1
    assert json.loads(refused_body)["error"]["code"] == "rate_limit_exceeded"
    assert mock.stats.requests == 3


async def test_a_per_minute_key_gets_its_minute_at_once_as_documented() -> None:
    """The worked example of docs/configuration.md: a key with rpm 60 gets 60 requests in a
    row (limit header 60, remaining 59, reset 1s), the 61st is a 429 with Retry-After 1; a key
    with rpm 2 reports limit 2 — through the official client, in memory and in Redis."""
    prefix = f"llmproxy-test:{uuid.uuid4().hex[:8]}:"
    stores: list[dict[str, Any]] = [
        {},
        {"storage": "redis", "redis": {"addr": "127.0.0.1:6379"}, "key_prefix": prefix},
    ]
    try:
        for store in stores:
            async with mock_backend() as mock:
                keys = [{"key": "sk-sixty", "rpm": 60}, {"key": "sk-two", "rpm": 2}]
                config = _limited(mock.url, keys, **store)
                async with gateway(config) as gw:
                    sixty = openai.AsyncOpenAI(
                        base_url=gw.url + "/v1", api_key="sk-sixty", max_retries=0
                    )
                    async with sixty:
                        chat = sixty.chat.completions.with_raw_response.create
                        first = await chat(model="mock-model", messages=[], max_tokens=1)
                        answers = await asyncio.gather(
                            *(chat(model="mock-model", messages=[], max_tokens=1)
                              for _ in range(59))
                        )  # fmt: skip
                        with pytest.raises(openai.RateLimitError) as refused:
                            await chat(model="mock-model", messages=[], max_tokens=1)
                    two = openai.AsyncOpenAI(
                        base_url=gw.url + "/v1", api_key="sk-two", max_retries=0
                    )
                    async with two:
                        small = await two.chat.completions.with_raw_response.create(
                            model="mock-model", messages=[], max_tokens=1
                        )
            headers = first.headers
            assert (
                headers["x-ratelimit-limit-requests"],
                headers["x-ratelimit-remaining-requests"],
                headers["x-ratelimit-reset-requests"],
            ) == ("60", "59", "1s"), store
            assert all(a.status_code == 200 for a in answers)
            assert {a.headers["x-ratelimit-limit-requests"] for a in answers} == {"60"}
            assert refused.value.code == "rate_limit_exceeded"
            assert refused.value.response.headers["retry-after"] == "1"
            assert small.headers["x-ratelimit-limit-requests"] == "2"
            assert small.headers["x-ratelimit-remaining-requests"] == "1"
            assert mock.stats.requests == 61
    finally:
        client = aioredis.Redis(host="127.0.0.1", port=6379)
        async with client:
            names = [name async for name in client.scan_iter(prefix + "*")]
            if names:
                await client.delete(*names)


async def test_openai_client_sees_rate_limit_error() -> None:
    """The official client raises RateLimitError for a refused request."""
    async with mock_backend() as mock:
        config = _limited(mock.url, [{"key": "sk-a", "rpm": 1}], per_key={"enabled": False})
        async with gateway(config) as gw:
            client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-a", max_retries=0)
            async with client:
                await client.chat.completions.create(model="mock-model", messages=[])
                with pytest.raises(openai.RateLimitError) as refused:
                    await client.chat.completions.create(model="mock-model", messages=[])
    assert refused.value.code == "rate_limit_exceeded"


async def test_global_bucket_applies_to_every_key() -> None:
    """The global bucket counts all traffic together, before auth."""
    async with mock_backend() as mock:
        config = _limited(
            mock.url,
            [{"key": "sk-a"}, {"key": "sk-b"}],
            **{"global": {"enabled": True, "requests_per_second": 0.1, "burst_size": 2}},
        )
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            statuses = [
                (await _post(session, gw, key))[0] for key in ("sk-a", "sk-b", "sk-a", "sk-nope")
            ]
    assert statuses == [200, 200, 429, 429]


async def test_concurrency_slots_bound_the_backend() -> None:
    """A burst of 100 requests against max_concurrent 5 never has more than 5 at the backend."""
    async with mock_backend(ttft=0.05) as mock:
        config = _limited(mock.url, [{"key": "sk-a", "max_concurrent": 5}])
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            results = await asyncio.gather(*(_post(session, gw, "sk-a") for _ in range(100)))
            statuses = Counter(status for status, _, _ in results)
            assert gw.runtime.limits is not None
            await asyncio.sleep(0.1)
            assert await gw.runtime.limits.in_flight("sha256:" + _digest("sk-a")) == 0
    assert mock.stats.peak_in_flight <= 5
    assert statuses[200] >= 5
    assert statuses[200] + statuses[429] == 100


async def test_quota_is_reserved_then_settled_to_real_usage() -> None:
    """64 concurrent requests against a quota covering 10 admit at most 10; usage is exact."""
    # Each request reserves max_tokens 10 + a prompt estimate of 1 = 11 tokens; the quota covers
    # ten reservations. The mock uses 1 prompt token + 10 completion tokens = 11 per request.
    async with mock_backend(ttft=0.05) as mock:
        config = _limited(mock.url, [{"key": "sk-q", "total_quota": 110}])
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            body = {"model": "mock-model", "messages": [{"content": "hi"}], "max_tokens": 10}
            results = await asyncio.gather(*(_post(session, gw, "sk-q", body) for _ in range(64)))
            admitted = [json.loads(raw) for status, _, raw in results if status == 200]
            refused = [json.loads(raw) for status, _, raw in results if status == 429]
            await asyncio.sleep(0.1)
            assert gw.runtime.limits is not None
            used = await gw.runtime.limits.quota_used("sha256:" + _digest("sk-q"))
    assert len(admitted) <= 10
    assert len(admitted) + len(refused) == 64
    assert all(r["error"]["code"] == "insufficient_quota" for r in refused)
    assert used == sum(reply["usage"]["total_tokens"] for reply in admitted)


async def test_streams_settle_to_what_was_streamed_and_release_slots() -> None:
    """Aborted and broken streams give their slots back; a streamed request bills its usage."""
    async with mock_backend() as mock:
        config = _limited(mock.url, [{"key": "sk-s", "max_concurrent": 3, "total_quota": 10**6}])
        key_id = "sha256:" + _digest("sk-s")
        async with gateway(config) as gw, aiohttp.ClientSession() as session:
            store = gw.runtime.limits
            assert store is not None
            stream = {"model": "mock-model", "messages": [], "max_tokens": 6, "stream": True}
            status, _, raw = await _post(session, gw, "sk-s", stream)
            assert status == 200
            assert b'"usage"' not in raw  # the client did not ask: the usage event is hidden
            await asyncio.sleep(0.05)
            assert await store.quota_used(key_id) == 7  # 1 prompt + 6 completion tokens
            # Streams cut by the client, by a backend reset, and by a stall all release slots.
            for _ in range(30):
                async with session.post(
                    gw.url + CHAT,
                    json={**stream, "max_tokens": 200},
                    headers={"Authorization": "Bearer sk-s", "x-mock-itl": "0.01"},
                ) as response:
                    await response.content.readuntil(b"\n\n")
                    response.close()
            for fault in ("reset_mid", "reset_before", "500"):
                await _post(session, gw, "sk-s", stream, **{"x-mock-fault": fault})
            await asyncio.sleep(0.3)
            assert await store.in_flight(key_id) == 0
            assert (await _post(session, gw, "sk-s"))[0] == 200


def _digest(key: str) -> str:
    from llmproxy.apikey import key_sha256

    return key_sha256(key)[:12]


async def test_a_thousand_aborted_streams_leave_no_slot_taken() -> None:
    """After 1,000 streams aborted by their clients the key's in-use slot count is exactly 0."""
    from tests.gateway.test_cancellation import _leave_after

    async with mock_backend() as mock:
        config = _limited(mock.url, [{"key": "sk-abort", "max_concurrent": 1000}])
        key_id = "sha256:" + _digest("sk-abort")
        async with gateway(config) as gw:
            store = gw.runtime.limits
            assert store is not None
            body = {"model": "mock-model", "messages": [], "stream": True, "max_tokens": 100}
            headers = {"Authorization": "Bearer sk-abort", "x-mock-ttft": "5"}
            for _ in range(10):
                # Each client leaves once its request is surely at the backend (100 arriving
                # together take a loaded machine well over 50 ms to forward), long before the
                # backend's first token.
                await asyncio.gather(
                    *(_leave_after(gw.url, body, headers, 0.5) for _ in range(100))
                )
            await mock.stats.wait_until("cancellations", 1000, within=20.0)
            for _ in range(50):
                if await store.in_flight(key_id) == 0:
                    break
                await asyncio.sleep(0.05)
            assert await store.in_flight(key_id) == 0
            assert gw.runtime.backends[0].in_flight == 0
