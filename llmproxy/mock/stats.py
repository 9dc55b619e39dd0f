"""Counters that let a test see what the mock backend went through.

Tests assert on these instead of timing: "the gateway closed the upstream request when the client
left" is ``stats.cancellations == 1``. They are plain ints on one object because the mock runs on a
single event loop; there is nothing to lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


class MockStats:
    """Live counters of one :class:`~llmproxy.mock.MockBackend`.

    ``requests``, ``in_flight``, ``completed`` and ``cancellations`` count the ``/v1/*`` API calls
    (not health probes, metrics scrapes or ``/mock/*`` control calls); ``by_path`` counts every
    request except ``/mock/*`` control calls. ``cancellations`` counts requests the *client* gave up
    on before the response was complete (disconnect before the first token, mid-stream, or during a
    non-streamed wait), each exactly once; connections the mock drops on purpose are not counted.
    """

    __slots__ = (
        "by_path",
        "cancellations",
        "completed",
        "in_flight",
        "peak_in_flight",
        "requests",
        "running",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.cancellations = 0
        self.completed = 0
        self.in_flight = 0
        # The most ``/v1/*`` calls in progress at once since the last reset: what a concurrency
        # limit in front of the mock must keep at or below its bound.
        self.peak_in_flight = 0
        self.by_path: dict[str, int] = {}
        # Generation requests in progress by model: vLLM's ``num_requests_running``.
        self.running: dict[str, int] = {}

    def reset(self) -> None:
        """Zero the totals; live gauges (``in_flight``, ``running``) keep tracking real requests."""
        self.requests = self.cancellations = self.completed = 0
        self.peak_in_flight = self.in_flight
        self.by_path.clear()

    def snapshot(self) -> dict[str, Any]:
        """The counters as JSON-ready data (what ``GET /mock/stats`` returns)."""
        return {
            "requests": self.requests,
            "cancellations": self.cancellations,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "completed": self.completed,
            "by_path": dict(self.by_path),
        }

    async def wait_until(self, counter: str, at_least: int, within: float = 5.0) -> None:
        """Wait until ``counter`` reaches ``at_least``, failing after ``within`` seconds.

        The mock learns of a disconnect a moment after the client leaves, so a test polls::

            await mock.stats.wait_until("cancellations", 1)
            assert mock.stats.cancellations == 1   # and not 2
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (value := getattr(self, counter)) < at_least:
            if loop.time() >= deadline:
                raise TimeoutError(f"mock stats: {counter} is {value}, expected >= {at_least}")
            await asyncio.sleep(0.005)

    def render_metrics(self, models: Iterable[str]) -> str:
        """Prometheus text exposition with the vLLM gauge names a load-aware balancer scrapes.

        Nothing waits in a queue in the mock, so ``num_requests_waiting`` is always 0, and the KV
        cache usage is a made-up but monotonic 1 % per running request.
        """
        lines = [
            "# HELP vllm:num_requests_running Number of requests currently running on GPU.",
            "# TYPE vllm:num_requests_running gauge",
        ]
        waiting, cache = [], []
        for model in models:
            label = f'{{model_name="{_escape(model)}"}}'
            running = self.running.get(model, 0)
            lines.append(f"vllm:num_requests_running{label} {running}")
            waiting.append(f"vllm:num_requests_waiting{label} 0")
            cache.append(f"vllm:gpu_cache_usage_perc{label} {min(1.0, running / 100)}")
        lines += [
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            *waiting,
            "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:gpu_cache_usage_perc gauge",
            *cache,
            "# HELP mock_requests_total API requests received by the mock backend.",
            "# TYPE mock_requests_total counter",
            f"mock_requests_total {self.requests}",
            "# HELP mock_cancellations_total API requests the client abandoned before the end.",
            "# TYPE mock_cancellations_total counter",
            f"mock_cancellations_total {self.cancellations}",
        ]
        return "\n".join(lines) + "\n"


def _escape(label_value: str) -> str:
    return label_value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
