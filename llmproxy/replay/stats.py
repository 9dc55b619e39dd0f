"""The figures of a run: percentiles of the latencies, rates, and the status and error counts.

Latency distributions (TTFT, inter-token latency, total latency) are of the requests that ended
well: a refused request has no time to first token, and a fast 429 would make the server look
quick. Failures are counted apart, by status and error class. Rates are over the run's wall time,
from the first scheduled send to the last answer's end.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmproxy.replay.sample import Sample


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of *sorted* values, interpolated linearly between the
    two nearest ranks (numpy's default); NaN for no values.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    """
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


PERCENTILES = (50, 90, 99)


@dataclass(frozen=True, slots=True)
class Distribution:
    """Count, mean, p50/p90/p99 and max of a set of durations, in milliseconds."""

    count: int = 0
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None

    @classmethod
    def of_seconds(cls, values: Iterable[float]) -> Distribution:
        ordered = sorted(value * 1000 for value in values)
        if not ordered:
            return cls()
        p50, p90, p99 = (percentile(ordered, q) for q in PERCENTILES)
        return cls(len(ordered), math.fsum(ordered) / len(ordered), p50, p90, p99, ordered[-1])

    def as_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean": _round(self.mean),
            "p50": _round(self.p50),
            "p90": _round(self.p90),
            "p99": _round(self.p99),
            "max": _round(self.max),
        }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True, slots=True)
class Summary:
    """Everything the report shows about the requests of one run."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    wall_s: float = 0.0
    send_rate: float | None = None
    """Requests sent per second, between the first and the last send."""
    request_rate: float | None = None
    """Answers (good or not) per second of wall time."""
    output_tokens: int = 0
    tokens_per_s: float | None = None
    ttft: Distribution = field(default_factory=Distribution)
    itl: Distribution = field(default_factory=Distribution)
    latency: Distribution = field(default_factory=Distribution)
    service: Distribution = field(default_factory=Distribution)
    """Total latency from the actual send, not the schedule: what a closed-loop tool reports.
    Apart from :attr:`latency` only when the client sent late."""
    send_lag: Distribution = field(default_factory=Distribution)
    """How late the client sent requests against their schedule (early sends count as 0)."""
    statuses: dict[str, int] = field(default_factory=dict)
    """Answers by HTTP status; ``"none"`` for requests that got no response."""
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)
    """The first detail seen of each error class, to show what it was."""
    by_endpoint: dict[str, int] = field(default_factory=dict)
    by_model: dict[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.failed / self.sent if self.sent else 0.0


def summarize(samples: Sequence[Sample], started: float) -> Summary:
    """The figures of ``samples``, a run that began at ``started`` (perf_counter seconds)."""
    if not samples:
        return Summary()
    ok = [sample for sample in samples if sample.ok]
    wall = max(max(sample.end for sample in samples) - started, 1e-9)
    sent = sorted(sample.sent for sample in samples)
    send_span = sent[-1] - sent[0]
    tokens = sum(sample.output_tokens for sample in samples)
    return Summary(
        sent=len(samples),
        ok=len(ok),
        failed=len(samples) - len(ok),
        wall_s=wall,
        send_rate=(len(sent) - 1) / send_span if send_span > 0 else None,
        request_rate=len(samples) / wall,
        output_tokens=tokens,
        tokens_per_s=tokens / wall,
        ttft=Distribution.of_seconds(s.ttft for s in ok if s.ttft is not None),
        itl=Distribution.of_seconds(s.mean_gap for s in ok if s.mean_gap is not None),
        latency=Distribution.of_seconds(s.latency for s in ok),
        service=Distribution.of_seconds(s.end - s.sent for s in ok),
        send_lag=Distribution.of_seconds(max(0.0, s.send_lag) for s in samples),
        statuses=_sorted_counts(str(s.status) if s.status else "none" for s in samples),
        errors=_sorted_counts(s.error for s in samples if s.error is not None),
        error_examples=_first_details(samples),
        by_endpoint=_sorted_counts(s.endpoint for s in samples),
        by_model=_sorted_counts(s.model or "(none)" for s in samples),
    )


def _first_details(samples: Iterable[Sample]) -> dict[str, str]:
    examples: dict[str, str] = {}
    for sample in samples:
        if sample.error is not None and sample.error not in examples:
            examples[sample.error] = sample.detail or ""
    return examples


def _sorted_counts(values: Iterable[str]) -> dict[str, int]:
    """Counts, the most frequent first (ties by name), so reports are stable."""
    counts = Counter(values)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
