"""Multi-process mode: worker processes write to one directory and a render aggregates them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

from llmproxy.metrics import MULTIPROC_ENV, is_multiprocess, mark_dead, prepare_multiprocess, render

# A worker: one request, one request in flight, one health verdict, then it exits.
WORKER = """
from llmproxy.metrics import GatewayMetrics
metrics = GatewayMetrics()
metrics.allow_models(["llama-3-8b"])
metrics.request_finished("gpu-a", "llama-3-8b", "/v1/chat/completions", 200, 0.5, 0.1, 10, 20)
metrics.in_flight("gpu-a", 1)
metrics.backend_health("gpu-a", True)
"""


def samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


@pytest.fixture
def multiproc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Recorded so teardown puts the single-process setup back for the other tests.
    monkeypatch.setenv(MULTIPROC_ENV, "")
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    directory = tmp_path / "prom"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"left over by a previous run")
    (directory / "keep.txt").write_text("not ours")
    return directory


def run_worker() -> int:
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER], env=os.environ.copy(), stderr=subprocess.PIPE
    )
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr.decode()
    return process.pid


def test_render_aggregates_workers_and_mark_dead_drops_live_gauges(multiproc_dir: Path) -> None:
    """Two workers' counters add up; a dead worker's in-flight and health go once marked dead."""
    prepare_multiprocess(multiproc_dir)
    assert is_multiprocess()
    assert os.environ[MULTIPROC_ENV] == str(multiproc_dir.resolve())
    assert not (multiproc_dir / "counter_999999.db").exists()
    assert (multiproc_dir / "keep.txt").exists()

    first, second = run_worker(), run_worker()
    body, content_type = render()
    assert content_type.startswith("text/plain")
    found = samples(body)
    request = {
        "backend": "gpu-a",
        "model": "llama-3-8b",
        "endpoint": "chat/completions",
        "status_class": "2xx",
    }
    assert found[("llmproxy_requests_total", frozenset(request.items()))] == 2
    tokens = {"model": "llama-3-8b", "type": "completion"}
    assert found[("llmproxy_tokens_total", frozenset(tokens.items()))] == 40
    ttft = {"backend": "gpu-a", "model": "llama-3-8b", "le": "0.1"}
    assert found[("llmproxy_time_to_first_token_seconds_bucket", frozenset(ttft.items()))] == 2
    backend = frozenset({"backend": "gpu-a"}.items())
    assert found[("llmproxy_in_flight_requests", backend)] == 2
    assert found[("llmproxy_backend_healthy", backend)] == 1

    mark_dead(first)
    found = samples(render()[0])
    assert found[("llmproxy_in_flight_requests", backend)] == 1
    assert found[("llmproxy_requests_total", frozenset(request.items()))] == 2

    mark_dead(second)
    found = samples(render()[0])
    assert ("llmproxy_in_flight_requests", backend) not in found
    assert ("llmproxy_backend_healthy", backend) not in found
    assert found[("llmproxy_requests_total", frozenset(request.items()))] == 2
