"""Percentiles and the figures of a run, from plain samples."""

from __future__ import annotations

import math

import pytest

from llmproxy.replay.sample import BROKEN_STREAM, CONNECT, Sample, http_error
from llmproxy.replay.stats import Distribution, percentile, summarize


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([5.0], 99, 5.0),
        ([float(i) for i in range(1, 101)], 90, 90.1),  # numpy.percentile(range(1, 101), 90)
        ([float(i) for i in range(1, 101)], 99, 99.01),
    ],
)
def test_percentile_interpolates_like_numpy(values, q, expected) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))


def test_distribution_is_in_milliseconds() -> None:
    dist = Distribution.of_seconds([0.004, 0.001, 0.002, 0.003])
    assert dist.count == 4
    assert dist.p50 == pytest.approx(2.5)
    assert dist.max == pytest.approx(4.0)
    assert dist.mean == pytest.approx(2.5)
    assert dist.as_json()["p99"] == pytest.approx(3.97)


def test_an_empty_distribution_has_no_values() -> None:
    assert Distribution.of_seconds([]).as_json() == {
        "count": 0,
        "mean": None,
        "p50": None,
        "p90": None,
        "p99": None,
        "max": None,
    }


def _sample(scheduled: float, sent: float, end: float, **fields) -> Sample:
    return Sample("/v1/chat/completions", "m", scheduled, sent, end, **fields)


def test_latency_counts_from_the_schedule_when_the_send_was_late() -> None:
    """No coordinated omission: a request due at 1.0 but sent at 1.5 waited 0.5 s too."""
    sample = _sample(1.0, 1.5, 2.0, status=200, first_token=1.75)
    assert sample.latency == pytest.approx(1.0)
    assert summarize([sample], 0.0).service.max == pytest.approx(500.0)  # from the actual send
    assert sample.ttft == pytest.approx(0.75)
    assert sample.send_lag == pytest.approx(0.5)


def test_latency_counts_from_the_send_when_a_timer_fired_early() -> None:
    sample = _sample(1.0, 0.999, 1.1, status=200, first_token=1.05)
    assert sample.latency == pytest.approx(0.101)


def test_summary_of_a_run() -> None:
    samples = [
        _sample(0.0, 0.0, 0.1, status=200, first_token=0.02, mean_gap=0.01, output_tokens=9),
        _sample(0.5, 0.5, 0.7, status=200, first_token=0.54, mean_gap=0.02, output_tokens=11),
        _sample(1.0, 1.0, 1.01, status=429, error=http_error(429), detail="slow down"),
        _sample(1.5, 1.5, 1.6, error=CONNECT, detail="refused"),
        _sample(2.0, 2.0, 2.2, status=200, error=BROKEN_STREAM, output_tokens=3),
    ]
    summary = summarize(samples, started=0.0)
    assert (summary.sent, summary.ok, summary.failed) == (5, 2, 3)
    assert summary.error_rate == pytest.approx(0.6)
    assert summary.wall_s == pytest.approx(2.2)
    assert summary.send_rate == pytest.approx(2.0)  # 4 gaps over 2 s
    assert summary.request_rate == pytest.approx(5 / 2.2)
    assert summary.output_tokens == 23
    assert summary.tokens_per_s == pytest.approx(23 / 2.2)
    # Latencies are of the requests that ended well only.
    assert summary.ttft.count == 2
    assert summary.ttft.p50 == pytest.approx(30.0)
    assert summary.itl.max == pytest.approx(20.0)
    assert summary.latency.max == pytest.approx(200.0)
    assert summary.service.count == 2
    assert summary.statuses == {"200": 3, "429": 1, "none": 1}
    assert summary.errors == {"broken_stream": 1, "connect": 1, "http_429": 1}
    assert summary.error_examples["http_429"] == "slow down"
    assert summary.by_endpoint == {"/v1/chat/completions": 5}


def test_summary_of_nothing() -> None:
    summary = summarize([], started=0.0)
    assert summary.sent == 0
    assert summary.error_rate == 0.0
    assert summary.ttft.count == 0
