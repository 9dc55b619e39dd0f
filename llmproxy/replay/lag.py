"""Is the client itself the bottleneck? Its event loop's lag and its CPU share, watched.

A load generator that cannot keep up reports its own queueing as the server's latency. A ticker
task asks to wake every :data:`TICK` seconds and records how late it woke: when the loop is busy
parsing responses or starting requests, every timer — the open-loop schedule's included — fires
late by about that much. The report warns when the p99 lag, or the CPU share of this process,
says the figures may be the client's rather than the server's (:func:`client_warnings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Final

from llmproxy.replay.stats import Distribution

TICK: Final = 0.005
"""Seconds the ticker sleeps between readings."""

LAG_P99_WARN_MS: Final = 5.0
"""p99 loop lag above this and the run's latencies may include the client's own delay."""

CPU_SHARE_WARN: Final = 0.8
"""Above this share of one core the client is close to saturating it."""

SEND_LAG_P99_WARN_MS: Final = 5.0
"""p99 lateness of sends against the schedule above this and the offered load was not met."""


class LagMonitor:
    """Run as a task during a run; :meth:`result` gives the lag distribution and CPU share."""

    def __init__(self) -> None:
        self._lags: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._cpu0 = self._wall0 = 0.0
        self._cpu = self._wall = 0.0

    async def _tick(self) -> None:
        # perf_counter, not loop.time(): uvloop's clock has only millisecond resolution.
        lags = self._lags
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            lags.append(max(0.0, time.perf_counter() - before - TICK))

    def start(self) -> None:
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        self._cpu = time.process_time() - self._cpu0
        self._wall = time.perf_counter() - self._wall0
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def result(self) -> ClientHealth:
        """The loop lag and the CPU share of the run (call after :meth:`stop`)."""
        share = self._cpu / self._wall if self._wall > 0 else 0.0
        # The ticker's own timer granularity (uvloop: 1 ms) is part of every reading; so be it:
        # it is small against the warning threshold.
        return ClientHealth(Distribution.of_seconds(self._lags), share)


@dataclass(frozen=True, slots=True)
class ClientHealth:
    """How the client fared: its event loop's lag and the CPU share of one core it used."""

    loop_lag: Distribution
    cpu_share: float


def client_warnings(health: ClientHealth, send_lag: Distribution, *, open_loop: bool) -> list[str]:
    """Plain sentences for the report when the client, not the server, may limit the run."""
    warnings: list[str] = []
    lag = health.loop_lag.p99
    if lag is not None and lag > LAG_P99_WARN_MS:
        warnings.append(
            f"the client's event loop lagged {lag:.1f} ms at p99 (threshold "
            f"{LAG_P99_WARN_MS:g} ms): latencies may include the client's own delay"
        )
    if health.cpu_share > CPU_SHARE_WARN:
        warnings.append(
            f"the client used {health.cpu_share:.0%} of a CPU core: it may be the bottleneck"
        )
    late = send_lag.p99
    if open_loop and late is not None and late > SEND_LAG_P99_WARN_MS:
        warnings.append(
            f"sends were {late:.1f} ms behind schedule at p99: the offered load was not met "
            "(latencies count from the schedule, so they include this delay)"
        )
    return warnings
