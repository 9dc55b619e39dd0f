"""The pure helpers of the client, the report document and the client-health warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmproxy.replay.client import FD_HEADROOM, normalize_target, pool_size, request_headers
from llmproxy.replay.lag import ClientHealth, client_warnings
from llmproxy.replay.report import REPORT_FORMAT, build_document
from llmproxy.replay.sample import Sample
from llmproxy.replay.source import LineProblem, Scan
from llmproxy.replay.stats import Distribution, summarize


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
        ("https://api.example.com/v1/", "https://api.example.com"),
        ("http://host/prefix/v1", "http://host/prefix"),
        (" http://[::1]:9 ", "http://[::1]:9"),
    ],
)
def test_normalize_target(url: str, base: str) -> None:
    assert normalize_target(url) == base


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8000", "ftp://host", "http://", "http://h/?a=1", "http://h:99999"]
)
def test_normalize_target_refuses(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        normalize_target(url)


def test_request_headers() -> None:
    assert request_headers(None, {}) == {"Content-Type": "application/json"}
    headers = request_headers("sk-1", {"x-mock-itl": "0.01"})
    assert headers["Authorization"] == "Bearer sk-1"
    assert headers["x-mock-itl"] == "0.01"


def test_pool_size_stays_within_the_descriptors() -> None:
    assert pool_size(50, 1024) == 50
    assert pool_size(5000, 1024) == 1024 - FD_HEADROOM
    assert pool_size(10, 10) == 1


def _dist(p99: float) -> Distribution:
    return Distribution(1, p99, p99, p99, p99, p99)


def test_client_warnings() -> None:
    calm = ClientHealth(_dist(1.0), 0.3)
    assert client_warnings(calm, _dist(1.0), open_loop=True) == []
    busy = ClientHealth(_dist(12.0), 0.95)
    warnings = client_warnings(busy, _dist(20.0), open_loop=True)
    assert len(warnings) == 3
    assert "12.0 ms at p99" in warnings[0]
    assert "95%" in warnings[1]
    assert "behind schedule" in warnings[2]
    # Closed loop has no schedule to fall behind.
    assert len(client_warnings(busy, _dist(20.0), open_loop=False)) == 2


def test_build_document() -> None:
    samples = [Sample("/v1/chat/completions", "m", 0.0, 0.0, 0.1, status=200, first_token=0.05)]
    scan = Scan((Path("r.jsonl"),), problems=[LineProblem(Path("r.jsonl"), 2, "bad")], malformed=1)
    document = build_document(
        summarize(samples, 0.0),
        ClientHealth(_dist(0.5), 0.25),
        ["careful"],
        settings={"target": "http://x"},
        environment={"python": "3"},
        source=scan,
    )
    assert document["llmproxy_replay"] == REPORT_FORMAT
    assert document["settings"] == {"target": "http://x"}
    results = document["results"]
    assert (results["sent"], results["ok"], results["interrupted"]) == (1, 1, False)
    assert results["ttft_ms"]["p50"] == 50.0
    assert document["client"]["warnings"] == ["careful"]
    assert document["source"]["problems"] == [{"file": "r.jsonl", "line": 2, "message": "bad"}]
    assert document["source"]["files"] == ["r.jsonl"]
