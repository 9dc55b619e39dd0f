"""Prefix affinity on a consistent-hash ring with bounded load, and the load-aware rule."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from llmproxy.routing.affinity import (
    HashRing,
    LoadAware,
    PrefixAffinity,
    load_score,
    prefix_key,
)
from llmproxy.routing.backend import Backend
from llmproxy.routing.homes import HEAT_HALF_LIFE, LocalHomes
from llmproxy.routing.prefix import prompt_prefix


def _fleet(count: int = 4) -> list[Backend]:
    return [Backend.create(f"gpu-{n}", f"http://10.0.0.{n}:8000") for n in range(count)]


def _keys(count: int) -> list[int]:
    return [prefix_key(f"tenant-{n} system prompt") for n in range(count)]


def test_a_key_always_lands_on_the_same_backend() -> None:
    fleet = _fleet()
    ring = HashRing(fleet)
    for key in _keys(50):
        first = next(ring.walk(key))
        assert all(next(ring.walk(key)) is first for _ in range(3))
    # The walk visits every backend exactly once.
    assert sorted(b.name for b in ring.walk(_keys(1)[0])) == sorted(b.name for b in fleet)


def test_keys_spread_evenly_over_the_ring() -> None:
    fleet = _fleet()
    ring = HashRing(fleet)
    owners = Counter(next(ring.walk(key)).name for key in _keys(4000))
    assert set(owners) == {b.name for b in fleet}
    for share in owners.values():
        assert 0.7 * 1000 <= share <= 1.3 * 1000


def test_weight_gives_a_backend_a_larger_share() -> None:
    light, heavy = _fleet(2)
    heavy.weight = 3
    ring = HashRing([light, heavy])
    owners = Counter(next(ring.walk(key)).name for key in _keys(4000))
    assert 2.3 <= owners[heavy.name] / owners[light.name] <= 3.9


def test_removing_a_backend_moves_only_its_own_keys() -> None:
    fleet = _fleet()
    before = HashRing(fleet)
    after = HashRing(fleet[:3])
    for key in _keys(2000):
        owner = next(before.walk(key))
        if owner is not fleet[3]:
            assert next(after.walk(key)) is owner


def test_the_ring_owner_is_chosen_while_it_is_within_the_bound() -> None:
    fleet = _fleet()
    strategy = PrefixAffinity(fleet, epsilon=0.25, rng=random.Random(1))
    key = _keys(1)[0]
    owner = next(HashRing(fleet).walk(key))
    assert strategy.pick(fleet, key) is owner
    owner.in_flight = 1  # bound with 1 in flight over 4 backends: ceil(1.25 * 2 / 4) = 1
    second = [b for b in HashRing(fleet).walk(key)][1]
    assert strategy.pick(fleet, key) is second


def test_a_backend_with_a_queue_passes_its_keys_on() -> None:
    fleet = _fleet()
    key = _keys(1)[0]
    walk = list(HashRing(fleet).walk(key))
    walk[0].queue_waiting = 3
    strategy = PrefixAffinity(fleet, rng=random.Random(1))
    assert strategy.pick(fleet, key) is walk[1]


def test_bounded_load_keeps_every_backend_under_the_bound() -> None:
    """One hot prefix and many requests in flight: nobody exceeds (1 + epsilon) × average."""
    fleet = _fleet()
    strategy = PrefixAffinity(fleet, epsilon=0.25, rng=random.Random(2))
    key = prefix_key("one very popular system prompt")
    for placed in range(1, 201):
        chosen = strategy.pick(fleet, key)
        assert chosen is not None
        chosen.in_flight += 1
        average = placed / len(fleet)
        assert max(b.in_flight for b in fleet) <= 1.25 * average + 1


def test_only_allowed_candidates_are_chosen() -> None:
    fleet = _fleet()
    key = _keys(1)[0]
    owner = next(HashRing(fleet).walk(key))
    allowed = [b for b in fleet if b is not owner]
    chosen = PrefixAffinity(fleet, rng=random.Random(3)).pick(allowed, key)
    assert chosen is not None
    assert chosen is not owner


def test_without_a_key_the_load_aware_rule_decides() -> None:
    fleet = _fleet(2)
    fleet[0].queue_waiting = 5
    strategy = PrefixAffinity(fleet, rng=random.Random(4))
    assert {strategy.pick(fleet, None) for _ in range(20)} == {fleet[1]}


def test_load_aware_weighs_queue_cache_in_flight_and_speed() -> None:
    idle, queued, full_cache, busy = _fleet(4)
    queued.queue_waiting = 2
    full_cache.kv_cache_usage = 0.95
    busy.in_flight = 2
    assert load_score(idle) < load_score(full_cache) < load_score(busy) < load_score(queued)
    # A backend generating three times slower costs three times per request it holds.
    assert load_score(busy, slowness=3.0) == 3 * load_score(busy)
    chooser = LoadAware(random.Random(5))
    picks = Counter(chooser.pick([idle, queued]) for _ in range(50))
    assert picks == {idle: 50}


def test_load_aware_with_one_or_no_candidate() -> None:
    only = _fleet(1)[0]
    assert LoadAware().pick([only]) is only
    assert LoadAware().pick([]) is None
    assert PrefixAffinity([only]).pick([], 1) is None


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="vnodes"):
        HashRing(_fleet(), vnodes=0)
    with pytest.raises(ValueError, match="epsilon"):
        PrefixAffinity(_fleet(), epsilon=-0.1)


def test_prompt_prefix_of_chat_and_completions() -> None:
    chat = (
        b'{"model": "m", "messages": [{"role": "system", "content": "You are terse."},'
        b' {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}]}'
    )
    assert prompt_prefix(chat) == "system\x1fYou are terse.\x1euser\x1fhi<image_url>\x1e"
    assert prompt_prefix(chat, 10) == "system\x1fYou"
    assert prompt_prefix(b'{"prompt": "Once upon a time"}', 4) == "Once"
    assert prompt_prefix(b'{"prompt": ["first", "second"]}') == "first"
    assert prompt_prefix(b'{"prompt": [[1, 2, 3]]}') == "1,2,3"
    assert prompt_prefix(b'{"prompt": [7, 8]}') == "7,8"
    assert prompt_prefix(b'{"model": "m"}') is None
    assert prompt_prefix(b"not json") is None


def test_conversations_that_grow_keep_their_key() -> None:
    """A later turn starts with the same system prompt and earlier turns: the same key."""
    system = "S" * 3000
    first = f'{{"messages": [{{"role": "system", "content": "{system}"}}]}}'.encode()
    later = (
        f'{{"messages": [{{"role": "system", "content": "{system}"}},'
        '{"role": "user", "content": "and then?"}]}'
    ).encode()
    first_prefix = prompt_prefix(first)
    assert first_prefix is not None
    assert first_prefix == prompt_prefix(later)
    assert prefix_key(first_prefix) == prefix_key(first_prefix)


def test_new_prefixes_are_homed_evenly_and_keep_their_home() -> None:
    fleet = _fleet()
    strategy = PrefixAffinity(fleet, rng=random.Random(6))
    keys = _keys(8)
    homes = [strategy.pick(fleet, key) for key in keys]
    assert Counter(b.name for b in homes if b is not None) == {b.name: 2 for b in fleet}
    assert strategy.shares() == {b.name: 0.25 for b in fleet}
    for _ in range(3):
        assert [strategy.pick(fleet, key) for key in keys] == homes


def test_a_spill_does_not_move_the_home() -> None:
    fleet = _fleet()
    strategy = PrefixAffinity(fleet, rng=random.Random(7))
    key = _keys(1)[0]
    home = strategy.pick(fleet, key)
    assert home is not None
    home.queue_waiting = 2  # busy: the request spills
    spilled = strategy.pick(fleet, key)
    assert spilled is not home
    home.queue_waiting = 0
    assert strategy.pick(fleet, key) is home


def test_the_table_of_homes_is_bounded() -> None:
    fleet = _fleet()
    strategy = PrefixAffinity(fleet, max_keys=50, rng=random.Random(8))
    for key in _keys(500):
        strategy.pick(fleet, key)
    table = strategy.table
    assert table.keys() == 50
    assert sum(table.owned(b) for b in fleet) == 50


def test_a_home_with_kv_cache_room_keeps_its_prefix_past_the_average_bound() -> None:
    """Over the in-flight bound, but its own KV cache shows room: the prefix stays (spilling
    would pay a whole uncached prefill elsewhere); once the cache is nearly full, it spills."""
    fleet = _fleet()
    strategy = PrefixAffinity(fleet, epsilon=0.25, rng=random.Random(9))
    key = _keys(1)[0]
    home = strategy.pick(fleet, key)
    assert home is not None
    home.in_flight = 5  # bound: ceil(1.25 * 6 / 4) = 2
    home.kv_cache_usage = 0.3
    assert strategy.pick(fleet, key) is home
    home.kv_cache_usage = 0.9
    assert strategy.pick(fleet, key) is not home


def test_a_home_with_free_declared_slots_keeps_its_prefix_whatever_its_last_scrape() -> None:
    """With ``max_in_flight`` set, the gateway's own count against it is the room: a KV reading
    taken during a burst that has since passed does not send the prefix to an uncached replica;
    at the limit it spills."""
    fleet = _fleet()
    for backend in fleet:
        backend.max_in_flight = 8
    strategy = PrefixAffinity(fleet, epsilon=0.25, rng=random.Random(10))
    key = _keys(1)[0]
    home = strategy.pick(fleet, key)
    assert home is not None
    home.in_flight = 7  # over the average bound (3), one slot free
    home.kv_cache_usage = 1.0  # scraped when all eight were running
    assert strategy.pick(fleet, key) is home
    home.in_flight = 8
    assert strategy.pick(fleet, key) is not home


def test_a_light_prefix_leaves_the_home_a_heavy_one_fills() -> None:
    """One tenant sends half the requests: the light tenant sharing its home moves to the least
    demanded backend (its prompt would be evicted by the heavy one's churn), the heavy one stays,
    and nothing moves back or on as the same demand continues."""
    fleet = _fleet()
    strategy = PrefixAffinity(fleet, rng=random.Random(11))
    keys = _keys(8)
    homes = {key: strategy.pick(fleet, key) for key in keys}
    heavy = keys[0]
    heavy_home = homes[heavy]
    assert heavy_home is not None
    partner = next(k for k in keys[1:] if homes[k] is heavy_home)
    rng = random.Random(12)
    for _ in range(400):
        key = heavy if rng.random() < 0.5 else rng.choice(keys[1:])
        strategy.pick(fleet, key)
    after = {key: strategy.pick(fleet, key) for key in keys}
    assert after[heavy] is heavy_home
    assert after[partner] is not heavy_home
    assert list(after.values()).count(heavy_home) == 1  # the heavy tenant alone
    demand = strategy.demand()
    assert demand[heavy_home.name] == pytest.approx(0.5, abs=0.1)
    assert sum(demand.values()) == pytest.approx(1.0)
    for _ in range(400):
        key = heavy if rng.random() < 0.5 else rng.choice(keys[1:])
        strategy.pick(fleet, key)
    assert {key: strategy.pick(fleet, key) for key in keys} == after


def test_even_demand_moves_no_prefix() -> None:
    """Tenants with the same share stay where they were homed: noise is not a reason to pay a
    cold prefill."""
    fleet = _fleet()
    strategy = PrefixAffinity(fleet, rng=random.Random(13))
    keys = _keys(8)
    homes = {key: strategy.pick(fleet, key) for key in keys}
    rng = random.Random(14)
    for _ in range(5000):
        strategy.pick(fleet, rng.choice(keys))
    assert {key: strategy.pick(fleet, key) for key in keys} == homes


def test_demand_decays_and_survives_rescaling() -> None:
    """A tenant that stops sending stops counting (half-life in requests), and the scale that
    does the decay is brought back before it overflows without changing any share."""
    fleet = _fleet()
    strategy = PrefixAffinity(fleet, rng=random.Random(15))
    old, new = _keys(2)
    for _ in range(200):
        strategy.pick(fleet, old)
    for _ in range(HEAT_HALF_LIFE * 6):
        strategy.pick(fleet, new)
    home_of_old = strategy.pick(fleet, old)
    assert home_of_old is not None
    shares = strategy.demand()
    assert shares[home_of_old.name] < 0.05
    before = strategy.demand()
    table = strategy.table
    assert isinstance(table, LocalHomes)
    table.rescale()
    assert strategy.demand() == pytest.approx(before)
    assert table.scale() == 1.0


def test_load_aware_avoids_the_slower_of_two_equally_loaded_backends() -> None:
    fast, slow = _fleet(2)
    fast.itl_ewma, slow.itl_ewma = 0.01, 0.03
    fast.in_flight = slow.in_flight = 2
    chooser = LoadAware(random.Random(10))
    assert {chooser.pick([fast, slow]) for _ in range(20)} == {fast}
    fast.in_flight = 9  # (9 + 1) × 1 > (2 + 1) × 3: now the slow one has the shorter wait
    assert chooser.pick([fast, slow]) is slow
