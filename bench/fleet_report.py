"""The fleet benchmark's numbers: per-strategy summaries, the slowdown shares, targets, tables.

Pure functions of what the client and the replicas' counters reported, so the smoke tests check
them with made-up numbers; :func:`print_report` is the only part that writes.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.fleet_client import Result
from bench.stats import percentile

Verdict = dict[str, Any]

BASELINE = "round_robin"
AFFINITY = "prefix_affinity"
TTFT_P50_RATIO = 5.0
TTFT_P99_RATIO = 3.0
"""Issue 14: on every workload, prefix affinity keeps TTFT p50 at least 5× and p99 at least 3×
lower than round robin's."""
SLOWDOWN_KEEP = 0.5
"""The slowed replica "loses most of its new traffic": its share after is at most half of
its share before."""


@dataclass(frozen=True, slots=True)
class Replica:
    """One replica's counters over the measured part of a run (peaks over the whole run)."""

    name: str
    slots: int
    requests: int = 0
    prefix_queries: float = 0.0
    """Prompt tokens looked up in the prefix cache (vLLM's ``prefix_cache_queries``)."""
    prefix_hits: float = 0.0
    queued_peak: int = 0
    peak_running: int = 0
    peak_in_flight: int = 0
    """The most requests the replica had at once, running or queued: what the gateway sent it."""

    @property
    def hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else math.nan

    @property
    def peak(self) -> int:
        """The most requests it held at once (running, or queued for a slot)."""
        return max(self.peak_running, self.peak_in_flight)


@dataclass(frozen=True, slots=True)
class StrategyRun:
    """What one strategy did with the same workload."""

    strategy: str
    sent: int = 0
    completed: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    ttft_p50_ms: float = math.nan
    ttft_p99_ms: float = math.nan
    total_p50_ms: float = math.nan
    send_lag_p99_ms: float = math.nan
    tenant_affinity: float = math.nan
    """Share of a tenant's requests served by the replica that served it most (mean over the
    tenants): 1.0 is perfect affinity, 1 / replicas is none."""
    replicas: tuple[Replica, ...] = ()
    not_run: str | None = None
    """Why the strategy has no numbers (for example: the gateway refused its config)."""

    @property
    def hit_rate(self) -> float:
        queries = sum(r.prefix_queries for r in self.replicas)
        return sum(r.prefix_hits for r in self.replicas) / queries if queries else math.nan

    @property
    def max_queue(self) -> int:
        return max((r.queued_peak for r in self.replicas), default=0)

    @property
    def peak_running(self) -> int:
        return max((r.peak_running for r in self.replicas), default=0)

    @property
    def peak_in_flight(self) -> int:
        return max((r.peak for r in self.replicas), default=0)

    @property
    def over_slots(self) -> int:
        """How far the busiest replica's peak in flight (running or queued) went above its slots
        (0 or less: never)."""
        return max((r.peak - r.slots for r in self.replicas if r.slots), default=0)


def summarize(
    strategy: str, results: Sequence[Result], replicas: Sequence[Replica], *, warmup: float
) -> StrategyRun:
    """Latencies of the requests scheduled after ``warmup`` (the caches start cold), errors of
    all of them."""
    measured = [r for r in results if r.scheduled >= warmup]
    ok = [r for r in measured if r.error is None and r.ttft is not None]
    ttft = [r.ttft * 1000 for r in ok if r.ttft is not None]
    total = [r.total * 1000 for r in ok if r.total is not None]
    errors = Counter(r.error for r in results if r.error is not None)
    return StrategyRun(
        strategy=strategy,
        sent=len(results),
        completed=sum(1 for r in results if r.error is None),
        errors=sum(errors.values()),
        error_kinds=dict(errors),
        ttft_p50_ms=percentile(ttft, 50),
        ttft_p99_ms=percentile(ttft, 99),
        total_p50_ms=percentile(total, 50),
        send_lag_p99_ms=percentile([r.send_lag * 1000 for r in results], 99),
        tenant_affinity=tenant_affinity(ok),
        replicas=tuple(replicas),
    )


def tenant_affinity(results: Iterable[Result]) -> float:
    """Mean over tenants of the share of its requests its most used replica served."""
    by_tenant: dict[int, Counter[str]] = {}
    for result in results:
        if result.replica is not None:
            by_tenant.setdefault(result.tenant, Counter())[result.replica] += 1
    shares = [max(c.values()) / sum(c.values()) for c in by_tenant.values()]
    return sum(shares) / len(shares) if shares else math.nan


