"""Two runs side by side: values, differences, verdicts, and the files they come from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmproxy.replay.compare import (
    METRICS,
    CompareError,
    Row,
    Verdict,
    compare,
    comparison_document,
    load_document,
    setting_differences,
)
from llmproxy.replay.report import REPORT_FORMAT


def _document(
    ttft_p50: float, rps: float, error_rate: float = 0.0, **settings: Any
) -> dict[str, Any]:
    return {
        "llmproxy_replay": REPORT_FORMAT,
        "settings": {"target": "http://a", "rate": 10.0, **settings},
        "results": {
            "sent": 100,
            "request_rate": rps,
            "error_rate": error_rate,
            "ttft_ms": {"p50": ttft_p50, "p99": None},
        },
        "client": {"loop_lag_ms": {"p99": 0.5}},
    }


def _row(rows: list[Row], label: str) -> Row:
    return next(row for row in rows if row.metric.label == label)


def test_differences_absolute_and_percent() -> None:
    rows = compare(_document(100.0, 50.0), _document(80.0, 55.0))
    ttft = _row(rows, "TTFT p50 ms")
    assert (ttft.a, ttft.b) == (100.0, 80.0)
    assert ttft.delta == pytest.approx(-20.0)
    assert ttft.percent == pytest.approx(-20.0)
    assert ttft.verdict is Verdict.BETTER  # lower latency
    rps = _row(rows, "requests/s")
    assert rps.percent == pytest.approx(10.0)
    assert rps.verdict is Verdict.BETTER  # higher throughput


def test_worse_same_and_unknown() -> None:
    rows = compare(_document(100.0, 50.0, 0.01), _document(100.5, 40.0, 0.05))
    assert _row(rows, "TTFT p50 ms").verdict is Verdict.SAME  # under 1 %: noise
    assert _row(rows, "requests/s").verdict is Verdict.WORSE
    assert _row(rows, "error rate").verdict is Verdict.WORSE
    p99 = _row(rows, "TTFT p99 ms")
    assert (p99.delta, p99.percent, p99.verdict) == (None, None, Verdict.UNKNOWN)
    assert _row(rows, "client loop lag p99 ms").verdict is Verdict.SAME


def test_percent_of_a_zero_baseline_is_unknown() -> None:
    row = _row(compare(_document(1, 1, 0.0), _document(1, 1, 0.2)), "error rate")
    assert row.delta == pytest.approx(0.2)
    assert row.percent is None
    assert row.verdict is Verdict.WORSE


def test_every_metric_is_a_row() -> None:
    assert len(compare({}, {})) == len(METRICS)


def test_setting_differences() -> None:
    a, b = _document(1, 1), _document(1, 1, rate=20.0, target="http://b")
    assert setting_differences(a, b) == [
        ("rate", "10.0", "20.0"),
        ("target", "http://a", "http://b"),
    ]
    assert setting_differences(a, a) == []


def test_comparison_document() -> None:
    doc = comparison_document(_document(100.0, 50.0), _document(80.0, 50.0), ("a.json", "b.json"))
    ttft = next(m for m in doc["metrics"] if m["metric"] == "TTFT p50 ms")
    assert ttft == {
        "metric": "TTFT p50 ms",
        "a": 100.0,
        "b": 80.0,
        "delta": -20.0,
        "percent": -20.0,
        "verdict": "better",
    }
    assert (doc["a"], doc["b"], doc["settings"]) == ("a.json", "b.json", [])


def test_load_document(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_document(1, 1)))
    assert load_document(good)["results"]["sent"] == 100


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not JSON"),
        ("[1]", "not a report"),
        ('{"llmproxy_replay": 99}', "format 99 unsupported"),
    ],
)
def test_load_document_refuses(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(CompareError, match=message):
        load_document(path)
    with pytest.raises(CompareError, match="No such file"):
        load_document(tmp_path / "missing.json")
