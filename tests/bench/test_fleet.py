"""The fleet benchmark's pure parts: sizing, the workload, the report and the targets.

The benchmark itself is not run here (it is a timed report of several minutes); one async test
drives a tiny schedule through the real client against an in-process mock, to check the wiring.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from collections import Counter
from itertools import islice

import pytest
from rich.console import Console

from bench import fleet_client, fleet_priority
from bench.fleet import make_plan, parse_args, slowdown_profile
from bench.fleet_report import (
    Replica,
    StrategyRun,
    count_at,
    print_report,
    share_between,
    slowdown_result,
    slowdown_verdicts,
    summarize,
    tenant_affinity,
    verdicts,
)
from bench.fleet_targets import Fleet, render_gateway_config
from bench.fleet_targets import Replica as Process
from bench.fleet_workload import (
    WORKLOADS,
    Shape,
    arrival_rate,
    arrival_times,
    cache_blocks_for,
    schedule,
    service_seconds,
    system_prompts,
    turns,
)
from llmproxy.config.model import Config
from llmproxy.mock import MockBackend, MockSettings, completion_text
from llmproxy.mock.__main__ import parse_args as mock_args


def test_service_time_and_rate() -> None:
    """Uncached service = prefill of the whole prompt + the gaps between tokens; the rate keeps
    ``load`` of all slots busy by Little's law."""
    service = service_seconds(prompt_tokens=2000, tokens=32, itl=0.01, prefill_per_token=0.0005)
    assert service == pytest.approx(1.0 + 0.31)
    rate = arrival_rate(replicas=4, slots=8, load=0.75, service=service)
    assert rate * service == pytest.approx(24.0)  # 75 % of 32 slots busy


def test_plan_is_consistent() -> None:
    plan = make_plan()
    assert plan.workload == "uniform"
    assert plan.rate * plan.service == pytest.approx(0.75 * 4 * 8)
    assert 1500 < plan.mean_prompt_tokens < 2500  # ~6k chars of system prompt plus history
    assert plan.fleet.prefix_cache_blocks == cache_blocks_for(plan.shape, 2.0, 64)


def test_skewed_plan_is_sized_on_its_own_uncached_prompts() -> None:
    """The skewed workload's longer prompts make a request hold a slot longer uncached, so its
    rate is lower for the same 75 % of the slots; its caches hold about two mean tenants."""
    plan = make_plan(workload="skewed", tokens=16)
    uniform = make_plan(tokens=16)
    assert plan.shape.heavy_share == 0.5
    assert plan.shape.answer_tokens == 16
    assert plan.rate * plan.service == pytest.approx(0.75 * 4 * 8)
    assert plan.mean_prompt_tokens > 1500 * 7 / 4  # 1,500+ words of about 7 chars with a space
    assert plan.rate < uniform.rate
    assert plan.fleet.prefix_cache_blocks == cache_blocks_for(plan.shape, 2.0, 64)
    assert plan.fleet.prefix_cache_blocks > uniform.fleet.prefix_cache_blocks


def test_cache_size_counts_system_prompt_and_live_histories() -> None:
    shape = Shape(system_chars=(6000, 6000), user_chars=(200, 200), conversations=2, turns=3)
    per_tenant = 6000 + 2 * 2 * (200 + len(completion_text(32)))  # histories half-way on average
    assert cache_blocks_for(shape, 2.0, 64) == round(2 * per_tenant / 64)


def test_workload_is_deterministic_per_seed() -> None:
    shape = Shape()
    first = list(islice(turns(shape, seed=7), 200))
    again = list(islice(turns(shape, seed=7), 200))
    other = list(islice(turns(shape, seed=8), 200))
    assert first == again
    assert first != other
    assert arrival_times(10.0, 5.0, seed=3) == arrival_times(10.0, 5.0, seed=3)
    planned = schedule(shape, 10.0, 5.0, seed=3)
    assert [at for at, _ in planned] == arrival_times(10.0, 5.0, seed=3)
    assert [turn for _, turn in planned] == list(islice(turns(shape, seed=3), len(planned)))


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_conversations_grow_by_one_exchange(workload: str) -> None:
    """Each request of a conversation repeats the previous one, its answer, and one new turn."""
    shape = dataclasses.replace(WORKLOADS[workload], answer_tokens=5)
    answer = completion_text(5)
    last: dict[int, tuple[tuple[str, str], ...]] = {}
    seen_growth = 0
    for turn in islice(turns(shape, seed=1), 500):
        assert turn.messages[0][0] == "system"
        assert turn.messages[-1][0] == "user"
        assert 1 <= turn.turn <= shape.turns
        previous = last.get(turn.conversation)
        if previous is not None:
            assert turn.messages[: len(previous)] == previous
            assert turn.messages[len(previous)] == ("assistant", answer)
            assert len(turn.messages) == len(previous) + 2
            seen_growth += 1
        else:
            assert turn.turn == 1
        last[turn.conversation] = turn.messages
    assert seen_growth > 300