@dataclass(frozen=True, slots=True)
class Slowdown:
    """The slowed replica's share of new requests before and after its ``itl`` was multiplied."""

    replica: str
    factor: float
    at: float
    """Run time of the slowdown, in seconds."""
    window: float
    share_before: float = math.nan
    share_after: float = math.nan
    share_settled: float = math.nan
    """Its share in the second half of the window after: where the balancer settled."""
    timeline: tuple[tuple[float, float], ...] = ()
    """(time, the slowed replica's share of the requests that arrived since the previous
    sample), for the reader to see how fast the share fell."""
    rate: float = math.nan
    """Arrivals per second of the scenario."""
    prefill: bool = False
    """Whether prompts cost prefill in the scenario."""
    slower: float = math.nan
    """How many times longer the slowed replica holds a slot per request (modelled)."""
    sent: int = 0
    errors: int = 0
    not_run: str | None = None


def count_at(samples: Sequence[tuple[float, int]], when: float) -> int:
    """A cumulative counter's value at ``when``: the last sample taken at or before it."""
    value = samples[0][1] if samples else 0
    for at, count in samples:
        if at > when:
            break
        value = count
    return value


def share_between(
    samples: Mapping[str, Sequence[tuple[float, int]]], replica: str, start: float, end: float
) -> float:
    """``replica``'s share of the requests all replicas received in ``[start, end]``, from their
    cumulative request counters sampled as (time, count)."""
    new = {name: count_at(s, end) - count_at(s, start) for name, s in samples.items()}
    total = sum(new.values())
    return new.get(replica, 0) / total if total else math.nan


def slowdown_result(
    samples: Mapping[str, Sequence[tuple[float, int]]],
    replica: str,
    *,
    factor: float,
    at: float,
    window: float,
) -> Slowdown:
    """Shares in the ``window`` seconds before and after ``at``, and the timeline around it."""
    times = sorted({t for s in samples.values() for t, _ in s})
    timeline = tuple(
        (later, share_between(samples, replica, earlier, later))
        for earlier, later in itertools.pairwise(times)
    )
    return Slowdown(
        replica=replica,
        factor=factor,
        at=at,
        window=window,
        share_before=share_between(samples, replica, at - window, at),
        share_after=share_between(samples, replica, at, at + window),
        share_settled=share_between(samples, replica, at + window / 2, at + window),
        timeline=timeline,
    )


def _check(name: str, goal: str, value: float, met: bool | None, unit: str = "") -> Verdict:
    return {"target": name, "goal": goal, "value": value, "unit": unit, "met": met}


def verdicts(runs: Mapping[str, StrategyRun], *, workload: str = "") -> list[Verdict]:
    """The issues' targets for one workload's runs; ``met`` is None when what they compare was
    not run (a strategy the gateway refused). ``workload`` prefixes the targets' names."""
    base, affinity = runs.get(BASELINE), runs.get(AFFINITY)
    both = base is not None and affinity is not None and not (base.not_run or affinity.not_run)
    p50 = p99 = hits = math.nan
    if both and base is not None and affinity is not None:
        p50 = base.ttft_p50_ms / affinity.ttft_p50_ms
        p99 = base.ttft_p99_ms / affinity.ttft_p99_ms
        hits = (affinity.hit_rate - base.hit_rate) * 100
    ran = [run for run in runs.values() if not run.not_run]
    over = max((run.over_slots for run in ran), default=0)
    label = f"{workload}: " if workload else ""
    checks = [
        _check(
            f"{AFFINITY} TTFT p50 lower than {BASELINE}'s", f">= {TTFT_P50_RATIO:g}×", p50,
            None if math.isnan(p50) else p50 >= TTFT_P50_RATIO, "×",
        ),
        _check(
            f"{AFFINITY} TTFT p99 lower than {BASELINE}'s", f">= {TTFT_P99_RATIO:g}×", p99,
            None if math.isnan(p99) else p99 >= TTFT_P99_RATIO, "×",
        ),
        _check(
            f"{AFFINITY} prefix cache hit rate above {BASELINE}'s", "> 0 points", hits,
            None if math.isnan(hits) else hits > 0, "points",
        ),
        _check(
            "no replica above its slots (most in flight minus slots)", "<= 0", float(over),
            over <= 0 if ran else None,
        ),
    ]  # fmt: skip
    for check in checks:
        check["target"] = label + check["target"]
    return checks


