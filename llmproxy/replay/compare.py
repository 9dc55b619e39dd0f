"""Two runs side by side: the same figures, their difference, absolute and in percent.

A change is judged by the direction that is good for users — lower latency and error rate,
higher throughput — so the table can colour what got better and what got worse. Differences
under :data:`NOISE` percent are called the same: run-to-run noise is at least that large. The
settings that differ between the runs are listed too, since a comparison of runs made at
different loads says little about the server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from llmproxy.replay.report import REPORT_FORMAT

NOISE: Final = 1.0
"""Percent below which a difference is shown as no change."""


class Better(StrEnum):
    """Which direction of a metric is good for users."""

    LOWER = "lower"
    HIGHER = "higher"
    NEITHER = "neither"


class Verdict(StrEnum):
    BETTER = "better"
    WORSE = "worse"
    SAME = "same"
    UNKNOWN = "unknown"


class Unit(StrEnum):
    """How a metric's values are shown."""

    COUNT = "count"
    RATE = "rate"
    RATIO = "ratio"
    """A 0..1 ratio, shown as a percentage."""
    MS = "ms"


@dataclass(frozen=True, slots=True)
class Metric:
    path: tuple[str, ...]
    """Where the value is in a report document."""
    label: str
    better: Better
    unit: Unit


def _latency(key: str, name: str) -> list[Metric]:
    return [
        Metric(("results", key, q), f"{name} {q} ms", Better.LOWER, Unit.MS)
        for q in ("p50", "p90", "p99", "max")
    ]


METRICS: Final = (
    Metric(("results", "sent"), "requests sent", Better.NEITHER, Unit.COUNT),
    Metric(("results", "request_rate"), "requests/s", Better.HIGHER, Unit.RATE),
    Metric(("results", "send_rate"), "send rate/s", Better.NEITHER, Unit.RATE),
    Metric(("results", "tokens_per_s"), "tokens/s", Better.HIGHER, Unit.RATE),
    Metric(("results", "error_rate"), "error rate", Better.LOWER, Unit.RATIO),
    *_latency("ttft_ms", "TTFT"),
    *_latency("itl_ms", "ITL"),
    *_latency("latency_ms", "total"),
    Metric(("client", "loop_lag_ms", "p99"), "client loop lag p99 ms", Better.NEITHER, Unit.MS),
)


@dataclass(frozen=True, slots=True)
class Row:
    """One metric of both runs."""

    metric: Metric
    a: float | None
    b: float | None

    @property
    def delta(self) -> float | None:
        """``b - a``; None when either is unknown."""
        if self.a is None or self.b is None:
            return None
        return self.b - self.a

    @property
    def percent(self) -> float | None:
        """``(b - a) / a`` in percent; None when unknown or ``a`` is 0."""
        delta = self.delta
        if delta is None or not self.a:
            return None
        return delta / abs(self.a) * 100

    @property
    def verdict(self) -> Verdict:
        delta, percent = self.delta, self.percent
        if delta is None:
            return Verdict.UNKNOWN
        if delta == 0 or (percent is not None and abs(percent) < NOISE):
            return Verdict.SAME
        if self.metric.better is Better.NEITHER:
            return Verdict.UNKNOWN
        lower = delta < 0
        return Verdict.BETTER if lower == (self.metric.better is Better.LOWER) else Verdict.WORSE


class CompareError(Exception):
    """A file that is not a replay report this version can read."""


def load_document(path: Path) -> dict[str, Any]:
    """Read a report written by ``llmproxy replay --json`` or ``--output PATH``."""
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise CompareError(f"{path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompareError(f"{path}: not JSON ({exc})") from None
    if not isinstance(document, dict) or "llmproxy_replay" not in document:
        raise CompareError(f"{path}: not a report of llmproxy replay --json or --output")
    if document["llmproxy_replay"] != REPORT_FORMAT:
        raise CompareError(
            f"{path}: report format {document['llmproxy_replay']!r} unsupported "
            f"(this reads {REPORT_FORMAT})"
        )
    return document


def _value(document: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = document
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    if isinstance(node, bool) or not isinstance(node, int | float):
        return None
    return float(node)


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Row]:
    """Every metric of :data:`METRICS` in both runs."""
    return [Row(metric, _value(a, metric.path), _value(b, metric.path)) for metric in METRICS]


def setting_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(setting, value in a, value in b)`` for each setting that differs, by name."""
    settings_a, settings_b = a.get("settings") or {}, b.get("settings") or {}
    out = []
    for key in sorted(set(settings_a) | set(settings_b)):
        if settings_a.get(key) != settings_b.get(key):
            out.append((key, _show(settings_a.get(key)), _show(settings_b.get(key))))
    return out


def _show(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def comparison_document(
    a: Mapping[str, Any], b: Mapping[str, Any], names: tuple[str, str]
) -> dict[str, Any]:
    """The comparison as JSON-ready data (``--compare A B --json`` or ``--output PATH``)."""
    return {
        "a": names[0],
        "b": names[1],
        "metrics": [
            {
                "metric": row.metric.label,
                "a": row.a,
                "b": row.b,
                "delta": None if row.delta is None else round(row.delta, 6),
                "percent": None if row.percent is None else round(row.percent, 3),
                "verdict": row.verdict.value,
            }
            for row in compare(a, b)
        ],
        "settings": [
            {"setting": key, "a": va, "b": vb} for key, va, vb in setting_differences(a, b)
        ],
    }