def test_system_prompts_are_long_and_distinct_from_the_first_block() -> None:
    prompts = system_prompts(Shape(), seed=1)
    assert len(prompts) == 8
    assert all(4000 <= len(p) <= 8000 for p in prompts)
    assert len({p[:64] for p in prompts}) == 8  # no two tenants share a cache block


def test_skewed_workload_one_tenant_sends_half() -> None:
    """Tenant 0 sends half the requests, the seven others the rest evenly; it has seven times
    their conversations, so each conversation grows at the same pace."""
    shape = WORKLOADS["skewed"]
    assert [shape.conversations_of(t) for t in range(8)] == [21] + [3] * 7
    assert sum(shape.share(t) for t in range(8)) == pytest.approx(1.0)
    sample = list(islice(turns(shape, seed=1), 8000))
    counts = Counter(turn.tenant for turn in sample)
    assert counts[0] / len(sample) == pytest.approx(0.5, abs=0.02)
    for tenant in range(1, 8):
        assert counts[tenant] / len(sample) == pytest.approx(0.5 / 7, abs=0.01)
    assert len({t.conversation for t in sample if t.tenant == 0}) > 7 * len(
        {t.conversation for t in sample if t.tenant == 1}
    )
    assert Counter(t.turn for t in sample if t.tenant == 0)[8] > 0  # they do reach their end
    uniform = Counter(turn.tenant for turn in islice(turns(WORKLOADS["uniform"], seed=1), 8000))
    assert max(uniform.values()) / 8000 < 0.15


def test_skewed_system_prompts_have_1500_words_or_more() -> None:
    shape = WORKLOADS["skewed"]
    prompts = system_prompts(shape, seed=1)
    assert len(prompts) == 8
    assert all(1500 <= len(p.split()) <= 2000 for p in prompts)
    assert len({p[:64] for p in prompts}) == 8
    assert sum(map(len, prompts)) / 8 == pytest.approx(shape.mean_system_chars, rel=0.1)
    for turn in islice(turns(shape, seed=1), 200):  # every request repeats its tenant's
        assert turn.messages[0] == ("system", prompts[turn.tenant])
        assert len(turn.messages[0][1].split()) >= 1500


def test_shape_rejects_impossible_shares() -> None:
    with pytest.raises(ValueError, match="heavy_share"):
        Shape(heavy_share=1.0)
    with pytest.raises(ValueError, match="heavy_share"):
        Shape(tenants=1, heavy_share=0.5)


def test_arrivals_are_poisson_at_the_rate() -> None:
    times = arrival_times(20.0, 500.0, seed=1)
    assert times == sorted(times)
    assert all(0 <= t < 500 for t in times)
    assert len(times) / 500 == pytest.approx(20.0, rel=0.05)


def test_turn_body_streams_with_usage() -> None:
    turn = next(turns(Shape(), seed=1))
    body = json.loads(turn.body("m"))
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


def test_replica_command_matches_the_mock_flags() -> None:
    """The fleet's command line is accepted by ``python -m llmproxy.mock`` as intended."""
    fleet = Fleet(slots=8, prefill_per_token=0.0005, prefix_cache_blocks=378, tokens=32)
    settings, _, port, _ = mock_args(fleet.command(9100, "gpu-1")[3:])
    assert port == 9100
    assert settings == MockSettings(
        name="gpu-1", slots=8, tokens=32, itl=0.01, prefill_per_token=0.0005,
        prefix_cache_blocks=378,
    )  # fmt: skip


