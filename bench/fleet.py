"""``python -m bench.fleet``: what fleet-aware routing buys over round robin, on 4 mock GPUs.

Starts mock replicas with a simulated GPU (batch slots with a FIFO queue, prefill per uncached
prompt token, an LRU prefix cache sized for about two tenants) and, for each workload and each
routing strategy in turn, a gateway in front of them (every backend capped at the mock's slots).
Each strategy gets the same open-loop multi-tenant workload (tenants with long system prompts and
growing conversations, Poisson arrivals sized to keep ~75 % of the fleet's slots busy when nothing
is cached), from cold caches: ``uniform`` (8 tenants with the same share) and ``skewed`` (one
tenant sends half the requests, system prompts of 1,500+ words). It reports time to first token,
the replicas' prefix cache hit rate (from their vLLM counters), queues and peak in flight, and
checks the targets of issues 9 and 14 per workload. A report, not a test: it exits 0 when a
target is missed.

    python -m bench.fleet                          # 2 workloads × 4 strategies × 30 s
    python -m bench.fleet --quick                  # a smoke run of a few seconds each
    python -m bench.fleet --workload skewed        # only the skewed workload
    python -m bench.fleet --slowdown --json out.json
    python -m bench.fleet --strategies none --slowdown   # only the slowdown scenario
    python -m bench.fleet --strategies none --priority   # only the priority scenario
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from rich.console import Console

from bench import fleet_client as client
from bench import fleet_priority as priority
from bench import fleet_report as report
from bench.fleet_targets import (
    Fleet,
    Replica,
    render_gateway_config,
    start_gateway,
    start_replicas,
)
from bench.fleet_workload import (
    WORKLOADS,
    Shape,
    Turn,
    arrival_rate,
    cache_blocks_for,
    mean_prompt_tokens,
    schedule,
    service_seconds,
)
from bench.stats import nan_to_null
from bench.targets import StartError
from llmproxy.routing.strategies import Strategy

# Compared by default: latency_based is left out because a fleet of equal replicas gives it
# nothing to tell apart, so it reads as round robin with noise.
STRATEGIES = tuple(strategy for strategy in Strategy if strategy is not Strategy.LATENCY_BASED)
SAMPLE_INTERVAL = 0.5
LEAD_TIME = 0.5
"""Seconds between building a run's requests and its first send: the clock starts warm."""
SLOWDOWN_AT = 5.0
SLOWDOWN_WINDOW = 5.0
SLOWDOWN_FACTOR = 3.0
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """Everything a run is sized from, printed first so a reader can redo the arithmetic."""

    workload: str
    fleet: Fleet
    shape: Shape
    load: float
    mean_prompt_tokens: float
    service: float
    """Seconds a request holds a slot when none of its prompt is cached."""
    rate: float
    """Arrivals per second."""
    cache_tenants: float


def make_plan(
    *,
    replicas: int = 4,
    slots: int = 8,
    tokens: int = 32,
    itl: float = 0.01,
    prefill_per_token: float = 0.0005,
    load: float = 0.75,
    cache_tenants: float = 2.0,
    block_chars: int = 64,
    seed: int = 1,
    workload: str = "uniform",
) -> Plan:
    """Size the arrival rate and the prefix caches from the fleet and the workload (a name of
    :data:`~bench.fleet_workload.WORKLOADS`; its answers are ``tokens`` long)."""
    shape = dataclasses.replace(WORKLOADS[workload], answer_tokens=tokens)
    prompt = mean_prompt_tokens(shape, seed)
    service = service_seconds(
        prompt_tokens=prompt, tokens=tokens, itl=itl, prefill_per_token=prefill_per_token
    )
    fleet = Fleet(
        replicas=replicas, slots=slots, tokens=tokens, itl=itl,
        prefill_per_token=prefill_per_token, block_chars=block_chars,
        prefix_cache_blocks=cache_blocks_for(shape, cache_tenants, block_chars),
    )  # fmt: skip
    rate = arrival_rate(replicas=replicas, slots=slots, load=load, service=service)
    return Plan(workload, fleet, shape, load, prompt, service, rate, cache_tenants)


