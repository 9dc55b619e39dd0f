"""Balancer strategies: smooth weighted round robin, least connections, latency based."""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Sequence

import pytest

from llmproxy.config.model import RoutingConfig
from llmproxy.config.reference import render_reference
from llmproxy.routing import (
    Backend,
    Balancer,
    LatencyBased,
    LeastConnections,
    SmoothWeightedRoundRobin,
    make_balancer,
)
from llmproxy.routing.strategies import STRATEGIES, Strategy, strategy_spec


def backends(**weights: int) -> list[Backend]:
    return [Backend.create(name, f"http://{name}", weight=w) for name, w in weights.items()]


def names(balancer: Balancer, candidates: Sequence[Backend], picks: int) -> list[str]:
    chosen = []
    for _ in range(picks):
        backend = balancer.pick(candidates)
        assert backend is not None
        chosen.append(backend.name)
    return chosen


def assert_shares(counts: Counter[str], expected: dict[str, float], tolerance: float) -> None:
    total = sum(counts.values())
    for name, share in expected.items():
        assert abs(counts[name] / total - share) <= tolerance, (name, counts)


@pytest.mark.parametrize(
    "balancer",
    [SmoothWeightedRoundRobin(), LeastConnections(), LatencyBased(random.Random(0))],
)
def test_empty_candidates_give_none(balancer: Balancer) -> None:
    """Every strategy returns None for an empty candidate list and the only one for one."""
    assert balancer.pick([]) is None
    [only] = backends(a=1)
    assert balancer.pick([only]) is only


def test_swrr_matches_nginx_sequence() -> None:
    """Weights 5:1:1 give nginx's smooth sequence a a b a c a a, repeating."""
    pool = backends(a=5, b=1, c=1)
    assert names(SmoothWeightedRoundRobin(), pool, 14) == list("aabacaa" * 2)


def test_swrr_shares_follow_weights() -> None:
    """Over 10,000 picks with weights 10:5:3:1 each share is within 2 % of its weight share."""
    pool = backends(a=10, b=5, c=3, d=1)
    counts = Counter(names(SmoothWeightedRoundRobin(), pool, 10_000))
    assert_shares(counts, {"a": 10 / 19, "b": 5 / 19, "c": 3 / 19, "d": 1 / 19}, 0.02)


def test_swrr_survives_candidate_set_changes() -> None:
    """Removing a backend mid-way keeps picking, stays fair among the rest, and it can return."""
    a, b, c = pool = backends(a=3, b=2, c=1)
    balancer = SmoothWeightedRoundRobin()
    names(balancer, pool, 1001)
    counts = Counter(names(balancer, [a, c], 10_000))
    assert_shares(counts, {"a": 3 / 4, "c": 1 / 4}, 0.02)
    assert counts["b"] == 0
    counts = Counter(names(balancer, pool, 6000))
    assert_shares(counts, {"a": 3 / 6, "b": 2 / 6, "c": 1 / 6}, 0.02)
    assert b.name in counts


def test_swrr_occasional_retry_exclusions_stay_fair() -> None:
    """Picks that exclude one random backend now and then (retries) keep shares by weight."""
    pool = backends(a=3, b=2, c=1)
    balancer = SmoothWeightedRoundRobin()
    rng = random.Random(4)
    counts: Counter[str] = Counter()
    for _ in range(20_000):
        subset = pool
        if rng.random() < 0.05:
            excluded = rng.choice(pool)
            subset = [b for b in pool if b is not excluded]
        picked = balancer.pick(subset)
        assert picked is not None
        counts[picked.name] += 1
    assert_shares(counts, {"a": 3 / 6, "b": 2 / 6, "c": 1 / 6}, 0.02)


def test_swrr_skips_weight_zero_unless_all_zero() -> None:
    """Weight-0 candidates are never picked beside weighted ones, and rotate when alone."""
    a, z1, z2 = backends(a=1, z1=0, z2=0)
    balancer = SmoothWeightedRoundRobin()
    assert set(names(balancer, [z1, a, z2], 10)) == {"a"}
    assert Counter(names(balancer, [z1, z2], 10)) == {"z1": 5, "z2": 5}


def test_least_connections_prefers_lowest_load_per_weight() -> None:
    """The backend with the lowest in_flight/weight wins, not the lowest raw in_flight."""
    a, b, c = pool = backends(a=4, b=1, c=2)
    a.in_flight, b.in_flight, c.in_flight = 4, 2, 1  # loads 1.0, 2.0, 0.5
    assert names(LeastConnections(), pool, 5) == ["c"] * 5
    c.in_flight = 4  # loads 1.0, 2.0, 2.0
    assert LeastConnections().pick(pool) is a


def test_least_connections_ranks_weight_zero_last() -> None:
    """A weight-0 candidate is passed over for any weighted one, however busy."""
    spare, busy = backends(spare=0, busy=1)
    busy.in_flight = 100
    assert names(LeastConnections(), [spare, busy], 4) == ["busy"] * 4


def test_least_connections_spreads_ties() -> None:
    """Idle backends with equal load take turns instead of the first one taking everything."""
    pool = backends(a=1, b=1, c=1)
    assert Counter(names(LeastConnections(), pool, 300)) == {"a": 100, "b": 100, "c": 100}


