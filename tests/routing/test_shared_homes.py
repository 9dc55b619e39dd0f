"""`prefix_affinity` on the daemon's homes table: two workers route a prefix the same way.

Two `PrefixAffinity` objects over one table stand for two workers (each with its own fleet on
the daemon's slot table, as in a real daemon); ``tests/e2e/test_workers.py`` runs the daemon.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmproxy.routing.affinity import PrefixAffinity, prefix_key
from llmproxy.routing.backend import Backend
from llmproxy.routing.fleet import BackendFleet, BackendSettings
from llmproxy.routing.shared_homes import HomesFile, SharedHomes, create_homes
from llmproxy.routing.shared_slots import SharedSlots

NAMES = [f"gpu-{n}" for n in range(4)]


def _keys(count: int) -> list[int]:
    return [prefix_key(f"tenant-{n} system prompt") for n in range(count)]


class Worker:
    def __init__(self, tmp_path: Path, index: int, seed: int) -> None:
        self.slots = SharedSlots.attach(tmp_path / "slots", index)
        self.homes = HomesFile.attach(tmp_path / "homes")
        fleet = BackendFleet(shared=self.slots, homes=self.homes)
        self.backends = list(
            fleet.backends_for(
                [((name, f"http://10.0.0.{n}:8000"), BackendSettings()) for n, name in
                 enumerate(NAMES)]
            )
        )  # fmt: skip
        self.affinity = PrefixAffinity(
            self.backends, rng=random.Random(seed), table=SharedHomes(self.homes, self.backends)
        )

    def pick(self, key: int) -> str:
        chosen = self.affinity.pick(self.backends, key)
        assert chosen is not None
        return chosen.name

    def close(self) -> None:
        self.slots.close()
        self.homes.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    SharedSlots.create(tmp_path / "slots", workers=2, backends=64)
    create_homes(tmp_path / "homes", rows=64, capacity=256)
    pair = [Worker(tmp_path, 0, 1), Worker(tmp_path, 1, 2)]
    yield pair
    for worker in pair:
        worker.close()


def test_both_workers_send_a_prefix_to_the_same_home(workers: list[Worker]) -> None:
    """Keys first seen by either worker are homed once, evenly, and both route each to it."""
    keys = _keys(8)
    first = {key: workers[n % 2].pick(key) for n, key in enumerate(keys)}
    assert sorted(first.values()) == sorted(NAMES * 2)  # two keys per backend
    for worker in workers:
        assert {key: worker.pick(key) for key in keys} == first
    shares = workers[1].affinity.shares()
    assert shares == {name: 0.25 for name in NAMES}


def test_demand_is_the_daemons(workers: list[Worker]) -> None:
    """A heavy tenant whose requests arrive through both workers is seen whole: the light one
    sharing its home moves off, once, for both workers."""
    keys = _keys(8)
    homes = {key: workers[n % 2].pick(key) for n, key in enumerate(keys)}
    heavy = keys[0]
    partner = next(k for k in keys[1:] if homes[k] == homes[heavy])
    rng = random.Random(3)
    for n in range(400):
        key = heavy if rng.random() < 0.5 else rng.choice(keys[1:])
        workers[n % 2].pick(key)
    after = [{key: worker.pick(key) for key in keys} for worker in workers]
    assert after[0] == after[1]
    assert after[0][heavy] == homes[heavy]
    assert after[0][partner] != homes[heavy]
    assert list(after[0].values()).count(homes[heavy]) == 1
    demand = workers[0].affinity.demand()
    assert demand[homes[heavy]] == pytest.approx(0.5, abs=0.1)
    assert sum(demand.values()) == pytest.approx(1.0)


def test_a_full_table_keeps_the_most_wanted_keys(workers: list[Worker]) -> None:
    """256 rows: past 70 % the table keeps the hottest half; a hot key keeps its home."""
    hot = _keys(1)[0]
    home = workers[0].pick(hot)
    for _ in range(50):
        workers[1].pick(hot)
    for key in _keys(400)[1:]:
        workers[0].pick(key)
    table = workers[0].affinity.table
    with table.transaction():
        assert table.keys() <= 256 * 0.7
    assert workers[1].pick(hot) == home


def test_a_backend_without_a_row_is_refused(tmp_path: Path) -> None:
    create_homes(tmp_path / "homes", rows=8, capacity=64)
    homes = HomesFile.attach(tmp_path / "homes")
    with pytest.raises(ValueError, match="no row"):
        SharedHomes(homes, [Backend.create("gpu", "http://10.0.0.1:8000")])
    homes.close()