def describe(plan: Plan, duration: float) -> list[str]:
    """The plan in words (and the rate's formula), for the top of the report."""
    fleet, shape = plan.fleet, plan.shape
    prefill = fleet.prefill_per_token * plan.mean_prompt_tokens
    decode = fleet.itl * (fleet.tokens - 1)
    if shape.system_words is None:
        system = f"{shape.system_chars[0]}–{shape.system_chars[1]} chars"
    else:
        system = f"{shape.system_words[0]:,}–{shape.system_words[1]:,} words"
    conversations = sorted({shape.conversations_of(t) for t in range(shape.tenants)}, reverse=True)
    if shape.heavy_share:
        tenants = (
            f"{shape.tenants} tenants, tenant 0 sends {shape.heavy_share:.0%} of the requests "
            f"({conversations[0]} conversations), the others {shape.share(1):.1%} each "
            f"({conversations[-1]} conversations)"
        )
    else:
        tenants = (
            f"{shape.tenants} tenants with the same share, {conversations[0]} conversations each"
        )
    return [
        f"fleet: {fleet.replicas} mock replicas × {fleet.slots} slots (gateway max_in_flight "
        f"{fleet.slots}), {fleet.tokens} tokens "
        f"{fleet.itl * 1000:g} ms apart, prefill {fleet.prefill_per_token * 1000:g} ms per "
        f"uncached token, prefix cache {fleet.prefix_cache_blocks} blocks of "
        f"{fleet.block_chars} chars (≈ {plan.cache_tenants:g} tenants' prompts)",
        f"workload {plan.workload}: {tenants}; system prompts of {system}, conversations of up "
        f"to {shape.turns} turns; mean prompt {plan.mean_prompt_tokens:,.0f} tokens",
        f"rate: {plan.load:.0%} × {fleet.replicas * fleet.slots} slots / {plan.service:.2f} s "
        f"per request uncached (prefill {prefill:.2f} s + decode {decode:.2f} s) = "
        f"{plan.rate:.1f} req/s, Poisson; ≈ {plan.rate * duration:,.0f} requests per strategy",
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals")
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="first seconds left out of TTFT and hit rate"
    )
    parser.add_argument("--quick", action="store_true", help="8 s per strategy (smoke run)")
    parser.add_argument(
        "--workload", default=",".join(WORKLOADS), help="comma-separated workloads, or 'none'"
    )
    parser.add_argument(
        "--strategies", default=",".join(STRATEGIES), help="comma-separated, or 'none'"
    )
    parser.add_argument(
        "--slowdown", action="store_true", help="also: triple one replica's itl under load_aware"
    )
    parser.add_argument(
        "--slowdown-keep-prefill",
        action="store_true",
        help="slowdown with the prefill cost on (the replica then gets only ~1.5x slower)",
    )
    parser.add_argument(
        "--priority",
        action="store_true",
        help="also: sk-high (priority 0) alone, then under sk-low traffic at 150%% of the fleet",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--itl", type=float, default=0.01)
    parser.add_argument("--prefill-per-token", type=float, default=0.0005)
    parser.add_argument("--load", type=float, default=0.75, help="share of the slots to keep busy")
    parser.add_argument("--cache-tenants", type=float, default=2.0, help="cache size in tenants")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--epsilon", type=float, default=0.25, help="routing.prefix_affinity.epsilon"
    )
    parser.add_argument(
        "--prefix-chars", type=int, default=2048, help="routing.prefix_affinity.prefix_chars"
    )
    parser.add_argument(
        "--plain-config",
        action="store_true",
        help="leave routing.load_signals/prefix_affinity out (gateways that predate them)",
    )
    args = parser.parse_args(argv)
    strategies = [] if args.strategies == "none" else args.strategies.split(",")
    unknown = set(strategies) - set(Strategy)
    if unknown:
        known = ", ".join(Strategy)
        parser.error(f"--strategies: unknown {', '.join(sorted(unknown))}; from {known}")
    args.strategies = strategies
    workloads = [] if args.workload == "none" else args.workload.split(",")
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        parser.error(
            f"--workload: unknown {', '.join(sorted(unknown))}; from {', '.join(WORKLOADS)}"
        )
    args.workload = list(dict.fromkeys(workloads))
    if args.quick:
        args.duration, args.warmup = 8.0, 2.0
    if not 0 <= args.warmup < args.duration:
        parser.error("--warmup must be >= 0 and shorter than --duration")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    sizing = partial(
        make_plan, replicas=args.replicas, slots=args.slots, tokens=args.tokens, itl=args.itl,
        prefill_per_token=args.prefill_per_token, load=args.load,
        cache_tenants=args.cache_tenants, seed=args.seed,
    )  # fmt: skip
    plans = {name: sizing(workload=name) for name in [*args.workload, "uniform"]}
    # The slowdown and priority scenarios run on the uniform workload's fleet.
    base = plans["uniform"]
    console.print("[bold]llmproxy fleet benchmark[/] (issues 9 and 14: fleet-aware routing)")
    runs: dict[str, dict[str, report.StrategyRun]] = {}
    slowdown: report.Slowdown | None = None
    prioritized: priority.PriorityRun | None = None
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmproxy-fleet-") as tmp:
        workdir = Path(tmp)
        with start_replicas(workdir, base.fleet) as replicas:
            console.print("  replicas: " + ", ".join(f"{r.name} {r.url}" for r in replicas))
            for workload in args.workload if args.strategies else []:
                plan = plans[workload]
                console.print(f"[bold]workload {workload}[/]")
                for line in describe(plan, args.duration):
                    console.print("  " + line, highlight=False)
                requests = schedule(plan.shape, plan.rate, args.duration, args.seed)
                runs[workload] = {}
                for strategy in args.strategies:
                    console.print(f"[bold]{workload} · {strategy}[/] …")
                    run = _strategy(workdir, replicas, plan, strategy, requests, args)
                    runs[workload][strategy] = run
                    _print_run(console, run)
            if args.slowdown:
                console.print("[bold]slowdown[/] (load_aware, uniform workload) …")
                slowdown = _slowdown(workdir, replicas, base, args)
            if args.priority:
                prioritized = _priority(console, workdir, replicas, base, args)
    checks = [
        check for workload, by_strategy in runs.items()
        for check in report.verdicts(by_strategy, workload=workload)
    ]  # fmt: skip
    checks += report.slowdown_verdicts(slowdown)
    if prioritized is not None:
        priority.print_table(console, prioritized)
        checks += priority.verdicts(prioritized)
    report.print_report(console, runs, checks, slowdown)
    elapsed = time.perf_counter() - began
    console.print(f"run time {elapsed:.0f} s", highlight=False)
    if args.json:
        document = {
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "workloads": {
                workload: {
                    "plan": dataclasses.asdict(plans[workload]),
                    "runs": {name: _run_json(run) for name, run in by_strategy.items()},
                }
                for workload, by_strategy in runs.items()
            },
            "slowdown": dataclasses.asdict(slowdown) if slowdown else None,
            "priority": _priority_json(prioritized) if prioritized else None,
            "targets": checks,
            "seconds": elapsed,
        }
        args.json.write_text(json.dumps(nan_to_null(document), indent=2, default=str) + "\n")
        console.print(f"results written to {args.json}")
    return 0


