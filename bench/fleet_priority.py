"""The fleet benchmark's priority scenario (``python -m bench.fleet --priority``).

Issue 9's target: "high-priority keys keep their p99 time to first token within 20 % of an
unloaded fleet while low-priority traffic saturates it". The gateway runs with auth on (a
``static`` provider with ``sk-high``, priority 0, and ``sk-low``, priority 10), every backend at
``max_in_flight`` = the mock's slots (so the excess waits in the gateway's admission queue, best
priority first, not in the GPUs' FIFO queues) with ``send_priority`` on, and ``load_aware``.

Phase 1, unloaded: a Poisson stream of high-priority requests alone. Phase 2, saturated: the same
high-priority stream plus low-priority requests at ``LOW_LOAD`` (150 %) of the fleet's capacity,
open loop, so the admission queue keeps growing. Every prompt starts with its own serial number
(no shared prefix, no cache hit) and has the same length, so a request's time to first token is
its prefill plus whatever it waited for a slot: a fair test of priority. The configs, prompts,
summaries and the verdict are pure; :func:`run` is the only part that does I/O.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import fleet_client as client
from bench.fleet_targets import Fleet, Replica
from bench.fleet_workload import Turn, arrival_times, service_seconds
from bench.stats import percentile

HIGH_KEY, HIGH_PRIORITY = "sk-high", 0
LOW_KEY, LOW_PRIORITY = "sk-low", 10
STRATEGY = "load_aware"
HIGH_RATE = 2.0
"""High-priority arrivals per second, in both phases."""
LOW_LOAD = 1.5
"""Low-priority arrivals as a share of the fleet's capacity (slots / service time)."""
PROMPT_CHARS = 1600
"""Every prompt's length: 400 tokens, so 0.2 s of prefill at 0.5 ms per token."""
P99_RATIO = 1.2
"""High-priority p99 TTFT under saturation may be at most this times the unloaded one."""
ADMISSION_WAITING = 10_000
ADMISSION_TIMEOUT = 60.0
RESERVED_SLOTS = 1

_WORDS = ("alpha", "bravo", "delta", "echo", "gamma", "kilo", "lima", "omega", "sigma", "tango")


def render_config(listen_port: int, replicas: Sequence[Replica], slots: int) -> str:
    """The scenario's gateway config (JSON is YAML): two static keys of different priority,
    backends capped at their slots with vLLM's ``priority`` field sent, a large admission queue
    with one slot per replica reserved for the high-priority key,
    and nothing that is not routing or auth (no usage, admin, config watching or health probes).
    """
    keys = [
        {"key": HIGH_KEY, "name": "high", "priority": HIGH_PRIORITY},
        {"key": LOW_KEY, "name": "low", "priority": LOW_PRIORITY},
    ]
    config: dict[str, object] = {
        "listen": f"127.0.0.1:{listen_port}",
        "server": {"workers": 1, "watch_config": False},
        "backends": [
            {"url": r.url, "name": r.name, "max_in_flight": slots, "send_priority": True}
            for r in replicas
        ],
        "routing": {
            "load_balance_strategy": STRATEGY,
            "admission": {
                "max_waiting": ADMISSION_WAITING,
                "timeout": ADMISSION_TIMEOUT,
                # One slot per replica kept for the high-priority key: without preemption it
                # would otherwise wait for a low-priority generation to end.
                "reserved_slots": RESERVED_SLOTS,
                "reserved_priority": HIGH_PRIORITY,
            },
        },
        "auth": {
            "enabled": True,
            "pipeline": [{"name": "bench", "type": "static", "keys": keys}],
        },
        "usage": {"enabled": False},
        "admin": {"enabled": False},
        "health_check": {"enabled": False},
        "logging": {"level": "warning"},
    }
    return json.dumps(config, indent=2) + "\n"


@dataclass(frozen=True, slots=True)
class PriorityPlan:
    """The scenario's sizing, printed so the arithmetic can be redone."""

    prefill_per_token: float
    prompt_tokens: int
    service: float
    """Seconds a request holds a slot (prefill + decode)."""
    capacity: float
    """Requests per second the fleet completes when all slots are busy."""
    high_rate: float
    low_rate: float