@pytest.mark.parametrize(
    "strategy", ["round_robin", "least_connections", "load_aware", "prefix_affinity"]
)
def test_gateway_config_is_valid(strategy: str) -> None:
    """The generated config passes the gateway's own model, with the fleet-aware keys."""
    replicas = [Process(f"gpu-{i}", 9000 + i) for i in range(4)]
    raw = json.loads(render_gateway_config(8000, replicas, strategy, max_in_flight=8))
    config = Config.model_validate(raw)
    assert config.routing.load_balance_strategy == strategy
    assert [b.name for b in config.backends] == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    assert [b.max_in_flight for b in config.backends] == [8] * 4  # the mock's slots
    assert raw["routing"]["load_signals"] == {"enabled": True, "interval": 0.5}
    assert raw["routing"]["prefix_affinity"] == {"prefix_chars": 2048, "epsilon": 0.25}
    assert not config.health_check.enabled
    plain = json.loads(render_gateway_config(8000, replicas, strategy, plain=True))
    assert set(plain["routing"]) == {"load_balance_strategy"}
    assert all("max_in_flight" not in backend for backend in plain["backends"])


def test_cli() -> None:
    args = parse_args(["--quick", "--strategies", "round_robin,prefix_affinity", "--slowdown"])
    assert (args.duration, args.warmup, args.slowdown) == (8.0, 2.0, True)
    assert args.strategies == ["round_robin", "prefix_affinity"]
    assert parse_args(["--strategies", "none"]).strategies == []
    assert parse_args([]).workload == ["uniform", "skewed"]
    assert parse_args(["--workload", "skewed"]).workload == ["skewed"]
    assert parse_args(["--workload", "none"]).workload == []
    alone = parse_args(["--strategies", "none", "--priority"])
    assert (alone.strategies, alone.priority) == ([], True)
    for bad in (
        ["--strategies", "random"],
        ["--duration", "3", "--warmup", "5"],
        ["--workload", "zipf"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_slowdown_profile_isolates_decode() -> None:
    """Without prefill, tripling itl makes a request exactly 3× longer; with it, much less."""
    plan = make_plan()
    prefill, rate, slower = slowdown_profile(plan, keep_prefill=False)
    assert prefill == 0.0
    assert slower == pytest.approx(3.0)
    assert rate == pytest.approx(0.75 * 32 / (0.01 * 31))
    prefill, rate, slower = slowdown_profile(plan, keep_prefill=True)
    assert prefill == 0.0005
    assert rate == pytest.approx(plan.rate)
    assert 1.3 < slower < 1.7


def _result(
    scheduled: float,
    tenant: int,
    ttft: float | None,
    replica: str = "gpu-0",
    error: str | None = None,
) -> fleet_client.Result:
    return fleet_client.Result(
        scheduled, tenant, ttft=ttft, total=ttft, replica=replica, error=error
    )


def test_summarize_leaves_the_warmup_out_of_latencies() -> None:
    results = [_result(0.5, 0, 9.0)] + [_result(2 + i, 0, (i + 1) / 100) for i in range(100)]
    results.append(_result(3.0, 1, None, replica="gpu-1", error="HTTP 503"))
    replicas = [
        Replica("gpu-0", 8, 100, 1000.0, 600.0, 2, 8, peak_in_flight=10),
        Replica("gpu-1", 8, 1, 10.0, 0.0),
    ]
    run = summarize("round_robin", results, replicas, warmup=1.0)
    assert (run.sent, run.completed, run.errors) == (102, 101, 1)
    assert run.error_kinds == {"HTTP 503": 1}
    assert run.ttft_p50_ms == pytest.approx(505.0)
    assert run.ttft_p99_ms == pytest.approx(990.1)
    assert run.hit_rate == pytest.approx(600 / 1010)
    assert (run.max_queue, run.peak_running, run.peak_in_flight, run.over_slots) == (2, 8, 10, 2)


def test_tenant_affinity() -> None:
    results = [_result(1, 0, 0.1, "a"), _result(2, 0, 0.1, "a"), _result(3, 0, 0.1, "b")]
    results += [_result(4, 1, 0.1, "c")]
    assert tenant_affinity(results) == pytest.approx((2 / 3 + 1) / 2)
    assert math.isnan(tenant_affinity([]))


def test_slowdown_shares_from_sampled_counters() -> None:
    """Shares come from the increase of each replica's cumulative request counter."""
    samples = {
        "slow": [(0.0, 0), (5.0, 25), (7.5, 29), (10.0, 30)],
        "fast": [(0.0, 0), (5.0, 75), (7.5, 120), (10.0, 170)],
    }
    assert count_at(samples["slow"], 7.0) == 25
    assert share_between(samples, "slow", 0.0, 5.0) == pytest.approx(0.25)
    result = slowdown_result(samples, "slow", factor=3, at=5.0, window=5.0)
    assert (result.share_before, result.share_after) == (0.25, 0.05)
    assert result.share_settled == pytest.approx(1 / 51)
    assert result.timeline == ((5.0, 0.25), (7.5, 4 / 49), (10.0, 1 / 51))


def _runs(rr: tuple[float, float, float], pa: tuple[float, float, float]) -> dict[str, StrategyRun]:
    def run(name: str, p50: float, p99: float, hits: float, peak: int = 8) -> StrategyRun:
        replica = Replica("gpu-0", 8, 10, 100.0, hits * 100, 0, peak)
        return StrategyRun(name, 10, 10, ttft_p50_ms=p50, ttft_p99_ms=p99, replicas=(replica,))

    return {"round_robin": run("round_robin", *rr), "prefix_affinity": run("prefix_affinity", *pa)}


def test_targets_met_and_missed() -> None:
    runs = _runs((900.0, 1400.0, 0.3), (100.0, 1300.0, 0.7))
    slowdown = slowdown_result(
        {"s": [(0.0, 0), (5.0, 25), (10.0, 30)], "f": [(0.0, 0), (5.0, 75), (10.0, 170)]},
        "s", factor=3, at=5.0, window=5.0,
    )  # fmt: skip
    checks = verdicts(runs) + slowdown_verdicts(slowdown)
    assert [c["met"] for c in checks] == [True, False, True, True, True]
    values = [c["value"] for c in checks]
    assert values == [
        pytest.approx(9.0), pytest.approx(1400 / 1300), pytest.approx(40.0), 0.0,
        pytest.approx(0.2),
    ]  # fmt: skip


def test_targets_are_issue_14s_ratios_per_workload() -> None:
    """p50 at least 5× and p99 at least 3× lower than round robin's, judged and named per
    workload; 4.9× misses, 5× meets."""
    checks = verdicts(_runs((490.0, 1500.0, 0.3), (100.0, 500.0, 0.7)), workload="skewed")
    assert [c["met"] for c in checks] == [False, True, True, True]
    assert all(c["target"].startswith("skewed: ") for c in checks)
    assert [c["goal"] for c in checks[:2]] == [">= 5×", ">= 3×"]
    checks = verdicts(_runs((500.0, 1490.0, 0.3), (100.0, 500.0, 0.7)))
    assert [c["met"] for c in checks] == [True, False, True, True]


def test_targets_not_run_and_over_slots() -> None:
    runs = _runs((900.0, 1400.0, 0.3), (100.0, 500.0, 0.7))
    runs["prefix_affinity"] = StrategyRun("prefix_affinity", not_run="gateway did not start")
    runs["round_robin"] = StrategyRun(
        "round_robin", replicas=(Replica("gpu-0", 8, peak_running=8, peak_in_flight=9),)
    )
    met = [c["met"] for c in verdicts(runs) + slowdown_verdicts(None)]
    assert met == [None, None, None, False, None]


def test_report_prints_table_and_verdicts() -> None:
    runs = _runs((900.0, 1400.0, 0.3), (100.0, 500.0, 0.7))
    runs["load_aware"] = StrategyRun("load_aware", not_run="gateway did not start: boom")
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    slowdown = slowdown_result({"s": [(0.0, 0), (5.0, 5)]}, "s", factor=3, at=5.0, window=5.0)
    checks = verdicts(runs, workload="skewed") + slowdown_verdicts(slowdown)
    print_report(console, {"skewed": runs}, checks, slowdown)
    text = out.getvalue()
    assert "Workload skewed" in text
    assert "9.0× / 2.8×" in text  # prefix_affinity's p50 and p99, lower than round robin's by
    assert "prefix_affinity" in text
    assert "not run: gateway did not start: boom" in text
    assert "MET    skewed: prefix_affinity TTFT p50" in text  # 9× against a goal of 5×
    assert "MISSED skewed: prefix_affinity TTFT p99" in text  # 2.8× against a goal of 3×
    assert "MET    skewed: no replica above its slots" in text
    assert "share per sample" in text


async def test_client_drives_a_mock_and_reads_its_counters() -> None:
    """A tiny open-loop run straight at one mock: TTFT from the schedule, replica header, and
    the vLLM prefix cache counters read back from /metrics."""
    settings = MockSettings(name="gpu-x", tokens=3, prefix_cache_blocks=500, slots=2)
    requests = schedule(Shape(tenants=1, conversations=1), 50.0, 0.2, seed=1)
    async with MockBackend(settings) as mock, fleet_client.client_session() as session:
        results = await fleet_client.drive(
            session, mock.url, requests, start=time.perf_counter() + 0.05
        )
        queries, hits = await fleet_client.prefix_counters(session, mock.url)
        stats = await fleet_client.mock_stats(session, mock.url)
        await fleet_client.reset(session, mock.url, flush_cache=True)
        assert len(mock.gpu.cache) == 0
    assert results
    assert all(r.error is None and r.replica == "gpu-x" for r in results)
    assert all(r.ttft is not None and r.ttft >= 0 for r in results)
    assert queries == stats["prefix_cache_queries"] > 0
    assert hits == stats["prefix_cache_hits"] > 0  # the same tenant's system prompt
    assert stats["peak_running"] <= 2


def test_priority_config_is_valid() -> None:
    """Auth on with two static keys of different priority, every backend capped at its slots
    with vLLM's priority field sent, a large admission queue; it passes the gateway's model."""
    replicas = [Process(f"gpu-{i}", 9000 + i) for i in range(4)]
    config = Config.model_validate(json.loads(fleet_priority.render_config(8000, replicas, 8)))
    assert config.routing.load_balance_strategy == "load_aware"
    assert all(b.max_in_flight == 8 and b.send_priority for b in config.backends)
    assert config.routing.admission.max_waiting >= 10_000
    assert config.routing.admission.timeout >= 60
    assert config.auth.enabled
    (provider,) = config.auth.pipeline
    assert provider.type == "static"
    assert {k.key: k.priority for k in provider.keys} == {"sk-high": 0, "sk-low": 10}
    assert (config.usage.enabled, config.admin.enabled, config.health_check.enabled) == (
        False, False, False,
    )  # fmt: skip
    assert not config.server.watch_config


def test_priority_prompts_share_no_prefix_and_plan_is_consistent() -> None:
    prompts = [fleet_priority.prompt(n, kind) for kind in ("high", "low") for n in range(50)]
    assert {p.prompt_chars for p in prompts} == {fleet_priority.PROMPT_CHARS}
    assert len({p.messages[0][1][:64] for p in prompts}) == 100  # no shared first cache block
    plan = fleet_priority.make_plan(Fleet())
    assert plan.prompt_tokens == 400
    assert plan.service == pytest.approx(0.2 + 0.31)
    assert plan.low_rate == pytest.approx(1.5 * 32 / plan.service)
    high = fleet_priority.requests("high", 2.0, 10.0, seed=1)
    assert high == fleet_priority.requests("high", 2.0, 10.0, seed=1)
    assert [at for at, _ in high] != [at for at, _ in fleet_priority.requests("low", 2.0, 10.0, 1)]


def _latency(p99: float) -> fleet_priority.Latency:
    return fleet_priority.Latency(sent=10, completed=10, ttft_p50_ms=p99 / 2, ttft_p99_ms=p99)


def test_priority_latency_counts_rejections_and_leaves_warmup_out() -> None:
    results = [_result(0.5, 0, 9.0)] + [_result(2 + i, 0, (i + 1) / 100) for i in range(100)]
    results.append(_result(3.0, 0, None, error="HTTP 503"))
    numbers = fleet_priority.latency(results, warmup=1.0)
    assert (numbers.sent, numbers.completed, numbers.errors, numbers.rejected) == (102, 101, 1, 1)
    assert numbers.samples == 100
    assert numbers.ttft_p99_ms == pytest.approx(990.1)
    assert numbers.ttft_max_ms == pytest.approx(1000.0)


def test_priority_target_met_missed_and_not_run() -> None:
    def run(unloaded: float, saturated: float, peak: int = 8) -> fleet_priority.PriorityRun:
        return fleet_priority.PriorityRun(
            unloaded_high=_latency(unloaded), saturated_high=_latency(saturated),
            saturated_low=_latency(9000.0), slots=8, peak_running=peak,
        )  # fmt: skip

    met = fleet_priority.verdicts(run(200.0, 239.0))
    assert [c["met"] for c in met] == [True, True]
    assert met[0]["value"] == pytest.approx(239 / 200)
    missed = fleet_priority.verdicts(run(200.0, 250.0, peak=9))
    assert [c["met"] for c in missed] == [False, False]
    assert missed[1]["value"] == 1.0
    assert [c["met"] for c in fleet_priority.verdicts(None)] == [None, None]
    refused = fleet_priority.PriorityRun(not_run="gateway did not start")
    assert [c["met"] for c in fleet_priority.verdicts(refused)] == [None, None]
    out = io.StringIO()
    fleet_priority.print_table(Console(file=out, width=200, color_system=None), run(200, 250))
    assert "2 saturated" in out.getvalue()