def _run_async(factory: Callable[[], Awaitable[_T]]) -> _T:
    """Run one phase on uvloop when it is installed, as the gateway and the mocks do."""
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop

    async def phase() -> _T:
        return await factory()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(phase())


def _renderer(
    replicas: list[Replica], strategy: str, args: argparse.Namespace
) -> Callable[[int], str]:
    """The gateway config for ``strategy``, given the port the gateway will listen on."""
    return partial(
        render_gateway_config,
        replicas=replicas,
        strategy=strategy,
        signals_interval=SAMPLE_INTERVAL,
        prefix_chars=args.prefix_chars,
        epsilon=args.epsilon,
        max_in_flight=args.slots,
        plain=args.plain_config,
    )


def _strategy(
    workdir: Path,
    replicas: list[Replica],
    plan: Plan,
    strategy: str,
    requests: list[tuple[float, Turn]],
    args: argparse.Namespace,
) -> report.StrategyRun:
    render = _renderer(replicas, strategy, args)
    try:
        with start_gateway(workdir, render, strategy) as url:
            return _run_async(lambda: _measure(url, replicas, plan, strategy, requests, args))
    except StartError as exc:
        return report.StrategyRun(strategy, not_run=f"gateway did not start: {exc}"[:300])


async def _measure(
    url: str,
    replicas: list[Replica],
    plan: Plan,
    strategy: str,
    requests: list[tuple[float, Turn]],
    args: argparse.Namespace,
) -> report.StrategyRun:
    """One strategy from cold caches: counters are zeroed again when the warm-up ends, so hit
    rate and queue cover the measured part; the peak batch covers the whole run."""
    urls = [r.url for r in replicas]
    async with client.client_session() as session:
        await _prepare(session, urls, **_fleet_knobs(plan))
        warm = asyncio.Event()

        async def at_warmup() -> list[dict[str, Any]]:
            await warm.wait()
            before = await asyncio.gather(*(client.mock_stats(session, u) for u in urls))
            await asyncio.gather(*(client.reset(session, u, flush_cache=False) for u in urls))
            return list(before)

        warmup_task = asyncio.create_task(at_warmup())
        start = time.perf_counter() + LEAD_TIME
        results = await client.drive(session, url, requests, start=start, at={args.warmup: warm})
        before = await warmup_task
        after = await asyncio.gather(*(client.mock_stats(session, u) for u in urls))
        counters = await asyncio.gather(*(client.prefix_counters(session, u) for u in urls))
    numbers = [
        report.Replica(
            name=replica.name,
            slots=plan.fleet.slots,
            requests=end["requests"],
            prefix_queries=queries,
            prefix_hits=hits,
            queued_peak=end["queued_peak"],
            peak_running=max(begin["peak_running"], end["peak_running"]),
            peak_in_flight=max(begin["peak_in_flight"], end["peak_in_flight"]),
        )
        for replica, begin, end, (queries, hits) in zip(
            replicas, before, after, counters, strict=True
        )
    ]
    return report.summarize(strategy, results, numbers, warmup=args.warmup)


