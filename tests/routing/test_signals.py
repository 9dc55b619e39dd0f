"""Load signals: vLLM and SGLang metric names parsed, scraped from a real mock backend."""

from __future__ import annotations

import asyncio

import aiohttp

from llmproxy.routing.backend import Backend
from llmproxy.routing.signals import Signals, SignalScraper, parse_signals
from tests.e2e.daemon import free_port
from tests.harness import mock_backend

VLLM = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a"} 3.0
vllm:num_requests_running{model_name="b"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="a"} 2.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="a"} 0.41
vllm:kv_cache_usage_perc{model_name="b"} 0.62
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{model_name="a"} 12345.0
"""

SGLANG = """\
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m"} 7.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m"} 4.0
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m"} 0.83
"""


def test_vllm_names_are_summed_over_models_and_cache_is_the_fullest() -> None:
    assert parse_signals(VLLM) == Signals(waiting=2, running=4, kv_cache_usage=0.62)


def test_sglang_names() -> None:
    assert parse_signals(SGLANG) == Signals(waiting=4, running=7, kv_cache_usage=0.83)


def test_a_server_without_these_metrics_gives_nothing() -> None:
    assert parse_signals("# TYPE up gauge\nup 1\n") == Signals()


async def test_scraping_the_mock_and_falling_back_when_a_backend_cannot_be_read() -> None:
    async with mock_backend() as mock, aiohttp.ClientSession() as session:
        alive = Backend.create("alive", mock.url)
        dead = Backend.create("dead", f"http://127.0.0.1:{free_port()}")
        dead.queue_waiting = 9  # stale: must be cleared when the scrape fails
        scraper = SignalScraper([alive, dead], session, interval=0.05)
        await scraper.start()
        try:
            assert alive.signals_at > 0
            assert alive.queue_waiting == 0
            assert alive.kv_cache_usage == 0.0
            assert dead.signals_at == 0
            assert dead.queue_waiting == 0
            first = alive.signals_at
            await asyncio.sleep(0.2)
            assert alive.signals_at > first  # kept scraping
        finally:
            await scraper.stop()


async def test_a_malformed_metrics_page_falls_back_to_the_gateways_counts() -> None:
    from aiohttp import web

    async def garbage(_request: web.Request) -> web.Response:
        return web.Response(text="vllm:num_requests_waiting{model_name= 3 oops\n}}}\n")

    app = web.Application()
    app.router.add_get("/metrics", garbage)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        backend = Backend.create("broken", f"http://127.0.0.1:{runner.addresses[0][1]}")
        backend.queue_waiting = 7
        async with aiohttp.ClientSession() as session:
            await SignalScraper([backend], session).scrape_all()
        assert backend.signals_at == 0
        assert backend.queue_waiting == 0
        assert backend.kv_cache_usage is None
    finally:
        await runner.cleanup()
