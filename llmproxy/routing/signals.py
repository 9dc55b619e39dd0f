"""Load signals from the backends' own Prometheus endpoints (vLLM, SGLang).

The gateway knows what it sent (in-flight counts, time to first byte) but not what a replica is
doing with it: how many requests wait for a batch slot, how full its KV cache is. vLLM and SGLang
publish both on ``/metrics``; :class:`SignalScraper` reads them every ``interval`` and writes them
onto the `Backend` objects the strategies read. A backend whose metrics cannot be read keeps
``signals_at`` at its last success and the strategies fall back on the gateway's own counts.

:func:`parse_signals` is pure (text in, numbers out) so the name mapping is tested without a
server. Metrics with several label sets (one per model) are summed; the cache usage is the
largest value seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from llmproxy.routing.backend import Backend

log = logging.getLogger("llmproxy.routing")

WAITING: Final = frozenset({"vllm:num_requests_waiting", "sglang:num_queue_reqs"})
RUNNING: Final = frozenset({"vllm:num_requests_running", "sglang:num_running_reqs"})
KV_USAGE: Final = frozenset(
    {"vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc", "sglang:token_usage"}
)
"""Fractions 0..1 despite vLLM's ``_perc`` suffix."""


@dataclass(frozen=True, slots=True)
class Signals:
    """What one scrape said; None for a signal the backend does not publish."""

    waiting: int | None = None
    running: int | None = None
    kv_cache_usage: float | None = None


def parse_signals(text: str) -> Signals:
    """Read the known load metrics out of a Prometheus text exposition."""
    waiting = running = None
    kv: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if name in WAITING:
                waiting = (waiting or 0) + int(sample.value)
            elif name in RUNNING:
                running = (running or 0) + int(sample.value)
            elif name in KV_USAGE:
                kv = sample.value if kv is None else max(kv, sample.value)
    return Signals(waiting, running, kv)


def apply_signals(backend: Backend, signals: Signals, now: float) -> None:
    """Write one scrape's numbers onto ``backend`` (signals it does not publish stay unset)."""
    backend.queue_waiting = signals.waiting or 0
    backend.running = signals.running or 0
    backend.kv_cache_usage = signals.kv_cache_usage
    backend.signals_at = now


class SignalScraper:
    """Scrapes every backend's metrics endpoint every ``interval`` seconds, concurrently."""

    def __init__(
        self,
        backends: Sequence[Backend],
        session: aiohttp.ClientSession,
        *,
        interval: float = 1.0,
        path: str = "/metrics",
        timeout: float = 0.5,
    ) -> None:
        self._backends = tuple(backends)
        self._session = session
        self._interval = interval
        self._path = path
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._task: asyncio.Task[None] | None = None
        self._failing: set[str] = set()

    async def start(self) -> None:
        """Scrape once (so the first requests already see signals), then keep scraping."""
        await self.scrape_all()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def scrape_all(self) -> None:
        await asyncio.gather(*(self._scrape(backend) for backend in self._backends))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.scrape_all()

    async def _scrape(self, backend: Backend) -> None:
        try:
            async with self._session.get(
                backend.url + self._path, timeout=self._timeout
            ) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                text = await response.text()
            signals = parse_signals(text)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if backend.name not in self._failing:
                self._failing.add(backend.name)
                log.warning(
                    "load signals of %s unreadable (%s); using the gateway's own counts",
                    backend.name,
                    exc,
                )
            backend.queue_waiting = 0
            backend.kv_cache_usage = None
            return
        if backend.name in self._failing:
            self._failing.discard(backend.name)
            log.info("load signals of %s readable again", backend.name)
        apply_signals(backend, signals, time.monotonic())