def _fleet_knobs(plan: Plan) -> dict[str, float]:
    """The replica knobs a phase sets: the workload's cache size besides the speeds."""
    fleet = plan.fleet
    return {
        "itl": fleet.itl,
        "prefill_per_token": fleet.prefill_per_token,
        "prefix_cache_blocks": fleet.prefix_cache_blocks,
    }


async def _prepare(session: aiohttp.ClientSession, urls: list[str], **knobs: float) -> None:
    """Set ``knobs`` on every replica (a slowdown changes them), flush the prefix caches and
    zero the counters: every phase starts cold."""
    await asyncio.gather(*(client.change_settings(session, u, **knobs) for u in urls))
    await asyncio.gather(*(client.reset(session, u, flush_cache=True) for u in urls))


def slowdown_profile(plan: Plan, *, keep_prefill: bool) -> tuple[float, float, float]:
    """``(prefill_per_token, rate, slowdown)`` of the slowdown scenario: the knob, the arrival
    rate for the same load, and how many times longer the slowed replica then holds a slot.

    Tripling the inter-token delay makes a replica three times slower only when decoding is
    most of a request's time. With the main scenario's long uncached prompts prefill dominates
    (with the defaults 1.3 s → 1.9 s, 1.5× slower), and any balancer that keeps every replica
    equally busy — the best one can do — still sends it two thirds of its share. So by default
    the scenario turns prefill off, making the replica really ×3 slower; ``keep_prefill``
    measures the other case.
    """
    fleet = plan.fleet
    prefill = fleet.prefill_per_token if keep_prefill else 0.0
    prompt = plan.mean_prompt_tokens

    def service(itl: float) -> float:
        return service_seconds(
            prompt_tokens=prompt, tokens=fleet.tokens, itl=itl, prefill_per_token=prefill
        )

    before = service(fleet.itl)
    rate = arrival_rate(replicas=fleet.replicas, slots=fleet.slots, load=plan.load, service=before)
    return prefill, rate, service(fleet.itl * SLOWDOWN_FACTOR) / before