def make_plan(fleet: Fleet, *, prefill_per_token: float | None = None) -> PriorityPlan:
    prefill = fleet.prefill_per_token if prefill_per_token is None else prefill_per_token
    tokens = prompt(0, "x").prompt_tokens
    service = service_seconds(
        prompt_tokens=tokens, tokens=fleet.tokens, itl=fleet.itl, prefill_per_token=prefill
    )
    capacity = fleet.replicas * fleet.slots / service
    return PriorityPlan(prefill, tokens, service, capacity, HIGH_RATE, LOW_LOAD * capacity)


def describe(plan: PriorityPlan, fleet: Fleet) -> str:
    prefill = plan.prefill_per_token * plan.prompt_tokens
    return (
        f"priority: prompts of {plan.prompt_tokens} tokens, no shared prefix (prefill "
        f"{prefill:.2f} s + decode {fleet.itl * (fleet.tokens - 1):.2f} s = {plan.service:.2f} s "
        f"per slot); capacity {fleet.replicas * fleet.slots} slots / {plan.service:.2f} s = "
        f"{plan.capacity:.1f} req/s; high ({HIGH_KEY}, priority {HIGH_PRIORITY}) "
        f"{plan.high_rate:g} req/s, low ({LOW_KEY}, priority {LOW_PRIORITY}) "
        f"{plan.low_rate:.1f} req/s ({LOW_LOAD:.0%}) in phase 2; {STRATEGY}, max_in_flight "
        f"{fleet.slots} per backend; saturated, a slot frees every "
        f"{plan.service / (fleet.replicas * fleet.slots) * 1000:.0f} ms on average"
    )


def prompt(serial: int, kind: str) -> Turn:
    """A one-message request of exactly ``PROMPT_CHARS`` characters that opens with its own
    serial number, so no two requests share a prefix cache block."""
    rng = random.Random(f"{kind}:{serial}")
    text = f"Request {serial} ({kind}):"
    while len(text) < PROMPT_CHARS:
        text += " " + rng.choice(_WORDS)
    return Turn(tenant=0, conversation=serial, turn=1, messages=(("user", text[:PROMPT_CHARS]),))


def requests(kind: str, rate: float, duration: float, seed: int) -> list[tuple[float, Turn]]:
    """Poisson arrivals of distinct prompts of one kind (``high`` or ``low``)."""
    times = arrival_times(rate, duration, seed=seed if kind == "high" else seed + 1_000_003)
    return [(at, prompt(n, kind)) for n, at in enumerate(times)]


@dataclass(frozen=True, slots=True)
class Latency:
    """TTFT of one class of requests in one phase (those scheduled after the warm-up)."""

    sent: int = 0
    completed: int = 0
    errors: int = 0
    rejected: int = 0
    """Answers with HTTP 503 (admission queue full or wait timed out)."""
    error_kinds: dict[str, int] = dataclasses.field(default_factory=dict)
    ttft_p50_ms: float = math.nan
    ttft_p99_ms: float = math.nan
    ttft_max_ms: float = math.nan
    samples: int = 0


def latency(results: Sequence[client.Result], *, warmup: float) -> Latency:
    ok = [
        r.ttft * 1000
        for r in results
        if r.scheduled >= warmup and r.error is None and r.ttft is not None
    ]
    errors = Counter(r.error for r in results if r.error is not None)
    return Latency(
        sent=len(results),
        completed=sum(1 for r in results if r.error is None),
        errors=sum(errors.values()),
        rejected=errors.get("HTTP 503", 0),
        error_kinds=dict(errors),
        ttft_p50_ms=percentile(ok, 50),
        ttft_p99_ms=percentile(ok, 99),
        ttft_max_ms=max(ok, default=math.nan),
        samples=len(ok),
    )


@dataclass(frozen=True, slots=True)
class PriorityRun:
    """Both phases of the scenario."""

    unloaded_high: Latency = Latency()
    saturated_high: Latency = Latency()
    saturated_low: Latency = Latency()
    slots: int = 0
    peak_running: int = 0
    """Most requests any replica ran at once, over both phases."""
    queued_peak: int = 0
    """Longest queue inside any replica (0: the gateway held all the excess)."""
    plan: PriorityPlan | None = None
    not_run: str | None = None

    @property
    def p99_ratio(self) -> float:
        base = self.unloaded_high.ttft_p99_ms
        loaded = self.saturated_high.ttft_p99_ms
        if math.isnan(base) or math.isnan(loaded) or base <= 0:
            return math.nan
        return loaded / base


