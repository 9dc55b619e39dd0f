"""Active health checks: the pure threshold rule and the probe loop against a real server."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from llmproxy.routing import Backend, HealthChecker, ProbeStreak


def test_streak_goes_down_after_threshold_failures() -> None:
    """A healthy backend flips only on the unhealthy_threshold-th consecutive failure."""
    streak = ProbeStreak(healthy=True, unhealthy_threshold=3, healthy_threshold=2)
    assert [streak.observe(False) for _ in range(3)] == [False, False, True]
    assert not streak.healthy


def test_streak_comes_back_after_threshold_successes() -> None:
    """An unhealthy backend flips back on the healthy_threshold-th consecutive success."""
    streak = ProbeStreak(healthy=False, unhealthy_threshold=3, healthy_threshold=2)
    assert [streak.observe(True) for _ in range(2)] == [False, True]
    assert streak.healthy


def test_streak_is_broken_by_an_agreeing_result() -> None:
    """One success between failures restarts the count, so isolated failures never flap."""
    streak = ProbeStreak(healthy=True, unhealthy_threshold=3, healthy_threshold=2)
    results = [False, False, True, False, False, True] * 5
    assert not any(streak.observe(ok) for ok in results)
    assert streak.healthy
    down = ProbeStreak(healthy=False, unhealthy_threshold=3, healthy_threshold=2)
    assert not any(down.observe(ok) for ok in [True, False, True, False])
    assert not down.healthy


def test_streak_rejects_zero_thresholds() -> None:
    """Thresholds below 1 are a config error."""
    with pytest.raises(ValueError, match="unhealthy_threshold"):
        ProbeStreak(healthy=True, unhealthy_threshold=0)


@dataclass
class FakeBackendServer:
    """A tiny real HTTP server whose /health answer the test controls."""

    url: str = ""
    status: int = 200
    hang: bool = False
    probes: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def health(self, request: web.Request) -> web.Response:
        self.probes += 1
        if self.hang:
            # Outlive the checker's timeout; released at teardown so the server stops promptly.
            await self.release.wait()
        return web.Response(status=self.status, text="ok" if self.status == 200 else "down")


@pytest.fixture
async def server() -> AsyncIterator[FakeBackendServer]:
    fake = FakeBackendServer()
    app = web.Application()
    app.router.add_get("/health", fake.health)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll a condition the background loop will make true, failing the test after 5 s."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 5s")


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_unhealthy_after_threshold_then_healthy_after_threshold(
    server: FakeBackendServer, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Failing probes mark a backend down after 3 rounds and passing ones up after 2."""
    backend = Backend.create("vllm-1", server.url)
    checker = HealthChecker([backend], session, 10.0, "/health", 2.0, 3, 2)
    caplog.set_level(logging.INFO, logger="llmproxy.routing")

    await checker.probe_once()
    assert backend.is_available(0.0)

    server.status = 503
    for _ in range(2):
        await checker.probe_once()
        assert backend.is_available(0.0)
    await checker.probe_once()
    assert not backend.is_available(0.0)
    assert "backend 'vllm-1' marked unhealthy after 3 failed probes" in caplog.text
    assert "HTTP 503" in caplog.text

    server.status = 200
    await checker.probe_once()
    assert not backend.is_available(0.0)
    await checker.probe_once()
    assert backend.is_available(0.0)
    assert "backend 'vllm-1' is healthy again" in caplog.text
    assert server.probes == 6


async def test_non_2xx_statuses_fail(
    server: FakeBackendServer, session: aiohttp.ClientSession
) -> None:
    """Redirects and client errors are failures too; only 2xx counts as healthy."""
    backend = Backend.create("b", server.url)
    checker = HealthChecker([backend], session, 10.0, "health", 2.0, 1, 1)
    server.status = 302
    await checker.probe_once()
    assert not backend.probe_healthy
    server.status = 204
    await checker.probe_once()
    assert backend.probe_healthy


async def test_closed_port_counts_as_failure(session: aiohttp.ClientSession) -> None:
    """A connection refused is a failed probe."""
    backend = Backend.create("gone", closed_port_url())
    checker = HealthChecker([backend], session, 10.0, "/health", 2.0, 1, 1)
    await checker.probe_once()
    assert not backend.probe_healthy


async def test_timeout_counts_as_failure(
    server: FakeBackendServer, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that does not answer within the timeout fails the probe."""
    server.hang = True
    backend = Backend.create("slow", server.url)
    checker = HealthChecker([backend], session, 10.0, "/health", 0.1, 1, 1)
    await checker.probe_once()
    assert not backend.probe_healthy
    assert "no answer within 0.1s" in caplog.text


async def test_round_probes_all_backends_independently(
    server: FakeBackendServer, session: aiohttp.ClientSession
) -> None:
    """One dead backend does not affect the verdict on a live one in the same round."""
    live = Backend.create("live", server.url)
    dead = Backend.create("dead", closed_port_url())
    checker = HealthChecker([live, dead], session, 10.0, "/health", 2.0, 1, 1)
    await checker.probe_once()
    assert live.probe_healthy
    assert not dead.probe_healthy


async def test_start_runs_first_round_immediately_and_stop_cancels(
    server: FakeBackendServer, session: aiohttp.ClientSession
) -> None:
    """start() probes at once in the background, and stop() ends the loop promptly."""
    server.status = 500
    backend = Backend.create("b", server.url)
    checker = HealthChecker([backend], session, 3600.0, "/health", 2.0, 1, 1)
    await checker.start()
    await checker.start()
    await wait_until(lambda: not backend.probe_healthy)
    await checker.stop()
    await checker.stop()
    assert server.probes == 1


async def test_stop_interrupts_a_hanging_probe(
    server: FakeBackendServer, session: aiohttp.ClientSession
) -> None:
    """stop() during a probe that hangs returns well before the probe timeout."""
    server.hang = True
    backend = Backend.create("b", server.url)
    checker = HealthChecker([backend], session, 10.0, "/health", 30.0, 1, 1)
    await checker.start()
    await wait_until(lambda: server.probes > 0)
    async with asyncio.timeout(5.0):
        await checker.stop()
    assert backend.probe_healthy


async def test_repeated_rounds_on_interval(
    server: FakeBackendServer, session: aiohttp.ClientSession
) -> None:
    """The loop keeps probing every interval."""
    backend = Backend.create("b", server.url)
    checker = HealthChecker([backend], session, 0.02, "/health", 2.0)
    await checker.start()
    await wait_until(lambda: server.probes >= 3)
    await checker.stop()


async def test_invalid_interval_is_rejected(session: aiohttp.ClientSession) -> None:
    """A zero interval would spin; it is refused at construction."""
    with pytest.raises(ValueError, match="interval"):
        HealthChecker([], session, 0.0)