def _slowdown(
    workdir: Path, replicas: list[Replica], plan: Plan, args: argparse.Namespace
) -> report.Slowdown:
    """``load_aware`` at the same load; after ``SLOWDOWN_AT`` seconds the first replica's itl
    is multiplied by ``SLOWDOWN_FACTOR``, and its share of new requests is compared over the
    ``SLOWDOWN_WINDOW`` seconds before and after (from its request counter, sampled)."""
    prefill, rate, slower = slowdown_profile(plan, keep_prefill=args.slowdown_keep_prefill)
    duration = SLOWDOWN_AT + SLOWDOWN_WINDOW + 1.0
    requests = schedule(plan.shape, rate, duration, args.seed)
    slow = replicas[0]
    render = _renderer(replicas, "load_aware", args)
    urls = [r.url for r in replicas]

    async def run(url: str) -> report.Slowdown:
        async with client.client_session() as session:
            await _prepare(session, urls, **{**_fleet_knobs(plan), "prefill_per_token": prefill})
            cue, stop = asyncio.Event(), asyncio.Event()

            async def slow_down() -> None:
                await cue.wait()
                slower_itl = plan.fleet.itl * SLOWDOWN_FACTOR
                await client.change_settings(session, slow.url, itl=slower_itl)

            start = time.perf_counter() + LEAD_TIME
            sampler = asyncio.create_task(
                client.sample_replicas(session, urls, SAMPLE_INTERVAL, stop, start=start)
            )
            changer = asyncio.create_task(slow_down())
            results = await client.drive(session, url, requests, start=start, at={SLOWDOWN_AT: cue})
            stop.set()
            samples = await sampler
            await changer
            await _prepare(session, urls, **_fleet_knobs(plan))
        by_name = {r.name: [(s.at, s.requests) for s in samples[r.url]] for r in replicas}
        result = report.slowdown_result(
            by_name, slow.name, factor=SLOWDOWN_FACTOR, at=SLOWDOWN_AT, window=SLOWDOWN_WINDOW
        )
        errors = sum(1 for r in results if r.error is not None)
        return dataclasses.replace(
            result, rate=rate, prefill=prefill > 0, slower=slower, sent=len(results), errors=errors
        )

    try:
        with start_gateway(workdir, render, "slowdown") as url:
            return _run_async(lambda: run(url))
    except StartError as exc:
        return report.Slowdown(
            slow.name, SLOWDOWN_FACTOR, SLOWDOWN_AT, SLOWDOWN_WINDOW,
            not_run=f"gateway did not start: {exc}"[:300],
        )  # fmt: skip


def _priority(
    console: Console, workdir: Path, replicas: list[Replica], plan: Plan, args: argparse.Namespace
) -> priority.PriorityRun:
    """The priority scenario on its own gateway (auth on, backends capped at their slots)."""
    sizing = priority.make_plan(plan.fleet)
    console.print("[bold]priority[/] (load_aware, admission queue) …")
    console.print("  " + priority.describe(sizing, plan.fleet), highlight=False)
    render = partial(priority.render_config, replicas=replicas, slots=plan.fleet.slots)
    try:
        with start_gateway(workdir, render, "priority") as url:
            scenario = partial(
                priority.run, url, replicas, plan.fleet, sizing,
                duration=args.duration, warmup=args.warmup, seed=args.seed,
            )  # fmt: skip
            return _run_async(scenario)
    except StartError as exc:
        return priority.PriorityRun(not_run=f"gateway did not start: {exc}"[:300], plan=sizing)


def _priority_json(run: priority.PriorityRun) -> dict[str, Any]:
    data = dataclasses.asdict(run)
    data["p99_ratio"] = run.p99_ratio
    return data


def _print_run(console: Console, run: report.StrategyRun) -> None:
    if run.not_run:
        console.print(f"  [yellow]not run:[/] {run.not_run}", highlight=False)
        return
    console.print(
        f"  TTFT p50 {run.ttft_p50_ms:,.0f} ms  p99 {run.ttft_p99_ms:,.0f} ms  "
        f"hit rate {run.hit_rate:.0%}  max queue {run.max_queue}  "
        f"peak running {run.peak_running}  peak in flight {run.peak_in_flight}  "
        f"done {run.completed}/{run.sent}  "
        f"errors {run.errors}  send lag p99 {run.send_lag_p99_ms:.1f} ms",
        highlight=False,
    )


def _run_json(run: report.StrategyRun) -> dict[str, Any]:
    data = dataclasses.asdict(run)
    data.update(
        hit_rate=run.hit_rate,
        max_queue=run.max_queue,
        peak_running=run.peak_running,
        peak_in_flight=run.peak_in_flight,
        over_slots=run.over_slots,
    )
    for replica, numbers in zip(run.replicas, data["replicas"], strict=True):
        numbers["hit_rate"] = replica.hit_rate
    return data


if __name__ == "__main__":
    sys.exit(main())
