"""Memory comes back after a burst: the real daemon, 150 clients sending large bodies at once
(900 kB each: the mock takes at most 1 MiB)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import aiohttp
import yaml

from llmproxy.daemon.memory import GROWTH, TRIM_INTERVAL
from llmproxy.mock import MockBackend
from tests.e2e.daemon import free_port, running

CLIENTS = 150


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


async def _burst(url: str) -> list[int]:
    body = json.dumps(
        {"model": "mock-model", "messages": [{"role": "user", "content": "x" * 900_000}]}
    ).encode()
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            async with session.post(url, data=io.BytesIO(body), headers=headers) as answer:
                await answer.read()
                return answer.status

        return list(await asyncio.gather(*(one() for _ in range(CLIENTS))))


async def test_rss_returns_near_its_baseline_after_a_burst_of_large_bodies(
    tmp_path: Path,
) -> None:
    async with MockBackend() as mock:
        port = free_port()
        config = tmp_path / "llmproxy.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "listen": f"127.0.0.1:{port}",
                    # The burst makes the loop late; shedding is tests/e2e/test_overload.py's.
                    "server": {"watch_config": False, "overload": {"enabled": False}},
                    "backends": [{"url": mock.url}],
                    "health_check": {"enabled": False},
                    "admin": {"enabled": False},
                }
            )
        )
        url = f"http://127.0.0.1:{port}"
        with running(["serve", "--config", str(config)], url + "/health", cwd=tmp_path) as daemon:
            async with aiohttp.ClientSession() as session:  # warm: the request path's code
                small = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}
                for _ in range(20):
                    async with session.post(url + "/v1/chat/completions", json=small) as answer:
                        assert answer.status == 200
            baseline = _rss_mib(daemon.pid)
            statuses = await _burst(url + "/v1/chat/completions")
            assert statuses == [200] * CLIENTS
            peak = _rss_mib(daemon.pid)
            # Near its baseline: within 20 %, or within the growth that triggers a trim (a burst
            # that ran less concurrently on a loaded machine may grow the heap by less).
            bound = max(1.2 * baseline, baseline + GROWTH / 2**20)
            for _ in range(int(TRIM_INTERVAL + 5) * 2):  # the next trim comes within this
                after = _rss_mib(daemon.pid)
                if after <= bound:
                    break
                await asyncio.sleep(0.5)
    assert after <= bound, f"RSS {baseline:.0f} → {peak:.0f} → {after:.0f} MiB"
