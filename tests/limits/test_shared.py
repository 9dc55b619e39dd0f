"""The daemon's limit table: exact across worker processes, and what a dead worker held comes back.

The contract every store keeps is in ``test_store_contract.py`` (the shared store is one of its
parameters); these are what only a table shared by processes has.
"""

from __future__ import annotations

import asyncio
import mmap
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import os
import signal
import stat
from pathlib import Path

import pytest

from llmproxy.limits import KeyPolicy, LimitsUnavailable, Rate
from llmproxy.limits.shared import SharedLimits, SharedLimitStore, table_size


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _admit_many(
    path: str,
    worker: int,
    count: int,
    start: multiprocessing.synchronize.Event,
    results: multiprocessing.queues.Queue[int],
) -> None:
    """In a worker process: ``count`` admissions of one key; puts how many were allowed."""

    async def run() -> int:
        handle = SharedLimits.attach(Path(path), worker)
        store = SharedLimitStore(handle)
        policy = KeyPolicy(requests=Rate(per_second=10 / 60, burst=10))
        start.wait()
        allowed = 0
        for _ in range(count):
            allowed += (await store.admit("busy-key", policy, 0)).allowed
        handle.close()
        return allowed

    results.put(asyncio.run(run()))


def _hold_and_die(path: str, worker: int, held: multiprocessing.synchronize.Event) -> None:
    """In a worker process: take two slots and a quota reservation, then wait to be killed."""

    async def run() -> None:
        store = SharedLimitStore(SharedLimits.attach(Path(path), worker))
        policy = KeyPolicy(max_concurrent=5, total_quota=1000)
        for _ in range(2):
            assert (await store.admit("held-key", policy, 100)).allowed
        held.set()
        await asyncio.sleep(60)

    asyncio.run(run())


def test_workers_in_separate_processes_share_one_budget(tmp_path: Path) -> None:
    """Two processes hammering one key limited to 10 per minute admit exactly 10 between them."""
    path = tmp_path / "limits.table"
    SharedLimits.create(path, workers=2)
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results: multiprocessing.queues.Queue[int] = context.Queue()
    workers = [
        context.Process(target=_admit_many, args=(str(path), w, 40, start, results))
        for w in range(2)
    ]
    for process in workers:
        process.start()
    start.set()
    allowed = [results.get(timeout=30) for _ in workers]
    for process in workers:
        process.join(10)
    assert sum(allowed) == 10


async def test_a_dead_workers_slots_and_reservations_come_back(tmp_path: Path) -> None:
    """A worker killed with leases held: its slots stay taken (the others see them) until a
    worker starts in its place, which gives them back before serving."""
    path = tmp_path / "limits.table"
    SharedLimits.create(path, workers=2)
    context = multiprocessing.get_context("spawn")
    held = context.Event()
    process = context.Process(target=_hold_and_die, args=(str(path), 1, held))
    process.start()
    try:
        assert await asyncio.to_thread(held.wait, 30)
    finally:
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
        process.join(10)
    survivor = SharedLimitStore(SharedLimits.attach(path, 0))
    policy = KeyPolicy(max_concurrent=5, total_quota=1000)
    assert await survivor.in_flight("held-key") == 2
    # 1000 - 2 × 100 reserved: 800 left, so 900 does not fit while the dead leases count.
    assert not (await survivor.admit("held-key", policy, 900)).allowed
    replacement = SharedLimits.attach(path, 1)
    assert await survivor.in_flight("held-key") == 0
    admission = await survivor.admit("held-key", policy, 900)
    assert admission.allowed
    assert admission.lease is not None
    await survivor.settle("held-key", policy, admission.lease, 900, 10)
    assert await survivor.quota_used("held-key") == 10
    replacement.close()


async def test_the_table_drops_idle_keys_and_refuses_when_full(tmp_path: Path) -> None:
    """Rows equal to a fresh state are dropped when the table fills; a table full of keys with
    leases in flight refuses a new key with LimitsUnavailable (503), never a wrong answer."""
    path = tmp_path / "limits.table"
    SharedLimits.create(path, workers=1, capacity=64)
    clock = FakeClock()
    handle = SharedLimits.attach(path, 0)
    store = SharedLimitStore(handle, clock=clock)
    rate = KeyPolicy(requests=Rate(per_second=1.0, burst=5))
    for n in range(44):  # 44 of 64 rows: the next key would pass 70 %
        assert (await store.admit(f"key-{n}", rate, 0)).allowed
    clock.now += 10  # every bucket full again: the rows are idle
    held = KeyPolicy(max_concurrent=1)
    for n in range(43):
        assert (await store.admit(f"slot-{n}", held, 0)).allowed
    assert (await store.admit("key-0", rate, 0)).requests_remaining == 4  # a fresh bucket
    with pytest.raises(LimitsUnavailable):
        await store.admit("one-too-many", held, 0)
    assert await store.in_flight("slot-42") == 1
    handle.close()


def test_the_table_file_is_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "run" / "limits.table"
    SharedLimits.create(path, workers=3, capacity=128)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_size == table_size(128, 3)
    with pytest.raises(ValueError, match="worker 3 of a table for 3"):
        SharedLimits.attach(path, 3)
    other = tmp_path / "other"
    other.write_bytes(b"x" * 4096)
    with pytest.raises(ValueError, match="not a limit table"):
        SharedLimits.attach(other, 0)
    with pytest.raises(ValueError, match="power of two"):
        SharedLimits.create(tmp_path / "bad", workers=1, capacity=100)


async def test_a_full_table_is_not_rebuilt_for_every_new_key(tmp_path: Path) -> None:
    """A rebuild scans the whole table under the lock every worker waits on: after one that
    freed nothing, new keys are refused at once for a second instead of rebuilding again."""
    path = tmp_path / "limits.table"
    SharedLimits.create(path, workers=1, capacity=64)
    handle = SharedLimits.attach(path, 0)
    store = SharedLimitStore(handle)
    held = KeyPolicy(max_concurrent=1)
    for n in range(44):
        assert (await store.admit(f"slot-{n}", held, 0)).allowed
    rebuilds = 0
    rebuild = store._rebuild

    def counted(table: mmap.mmap) -> int:
        nonlocal rebuilds
        rebuilds += 1
        return rebuild(table)

    store._rebuild = counted  # type: ignore[method-assign]
    for n in range(5):
        with pytest.raises(LimitsUnavailable):
            await store.admit(f"new-{n}", held, 0)
    assert rebuilds == 1
    assert (await store.admit("slot-3", KeyPolicy(), 0)).allowed  # known keys still served
    handle.close()
