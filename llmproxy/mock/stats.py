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

    The simulated GPU (:mod:`llmproxy.mock.gpu`) keeps ``running`` and ``waiting`` (by model),
    their peaks ``peak_running`` and ``queued_peak``, and its prefix cache's ``prefix_queries``
    and ``prefix_hits`` (prompt tokens, by model), which ``/metrics`` renders in vLLM's names.
    """

    __slots__ = (
        "by_path",
        "cancellations",
        "completed",
        "in_flight",
        "peak_in_flight",
        "peak_running",
        "prefix_hits",
        "prefix_queries",
        "queued_peak",
        "requests",
        "running",
        "waiting",
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
        # Generation requests holding a batch slot, by model: vLLM's ``num_requests_running``.
        self.running: dict[str, int] = {}
        # Generation requests queued for a slot, by model: vLLM's ``num_requests_waiting``.
        self.waiting: dict[str, int] = {}
        # The most generations running / queued at once since the last reset (all models):
        # ``peak_running`` must never exceed the ``slots`` knob.
        self.peak_running = 0
        self.queued_peak = 0
        # Prompt tokens looked up in the prefix cache, and those found, by model (vLLM counts
        # tokens, not requests): hits / queries is the cache's hit rate.
        self.prefix_queries: dict[str, int] = {}
        self.prefix_hits: dict[str, int] = {}

    def reset(self) -> None:
        """Zero the totals; live gauges (``in_flight``, ``running``, ``waiting``) keep tracking
        real requests, and the peaks restart from them."""
        self.requests = self.cancellations = self.completed = 0
        self.peak_in_flight = self.in_flight
        self.peak_running = sum(self.running.values())
        self.queued_peak = sum(self.waiting.values())
        self.by_path.clear()
        self.prefix_queries.clear()
        self.prefix_hits.clear()

    def snapshot(self) -> dict[str, Any]:
        """The counters as JSON-ready data (what ``GET /mock/stats`` returns)."""
        return {
            "requests": self.requests,
            "cancellations": self.cancellations,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "completed": self.completed,
            "by_path": dict(self.by_path),
            "running": sum(self.running.values()),
            "waiting": sum(self.waiting.values()),
            "peak_running": self.peak_running,
            "queued_peak": self.queued_peak,
            "prefix_cache_queries": sum(self.prefix_queries.values()),
            "prefix_cache_hits": sum(self.prefix_hits.values()),
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

    def render_metrics(self, models: Iterable[str], slots: int = 0) -> str:
        """Prometheus text exposition with the vLLM names a load-aware balancer scrapes.

        Running and waiting are the real slot pool's counts. The KV cache usage is the share of
        the ``slots`` in use (the mock's batch *is* its KV cache); without a slot limit it is a
        made-up but monotonic 1 % per running request. The prefix cache counters are in prompt
        tokens, like vLLM's, so ``hits / queries`` is its hit rate.
        """
        running_total = sum(self.running.values())
        gauges: dict[str, list[str]] = {name: [] for name, _ in _GAUGES}
        counters: dict[str, list[str]] = {name: [] for name, _ in _COUNTERS}
        for model in models:
            label = f'{{model_name="{_escape(model)}"}}'
            running = self.running.get(model, 0)
            usage = running_total / slots if slots > 0 else running / 100
            usage = min(1.0, usage)
            gauges["vllm:num_requests_running"].append(f"{label} {running}")
            gauges["vllm:num_requests_waiting"].append(f"{label} {self.waiting.get(model, 0)}")
            gauges["vllm:gpu_cache_usage_perc"].append(f"{label} {usage}")
            gauges["vllm:kv_cache_usage_perc"].append(f"{label} {usage}")
            queries = self.prefix_queries.get(model, 0)
            counters["vllm:prefix_cache_queries"].append(f"{label} {queries}")
            counters["vllm:prefix_cache_hits"].append(f"{label} {self.prefix_hits.get(model, 0)}")
        lines = []
        for name, help_text in _GAUGES:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            lines += [f"{name}{sample}" for sample in gauges[name]]
        for name, help_text in _COUNTERS:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            lines += [f"{name}_total{sample}" for sample in counters[name]]
        lines += [
            "# HELP mock_requests_total API requests received by the mock backend.",
            "# TYPE mock_requests_total counter",
            f"mock_requests_total {self.requests}",
            "# HELP mock_cancellations_total API requests the client abandoned before the end.",
            "# TYPE mock_cancellations_total counter",
            f"mock_cancellations_total {self.cancellations}",
        ]
        return "\n".join(lines) + "\n"


_GAUGES: tuple[tuple[str, str], ...] = (
    ("vllm:num_requests_running", "Number of requests in model execution batches."),
    ("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
    ("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage."),
    ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
)
_COUNTERS: tuple[tuple[str, str], ...] = (
    ("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens."),
    ("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."),
)


def _escape(label_value: str) -> str:
    return label_value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
