"""Usage counters reach the metrics without a scrape (each worker of several keeps its own)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from llmproxy.daemon.runtime import USAGE_SYNC_INTERVAL, Runtime, RuntimeState
from llmproxy.metrics import GatewayMetrics
from llmproxy.usage.sink import UsageSink
from tests.e2e.daemon import free_port
from tests.harness import make_config, mock_backend, serve_state


async def test_outbox_depth_is_copied_into_the_metrics_every_second(tmp_path: Path) -> None:
    dead_receiver = f"http://127.0.0.1:{free_port()}/usage"  # nothing listens: records wait
    async with mock_backend() as mock:
        config = make_config(
            [{"url": mock.url}],
            usage={"database": "usage.db"},
            usage_hook={"enabled": True, "url": dead_receiver, "backoff_initial": "10s"},
        )
        metrics = GatewayMetrics(CollectorRegistry())
        state = RuntimeState(
            Runtime(config, base_dir=tmp_path), metrics, UsageSink(config, tmp_path)
        )
        async with serve_state(state) as gw, aiohttp.ClientSession() as session:
            body = {"model": "mock-model", "messages": []}
            for _ in range(3):
                async with session.post(gw.url + "/v1/chat/completions", json=body) as response:
                    assert response.status == 200
            await asyncio.sleep(USAGE_SYNC_INTERVAL * 2 + 0.2)
            # Read the gauge itself: no /metrics scrape has happened.
            assert metrics.usage_outbox_depth._value.get() == 3