def test_least_connections_tracks_live_load() -> None:
    """With begin() on every pick, load spreads by weight as requests pile up."""
    pool = backends(a=2, b=1)
    balancer = LeastConnections()
    for _ in range(30):
        picked = balancer.pick(pool)
        assert picked is not None
        picked.begin()
    assert [b.in_flight for b in pool] == [20, 10]


def test_latency_prefers_low_ewma() -> None:
    """With p2c and two backends, the faster one wins every comparison when idle."""
    fast, slow = pool = backends(fast=1, slow=1)
    fast.record_first_byte(0.1)
    slow.record_first_byte(1.0)
    balancer = LatencyBased(random.Random(1), explore=0.0)
    assert set(names(balancer, pool, 200)) == {"fast"}


def test_latency_explores_unmeasured_first() -> None:
    """An idle backend without a measurement is picked before any measured one."""
    fast, new = pool = backends(fast=1, new=1)
    fast.record_first_byte(0.01)
    balancer = LatencyBased(random.Random(1))
    assert balancer.pick(pool) is new


def test_latency_spreads_a_burst_over_unmeasured_backends() -> None:
    """A startup burst is spread by in-flight count rather than piling on one unknown backend."""
    pool = backends(a=1, b=1, c=1)
    balancer = LatencyBased(random.Random(2), explore=0.0)
    for _ in range(30):
        picked = balancer.pick(pool)
        assert picked is not None
        picked.begin()
    assert max(b.in_flight for b in pool) - min(b.in_flight for b in pool) <= 3


def test_latency_accounts_for_in_flight() -> None:
    """A fast backend already busy loses to an idle slower one (cost = ewma * (in_flight + 1))."""
    fast, slow = pool = backends(fast=1, slow=1)
    fast.record_first_byte(0.1)
    slow.record_first_byte(0.3)
    fast.in_flight = 5
    assert LatencyBased(random.Random(0), explore=0.0).pick(pool) is slow


def test_latency_exploration_keeps_sampling_slow_backends() -> None:
    """Idle and with the default exploration, the slow backend still gets a small share."""
    fast, slow = pool = backends(fast=1, slow=1)
    fast.record_first_byte(0.1)
    slow.record_first_byte(2.0)
    counts = Counter(names(LatencyBased(random.Random(5)), pool, 10_000))
    assert 0 < counts["slow"] < 300


def test_latency_under_load_favours_fast_but_not_exclusively() -> None:
    """In a simulated load, the fast backend takes most requests and the slow one some."""
    pool = backends(fast=1, medium=1, slow=1)
    service = {"fast": 0.1, "medium": 0.3, "slow": 1.0}
    for backend in pool:
        backend.record_first_byte(service[backend.name])
    balancer = LatencyBased(random.Random(11), explore=0.0)
    finishing: list[tuple[float, int, Backend]] = []
    counts: Counter[str] = Counter()
    # Poisson-ish arrivals at 20 req/s; each request holds its backend for its service time.
    now = 0.0
    arrivals = random.Random(3)
    for seq in range(5000):
        now += arrivals.expovariate(20.0)
        while finishing and finishing[0][0] <= now:
            heapq.heappop(finishing)[2].end()
        picked = balancer.pick(pool)
        assert picked is not None
        picked.begin()
        counts[picked.name] += 1
        heapq.heappush(finishing, (now + service[picked.name], seq, picked))
    assert counts["fast"] > counts["medium"] > counts["slow"] > 0
    assert counts["fast"] / 5000 > 0.5


def test_make_balancer_by_name() -> None:
    """Each configured strategy name builds its balancer; an unknown one lists the valid ones."""
    assert isinstance(make_balancer("round_robin"), SmoothWeightedRoundRobin)
    assert isinstance(make_balancer("least_connections"), LeastConnections)
    assert isinstance(make_balancer("latency_based", random.Random(0)), LatencyBased)
    with pytest.raises(ValueError, match="round_robin, least_connections, latency_based"):
        make_balancer("random")


def test_one_table_of_strategies_feeds_config_and_docs() -> None:
    """Every strategy the config accepts has a spec that builds a balancer that picks, and the
    configuration reference describes it; only the load-reading ones ask for signals."""
    pool = backends(a=1, b=1)
    reference = render_reference()
    for strategy in Strategy:
        spec = STRATEGIES[strategy]
        assert make_balancer(strategy, random.Random(0), backends=pool).pick(pool) in pool
        assert f"`{strategy}`: {spec.summary}" in reference
        config = RoutingConfig.model_validate({"load_balance_strategy": strategy.value})
        assert strategy_spec(config.load_balance_strategy) is spec
    assert {s for s, spec in STRATEGIES.items() if spec.load_signals} == {
        Strategy.LOAD_AWARE,
        Strategy.PREFIX_AFFINITY,
    }
    assert [s for s, spec in STRATEGIES.items() if spec.prefix_key] == [Strategy.PREFIX_AFFINITY]


def test_latency_rejects_bad_explore() -> None:
    """An exploration probability outside [0, 1] is refused."""
    with pytest.raises(ValueError, match="explore"):
        LatencyBased(explore=2.0)