def verdicts(run: PriorityRun | None) -> list[dict[str, Any]]:
    """The priority target and the slots check of this scenario; ``met`` is None when it was not
    run or measured nothing."""
    ratio = math.nan if run is None or run.not_run else run.p99_ratio
    ran = run is not None and not run.not_run
    over = run.peak_running - run.slots if run is not None and ran else 0
    return [
        {
            "target": "high-priority TTFT p99 saturated / unloaded (priority scenario)",
            "goal": f"<= {P99_RATIO:g}×",
            "value": ratio,
            "unit": "×",
            "met": None if math.isnan(ratio) else ratio <= P99_RATIO,
        },
        {
            "target": "no replica above its slots (priority scenario; most running minus slots)",
            "goal": "<= 0",
            "value": float(over),
            "unit": "",
            "met": over <= 0 if ran else None,
        },
    ]


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def print_table(console: Console, run: PriorityRun) -> None:
    if run.not_run:
        console.print(f"priority: [yellow]not run: {run.not_run}[/]", highlight=False)
        return
    table = Table(title="Priority (high = sk-high priority 0, low = sk-low priority 10)")
    for column in ("phase", "class", "TTFT p50 ms", "TTFT p99 ms", "TTFT max ms", "done"):
        table.add_column(column, justify="left" if column in ("phase", "class") else "right")
    table.add_column("errors (503)", justify="right")
    rows = [
        ("1 unloaded", "high", run.unloaded_high),
        ("2 saturated", "high", run.saturated_high),
        ("2 saturated", "low", run.saturated_low),
    ]
    for phase, kind, numbers in rows:
        table.add_row(
            phase, kind, _ms(numbers.ttft_p50_ms), _ms(numbers.ttft_p99_ms),
            _ms(numbers.ttft_max_ms), f"{numbers.completed}/{numbers.sent}",
            f"{numbers.errors} ({numbers.rejected})",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"  replicas: peak running {run.peak_running} / {run.slots} slots, longest queue inside "
        f"a replica {run.queued_peak}",
        highlight=False,
    )


async def run(
    url: str,
    replicas: Sequence[Replica],
    fleet: Fleet,
    plan: PriorityPlan,
    *,
    duration: float,
    warmup: float,
    seed: int,
) -> PriorityRun:
    """Phase 1 then phase 2 through the gateway at ``url``, caches flushed and counters zeroed
    before each; the replicas' prefill knob is set to the plan's and restored after."""
    urls = [r.url for r in replicas]
    high = requests("high", plan.high_rate, duration, seed)
    low = requests("low", plan.low_rate, duration, seed)
    stats: list[dict[str, Any]] = []
    async with client.client_session() as session:

        async def prepare() -> None:
            knobs = {"itl": fleet.itl, "prefill_per_token": plan.prefill_per_token}
            await asyncio.gather(*(client.change_settings(session, u, **knobs) for u in urls))
            await asyncio.gather(*(client.reset(session, u, flush_cache=True) for u in urls))

        async def collect() -> None:
            stats.extend(await asyncio.gather(*(client.mock_stats(session, u) for u in urls)))

        await prepare()
        start = time.perf_counter() + 0.5
        unloaded = await client.drive(session, url, high, start=start, api_key=HIGH_KEY)
        await collect()
        await prepare()
        start = time.perf_counter() + 0.5
        saturated_high, saturated_low = await asyncio.gather(
            client.drive(session, url, high, start=start, api_key=HIGH_KEY),
            client.drive(session, url, low, start=start, api_key=LOW_KEY),
        )
        await collect()
        knobs = {"itl": fleet.itl, "prefill_per_token": fleet.prefill_per_token}
        await asyncio.gather(*(client.change_settings(session, u, **knobs) for u in urls))
    return PriorityRun(
        unloaded_high=latency(unloaded, warmup=warmup),
        saturated_high=latency(saturated_high, warmup=warmup),
        saturated_low=latency(saturated_low, warmup=warmup),
        slots=fleet.slots,
        peak_running=max((s["peak_running"] for s in stats), default=0),
        queued_peak=max((s["queued_peak"] for s in stats), default=0),
        plan=plan,
    )