def slowdown_verdicts(slowdown: Slowdown | None) -> list[Verdict]:
    """The slowdown target; ``met`` is None without ``--slowdown``."""
    kept = math.nan
    if slowdown is not None and not slowdown.not_run and slowdown.share_before:
        kept = slowdown.share_after / slowdown.share_before
    return [
        _check(
            "slowed replica's share of new requests, 5 s after / 5 s before (load_aware)",
            f"<= {SLOWDOWN_KEEP:g}",
            kept,
            None if math.isnan(kept) else kept <= SLOWDOWN_KEEP,
            "×",
        )
    ]


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0%}"


def _ratio(base: float, value: float) -> str:
    return "-" if math.isnan(base) or math.isnan(value) or not value else f"{base / value:.1f}×"


def _print_tables(console: Console, workload: str, runs: Mapping[str, StrategyRun]) -> None:
    """One workload's strategy table and per-replica table."""
    title = f"Workload {workload}: strategies (same requests, caches flushed before each)"
    table = Table(title=title if workload else title.split(": ", 1)[1].capitalize())
    columns = ["strategy", "TTFT p50 ms", "TTFT p99 ms", f"p50 / p99 vs {BASELINE}"]
    columns += ["total p50 ms", "hit rate", "max queue", "peak in flight / slots"]
    columns += ["tenant affinity", "done", "errors"]
    for column in columns:
        table.add_column(column, justify="left" if column == "strategy" else "right")
    base = runs.get(BASELINE)
    for run in runs.values():
        if run.not_run:
            table.add_row(run.strategy, f"[yellow]not run: {run.not_run}[/]")
            continue
        slots = max((r.slots for r in run.replicas), default=0)
        ratios = "-"
        if base is not None and not base.not_run:
            p50 = _ratio(base.ttft_p50_ms, run.ttft_p50_ms)
            ratios = f"{p50} / {_ratio(base.ttft_p99_ms, run.ttft_p99_ms)}"
        table.add_row(
            run.strategy, _ms(run.ttft_p50_ms), _ms(run.ttft_p99_ms), ratios,
            _ms(run.total_p50_ms), _pct(run.hit_rate), str(run.max_queue),
            f"{run.peak_in_flight} / {slots or '∞'}", _pct(run.tenant_affinity),
            f"{run.completed}/{run.sent}",
            str(run.errors) + (f" {run.error_kinds}" if run.errors else ""),
        )  # fmt: skip
    console.print(table)

    per_replica = Table(
        title="Per replica: requests · hit rate · max queue · peak running · peak in flight"
    )
    per_replica.add_column("strategy")
    names = [r.name for run in runs.values() for r in run.replicas]
    for name in dict.fromkeys(names):
        per_replica.add_column(name, justify="right")
    for run in runs.values():
        if not run.not_run:
            cells = [
                f"{r.requests} · {_pct(r.hit_rate)} · q{r.queued_peak} · {r.peak_running}"
                f" · {r.peak}"
                for r in run.replicas
            ]
            per_replica.add_row(run.strategy, *cells)
    console.print(per_replica)


def print_report(
    console: Console,
    runs: Mapping[str, Mapping[str, StrategyRun]],
    checks: Sequence[Verdict],
    slowdown: Slowdown | None,
) -> None:
    """Per workload (``runs``: workload → strategy → run) the strategy table and the
    per-replica table; then the slowdown shares and the verdicts."""
    for workload, by_strategy in runs.items():
        if by_strategy:
            _print_tables(console, workload, by_strategy)

    if slowdown is not None:
        if slowdown.not_run:
            console.print(f"slowdown: [yellow]not run: {slowdown.not_run}[/]")
        else:
            console.print(
                f"slowdown (load_aware, {slowdown.rate:.0f} req/s, prefill "
                f"{'on' if slowdown.prefill else 'off'}): {slowdown.replica} itl "
                f"×{slowdown.factor:g} at {slowdown.at:g} s, so ×{slowdown.slower:.2f} time per "
                f"request; its share of new requests {_pct(slowdown.share_before)} in the "
                f"{slowdown.window:g} s before, {_pct(slowdown.share_after)} in the "
                f"{slowdown.window:g} s after ({_pct(slowdown.share_settled)} in its second "
                f"half); {slowdown.errors} errors in {slowdown.sent}",
                highlight=False,
            )
            steps = " ".join(f"{at:.1f}s:{_pct(share)}" for at, share in slowdown.timeline)
            console.print(f"  share per sample: {steps}", highlight=False)

    marks = {True: "[green]MET[/]   ", False: "[red]MISSED[/]", None: "[yellow]NOT RUN[/]"}
    for check in checks:
        value = "-" if math.isnan(check["value"]) else f"{check['value']:.2f}"
        console.print(
            f"  {marks[check['met']]} {check['target']}: {value}{check['unit']} "
            f"(goal {check['goal']})"
        )
