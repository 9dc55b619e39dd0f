"""Limits shared through Redis by several real gateway processes."""

from __future__ import annotations

import asyncio
import textwrap
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import pytest
import redis

from tests.e2e.daemon import free_port, running
from tests.private_redis import PrivateRedis

RATE = 50.0  # requests per second for the one key, shared by every process
BURST = 10
SECONDS = 6.0
PROCESSES = 4


def _config(tmp_path: Path, port: int, backend_port: int, prefix: str) -> Path:
    path = tmp_path / f"gateway-{port}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            listen: "127.0.0.1:{port}"
            backends: [{{url: "http://127.0.0.1:{backend_port}"}}]
            health_check: {{enabled: false}}
            admin: {{socket: "run/admin-{port}.sock"}}
            auth:
              enabled: true
              pipeline: [{{name: keys, type: static, keys: [{{key: sk-shared}}]}}]
            rate_limit:
              enabled: true
              storage: redis
              key_prefix: "{prefix}"
              instances: {PROCESSES}
              redis: {{addr: "127.0.0.1:6379"}}
              per_key: {{enabled: true, requests_per_second: {RATE}, burst_size: {BURST}}}
            """
        )
    )
    return path


async def _hammer(urls: list[str], seconds: float) -> Counter[int]:
    """Send requests round robin over the gateways, 24 at a time, for ``seconds``."""
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    body = {"model": "mock-model", "messages": [], "max_tokens": 1}
    headers = {"Authorization": "Bearer sk-shared"}

    async def worker(index: int) -> None:
        async with aiohttp.ClientSession() as session:
            turn = index
            while time.monotonic() < deadline:
                url = urls[turn % len(urls)]
                turn += 1
                async with session.post(url, json=body, headers=headers) as response:
                    await response.read()
                    statuses[response.status] += 1

    await asyncio.gather(*(worker(index) for index in range(24)))
    return statuses


def test_four_processes_share_one_key_limit(tmp_path: Path) -> None:
    """4 gateways sharing Redis hold a 50 req/s key limit: admitted within ±5 % of the budget."""
    prefix = f"llmproxy-test:{uuid.uuid4().hex[:8]}:"
    backend_port = free_port()
    ports = [free_port() for _ in range(PROCESSES)]
    with ExitStack() as stack:
        stack.enter_context(
            running(
                ["mock-backend", "--port", str(backend_port)],
                f"http://127.0.0.1:{backend_port}/health",
            )
        )
        for port in ports:
            config = _config(tmp_path, port, backend_port, prefix)
            stack.enter_context(
                running(["serve", "--config", str(config)], f"http://127.0.0.1:{port}/health")
            )
        urls = [f"http://127.0.0.1:{port}/v1/chat/completions" for port in ports]
        started = time.monotonic()
        statuses = asyncio.run(_hammer(urls, SECONDS))
        elapsed = time.monotonic() - started
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        for name in client.scan_iter(prefix + "*"):
            client.delete(name)
    finally:
        client.close()
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429] > 0, "the load did not exceed the limit; the test proves nothing"
    expected = BURST + RATE * elapsed
    assert abs(statuses[200] - expected) <= 0.05 * expected, (statuses, expected)


@pytest.mark.parametrize(
    ("policy", "during_outage"), [("closed", 503), ("open", 200), ("local", 200)]
)
async def test_redis_outage_follows_the_failure_policy(
    tmp_path: Path, policy: str, during_outage: int
) -> None:
    """Redis down: closed → 503 (never 429), open/local → served; back to Redis when it returns."""
    from tests.harness import gateway, make_config, mock_backend

    server = PrivateRedis(tmp_path)
    server.start()
    port = server.port
    try:
        async with mock_backend() as mock:
            config = make_config(
                [{"url": mock.url}],
                auth={
                    "enabled": True,
                    "pipeline": [{"name": "k", "type": "static", "keys": [{"key": "sk-r"}]}],
                },
                rate_limit={
                    "enabled": True,
                    "storage": "redis",
                    "redis_failure": policy,
                    "redis": {"addr": f"127.0.0.1:{port}", "timeout": "200ms"},
                    "per_key": {"enabled": True, "requests_per_second": 1000, "burst_size": 1000},
                },
            )
            headers = {"Authorization": "Bearer sk-r"}
            body = {"model": "mock-model", "messages": []}
            async with gateway(config) as gw, aiohttp.ClientSession() as session:
                url = gw.url + "/v1/chat/completions"
                async with session.post(url, json=body, headers=headers) as response:
                    assert response.status == 200
                    assert "x-ratelimit-limit-requests" in response.headers
                server.kill()
                started = time.monotonic()
                async with session.post(url, json=body, headers=headers) as response:
                    assert response.status == during_outage
                    if during_outage == 503:
                        assert (await response.json())["error"]["code"] == "limits_unavailable"
                assert time.monotonic() - started < 2.0
                server.start()
                # Back on Redis: the limiter's state shows up in the fresh server.
                fresh = redis.Redis(host="127.0.0.1", port=port)
                try:
                    for _ in range(50):
                        async with session.post(url, json=body, headers=headers) as response:
                            # Until the store retries Redis it keeps its outage behaviour.
                            assert response.status in (200, during_outage)
                        if fresh.dbsize() > 0:
                            break
                        await asyncio.sleep(0.1)
                    assert fresh.dbsize() > 0, "the gateway did not go back to Redis within 5 s"
                finally:
                    fresh.close()
    finally:
        server.kill()
