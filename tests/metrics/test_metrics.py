"""Families, labels and values of `GatewayMetrics`, read back through the text exposition."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from llmproxy.metrics import (
    GatewayMetrics,
    mean_inter_token,
    normalize_endpoint,
    status_class,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: GatewayMetrics) -> Samples:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def metrics() -> GatewayMetrics:
    gateway = GatewayMetrics(CollectorRegistry())
    gateway.allow_models(["llama-3-8b", "qwen-7b"])
    return gateway


def test_request_finished_counts_request_latency_and_tokens(metrics: GatewayMetrics) -> None:
    """A finished stream counts the request, its duration, TTFT and both token kinds."""
    for _ in range(2):
        metrics.request_finished(
            "gpu-a", "llama-3-8b", "/v1/chat/completions", 200, 1.5, 0.2, 30, 90
        )
    metrics.request_finished("gpu-a", "llama-3-8b", "/v1/chat/completions", 503, 0.01)
    samples = scrape(metrics)
    labels = {"backend": "gpu-a", "model": "llama-3-8b", "endpoint": "chat/completions"}
    assert value(samples, "llmproxy_requests_total", **labels, status_class="2xx") == 2
    assert value(samples, "llmproxy_requests_total", **labels, status_class="5xx") == 1
    assert value(samples, "llmproxy_request_duration_seconds_count", **labels) == 3
    assert value(samples, "llmproxy_request_duration_seconds_sum", **labels) == pytest.approx(3.01)
    assert value(samples, "llmproxy_request_duration_seconds_bucket", **labels, le="1.0") == 1
    assert value(samples, "llmproxy_request_duration_seconds_bucket", **labels, le="2.5") == 3
    ttft = {"backend": "gpu-a", "model": "llama-3-8b"}
    assert value(samples, "llmproxy_time_to_first_token_seconds_count", **ttft) == 2
    assert value(samples, "llmproxy_time_to_first_token_seconds_bucket", **ttft, le="0.25") == 2
    assert value(samples, "llmproxy_tokens_total", model="llama-3-8b", type="prompt") == 60
    assert value(samples, "llmproxy_tokens_total", model="llama-3-8b", type="completion") == 180


def test_unknown_model_is_reported_as_other(metrics: GatewayMetrics) -> None:
    """A model outside the allowed set is labelled ``other``; an empty one ``none``."""
    metrics.request_finished("gpu-a", "made-up-model", "/v1/completions", 404, 0.01)
    metrics.request_finished("gpu-a", "", "/v1/models", 200, 0.001)
    metrics.inter_token("gpu-a", "another-made-up", 0.02)
    samples = scrape(metrics)
    models = {dict(labels).get("model") for _, labels in samples}
    assert models == {None, "other", "none"}
    metrics.allow_models(["made-up-model"])
    metrics.request_finished("gpu-a", "made-up-model", "/v1/completions", 200, 0.01)
    assert (
        value(
            scrape(metrics),
            "llmproxy_requests_total",
            backend="gpu-a",
            model="made-up-model",
            endpoint="completions",
            status_class="2xx",
        )
        == 1
    )


def test_no_label_value_carries_a_key(metrics: GatewayMetrics) -> None:
    """A key sent where a model or a path is expected never becomes a label value."""
    key = "sk-live-0123456789abcdef"
    metrics.request_finished("gpu-a", key, f"/v1/{key}", 401, 0.001)
    metrics.inter_token("gpu-a", key, 0.01)
    metrics.auth_decision("static", key)
    metrics.limit_rejection(key)
    metrics.config_reload(key)
    body, _ = metrics.render()
    assert b"sk-" not in body
    for _, labels in scrape(metrics):
        assert not any(label_value.startswith("sk-") for _, label_value in labels)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "2xx"),
        (299, "2xx"),
        (301, "3xx"),
        (404, "4xx"),
        (429, "4xx"),
        (503, "5xx"),
        (101, "1xx"),
        (0, "other"),
        (99, "other"),
        (600, "other"),
    ],
)
def test_status_class(status: int, expected: str) -> None:
    """HTTP statuses collapse to their class; anything outside 100–599 is ``other``."""
    assert status_class(status) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/completions", "chat/completions"),
        ("/v1/completions", "completions"),
        ("/v1/embeddings", "embeddings"),
        ("/v1/models", "models"),
        ("chat/completions", "chat/completions"),
        ("/chat/completions", "chat/completions"),
        ("/v1/chat/completions/", "chat/completions"),
        ("/v1/embeddings?x=1", "embeddings"),
        ("/v1/models/llama", "other"),
        ("/v1/audio/speech", "other"),
        ("/admin", "other"),
        ("", "other"),
    ],
)
def test_normalize_endpoint(path: str, expected: str) -> None:
    """Request paths map onto the fixed endpoint list, everything else onto ``other``."""
    assert normalize_endpoint(path) == expected


def test_mean_inter_token() -> None:
    """The mean gap is the generation time after the first token over the remaining tokens."""
    assert mean_inter_token(2.2, 0.2, 101) == pytest.approx(0.02)
    assert mean_inter_token(2.2, None, 101) is None
    assert mean_inter_token(2.2, 0.2, 1) is None
    assert mean_inter_token(0.1, 0.2, 10) is None


def test_backend_gauges_and_counters(metrics: GatewayMetrics) -> None:
    """In-flight, health, ejections, retries and fallbacks are kept per backend."""
    metrics.in_flight("gpu-a", 1)
    metrics.in_flight("gpu-a", 1)
    metrics.in_flight("gpu-a", -1)
    metrics.backend_health("gpu-a", True)
    metrics.backend_health("gpu-b", False)
    metrics.ejection("gpu-b")
    metrics.retry("gpu-b")
    metrics.retry("gpu-b")
    metrics.fallback("gpu-b")
    metrics.inter_token("gpu-a", "qwen-7b", 0.02)
    samples = scrape(metrics)
    assert value(samples, "llmproxy_in_flight_requests", backend="gpu-a") == 1
    assert value(samples, "llmproxy_backend_healthy", backend="gpu-a") == 1
    assert value(samples, "llmproxy_backend_healthy", backend="gpu-b") == 0
    assert value(samples, "llmproxy_backend_ejections_total", backend="gpu-b") == 1
    assert value(samples, "llmproxy_retries_total", backend="gpu-b") == 2
    assert value(samples, "llmproxy_fallbacks_total", backend="gpu-b") == 1
    itl = {"backend": "gpu-a", "model": "qwen-7b"}
    assert value(samples, "llmproxy_inter_token_latency_seconds_bucket", **itl, le="0.02") == 1
    assert value(samples, "llmproxy_inter_token_latency_seconds_bucket", **itl, le="0.01") == 0


def test_auth_limits_and_reloads(metrics: GatewayMetrics) -> None:
    """Auth results, limit kinds and reload results are counted, fixed series start at zero."""
    samples = scrape(metrics)
    assert value(samples, "llmproxy_limit_rejections_total", kind="quota") == 0
    assert value(samples, "llmproxy_config_reloads_total", result="failure") == 0
    metrics.auth_decision("static", "allowed")
    metrics.auth_decision("static", "allowed")
    metrics.auth_decision("redis", "error")
    metrics.limit_rejection("tokens")
    metrics.limit_rejection("something-new")
    metrics.config_reload("success")
    samples = scrape(metrics)
    assert value(samples, "llmproxy_auth_decisions_total", provider="static", result="allowed") == 2
    assert value(samples, "llmproxy_auth_decisions_total", provider="redis", result="error") == 1
    assert value(samples, "llmproxy_limit_rejections_total", kind="tokens") == 1
    assert value(samples, "llmproxy_limit_rejections_total", kind="other") == 1
    assert value(samples, "llmproxy_config_reloads_total", result="success") == 1


@dataclass
class FakeOutbox:
    depth: int = 0
    dead: int = 0
    delivery_attempts: int = 0
    delivery_failures: int = 0
    overflow: int = 0

    def outbox_depth(self) -> int:
        return self.depth

    def dead_letters(self) -> int:
        return self.dead


def test_usage_source_is_read_at_scrape(metrics: GatewayMetrics) -> None:
    """The watched outbox is read on every scrape; a replaced source keeps counters monotonic."""
    outbox = FakeOutbox(depth=7, dead=1, delivery_attempts=10, delivery_failures=3, overflow=2)
    metrics.watch_usage(outbox)
    samples = scrape(metrics)
    assert value(samples, "llmproxy_usage_outbox_depth") == 7
    assert value(samples, "llmproxy_usage_dead_letters") == 1
    assert value(samples, "llmproxy_usage_delivery_attempts_total") == 10
    assert value(samples, "llmproxy_usage_delivery_failures_total") == 3
    assert value(samples, "llmproxy_usage_queue_overflows_total") == 2
    outbox.depth, outbox.delivery_attempts = 0, 15
    samples = scrape(metrics)
    assert value(samples, "llmproxy_usage_outbox_depth") == 0
    assert value(samples, "llmproxy_usage_delivery_attempts_total") == 15
    metrics.watch_usage(outbox)
    assert value(scrape(metrics), "llmproxy_usage_delivery_attempts_total") == 15
    metrics.watch_usage(FakeOutbox(delivery_attempts=4))
    samples = scrape(metrics)
    assert value(samples, "llmproxy_usage_delivery_attempts_total") == 19
    assert value(samples, "llmproxy_usage_delivery_failures_total") == 3


def test_families_register_once_per_registry() -> None:
    """A second instance on the same registry is refused: one instance per process."""
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        GatewayMetrics(registry)


def test_models_learnt_from_traffic_are_bounded() -> None:
    """Names learnt from answered requests are capped in number and length; the rest are
    labelled other, so a backend that serves any name cannot let clients mint series."""
    from llmproxy.metrics import MAX_LEARNED_MODELS

    metrics = GatewayMetrics(CollectorRegistry())
    metrics.learn_model("x" * 500)
    assert metrics.model_label("x" * 500) == "other"
    for number in range(MAX_LEARNED_MODELS + 10):
        metrics.learn_model(f"model-{number}")
    assert metrics.model_label("model-0") == "model-0"
    assert metrics.model_label(f"model-{MAX_LEARNED_MODELS + 5}") == "other"
