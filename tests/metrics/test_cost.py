"""Rough per-call cost of the hot-path methods, printed (run with ``-s``), never asserted."""

from __future__ import annotations

import timeit
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from llmproxy.metrics import GatewayMetrics

CALLS = 20_000


def test_hot_path_cost_is_printed() -> None:
    """Each hot-path method runs with cached label children; the µs per call are printed."""
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.allow_models(["llama-3-8b"])
    chat = "/v1/chat/completions"
    cases: dict[str, Callable[[], None]] = {
        "request_finished (stream)": lambda: metrics.request_finished(
            "gpu-a", "llama-3-8b", chat, 200, 1.2, 0.1, 30, 90
        ),
        "request_finished (no ttft)": lambda: metrics.request_finished(
            "gpu-a", "llama-3-8b", "/v1/embeddings", 200, 0.05, None, 30, 0
        ),
        "request_finished (unknown model)": lambda: metrics.request_finished(
            "gpu-a", "not-configured", chat, 404, 0.002
        ),
        "inter_token": lambda: metrics.inter_token("gpu-a", "llama-3-8b", 0.02),
        "in_flight": lambda: metrics.in_flight("gpu-a", 1),
        "retry": lambda: metrics.retry("gpu-a"),
        "auth_decision": lambda: metrics.auth_decision("static", "allowed"),
        "limit_rejection": lambda: metrics.limit_rejection("tokens"),
    }
    for name, call in cases.items():
        seconds = min(timeit.repeat(call, number=CALLS, repeat=3)) / CALLS
        print(f"{name:34} {seconds * 1e6:5.2f} µs")
