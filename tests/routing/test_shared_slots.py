"""The daemon's slot table: one count per backend and one waiting order for every worker.

Two handles on one table stand for two workers (the end-to-end test with real worker processes
is ``tests/e2e/test_workers.py``).
"""

from __future__ import annotations

import asyncio
import stat
import struct
import time
from pathlib import Path

import pytest

from llmproxy.routing.admission import AdmissionQueue
from llmproxy.routing.backend import SHARED, Backend
from llmproxy.routing.fleet import BackendFleet, BackendSettings
from llmproxy.routing.shared_slots import POLL, STALE_AFTER, SharedSlots


def _worker(path: Path, index: int, limit: int = 1) -> tuple[SharedSlots, Backend]:
    """A worker's handle on the table and its (one) backend, capped at ``limit``."""
    slots = SharedSlots.attach(path, index)
    fleet = BackendFleet(shared=slots)
    settings = BackendSettings(max_in_flight=limit)
    (backend,) = fleet.backends_for([(("gpu", "http://10.0.0.1:8000"), settings)])
    return slots, backend


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "slots.table"
    SharedSlots.create(path, workers=2, backends=16)
    return path


def test_one_count_per_backend_for_every_worker(table: Path) -> None:
    """max_in_flight 1: once one worker holds the slot the other sees the backend full and
    cannot take it; given back, the other can."""
    _, first = _worker(table, 0)
    _, second = _worker(table, 1)
    assert first.try_begin()
    assert second.full_for()
    assert not second.try_begin()
    assert second.in_flight == 0
    first.end(SHARED)
    assert not second.full_for()
    assert second.try_begin()
    assert first.full_for()
    second.end(SHARED)
    assert first.slots is not None
    assert first.slots.taken() == 0


def test_reserved_slots_count_the_daemons_slots(table: Path) -> None:
    _, first = _worker(table, 0, limit=3)
    _, second = _worker(table, 1, limit=3)
    assert first.try_begin()
    assert second.try_begin()
    assert not second.try_begin(reserve=1)  # 2 taken + 1 reserved = 3
    assert second.try_begin()
    assert not first.try_begin()


def test_a_dead_workers_slots_come_back_when_it_is_replaced(table: Path) -> None:
    _, first = _worker(table, 0, limit=2)
    dead, second = _worker(table, 1, limit=2)
    assert second.try_begin()
    assert second.try_begin()
    assert first.full_for()
    dead.close()  # killed: it never calls end()
    SharedSlots.attach(table, 1).close()
    assert not first.full_for()
    assert first.try_begin()


def test_the_table_file_is_private_and_checked(table: Path, tmp_path: Path) -> None:
    assert stat.S_IMODE(table.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="worker 2 of a table for 2"):
        SharedSlots.attach(table, 2)
    other = tmp_path / "other"
    other.write_bytes(b"\0" * 1024)
    with pytest.raises(ValueError, match="not a slot table"):
        SharedSlots.attach(other, 0)


async def _wait_for_slot(
    queue: AdmissionQueue, backend: Backend, order: list[str], name: str
) -> None:
    """What the request path does (gateway.proxy._choose): wait, look, wait again with the
    same ticket until the slot is taken."""
    ticket: int | None = None
    deadline = asyncio.get_running_loop().time() + 5
    if not queue.ahead(0) and backend.try_begin():
        order.append(name)
        return
    while True:
        ticket = await queue.wait(0, ticket=ticket, deadline=deadline)
        if backend.try_begin():
            queue.left()
            order.append(name)
            return


async def test_waiting_order_is_the_daemons(table: Path) -> None:
    """Requests waiting in two workers for one slot get it in arrival order across the daemon:
    a later one in worker 2 is not woken by its own worker's release while an earlier one in
    worker 1 waits, and a new request does not jump the queue."""
    one, two = SharedSlots.attach(table, 0), SharedSlots.attach(table, 1)
    queues = {"1": AdmissionQueue(shared=one), "2": AdmissionQueue(shared=two)}
    backends = {"1": _on(one), "2": _on(two)}
    assert backends["2"].try_begin()  # the slot is taken by a request in worker 2
    order: list[str] = []
    early = asyncio.create_task(_wait_for_slot(queues["1"], backends["1"], order, "early@1"))
    await asyncio.sleep(0.03)
    late = asyncio.create_task(_wait_for_slot(queues["2"], backends["2"], order, "late@2"))
    await asyncio.sleep(0.03)
    assert queues["2"].ahead(0)  # a new request in worker 2 must queue
    backends["2"].end(SHARED)
    queues["2"].release()  # worker 2 frees the slot; its own waiter is second
    await asyncio.wait_for(early, 1)
    assert order == ["early@1"]
    assert not late.done()
    started = time.monotonic()
    backends["1"].end(SHARED)
    queues["1"].release()
    await asyncio.wait_for(late, 1)
    assert order == ["early@1", "late@2"]
    assert time.monotonic() - started < 10 * POLL
    backends["2"].end(SHARED)
    assert not queues["1"].ahead(0)
    assert not queues["2"].ahead(0)
    one.close()
    two.close()


def _on(slots: SharedSlots) -> Backend:
    fleet = BackendFleet(shared=slots)
    settings = BackendSettings(max_in_flight=1)
    (backend,) = fleet.backends_for([(("gpu", "http://10.0.0.1:8000"), settings)])
    return backend


async def test_a_dead_workers_waiter_stops_counting(table: Path) -> None:
    """A head its worker no longer refreshes (it died) is ignored after STALE_AFTER."""
    one, two = SharedSlots.attach(table, 0), SharedSlots.attach(table, 1)
    one.publish((0, 1))
    assert AdmissionQueue(shared=two).ahead(0)
    offset = one._head(0)
    struct.pack_into("<d", one._map, offset + 24, time.monotonic() - STALE_AFTER - 1)
    assert not AdmissionQueue(shared=two).ahead(0)
    one.close()
    two.close()


def test_a_drain_in_one_worker_applies_in_the_others(table: Path) -> None:
    """A drain is a flag in the table; another worker takes it over at its next sync (the start
    of its next request), and so does a worker that builds the backend afterwards."""
    one, two = SharedSlots.attach(table, 0), SharedSlots.attach(table, 1)
    fleets = [BackendFleet(shared=one), BackendFleet(shared=two)]
    identity = (("gpu", "http://10.0.0.1:8000"), BackendSettings())
    first, second = (fleet.backends_for([identity])[0] for fleet in fleets)
    for fleet, backend in zip(fleets, (first, second), strict=True):
        fleet.adopt([(backend, BackendSettings())])
    assert first.slots is not None
    first.draining = True
    first.slots.set_draining(True)
    assert not _draining(second)
    fleets[1].sync()
    assert _draining(second)
    (later,) = BackendFleet(shared=two).backends_for([identity])
    assert later.draining
    first.slots.set_draining(False)
    fleets[1].sync()
    assert not _draining(second)
    one.close()
    two.close()


def _draining(backend: Backend) -> bool:
    """Read through a call: the flag changes under mypy's narrowing."""
    return backend.draining


def test_a_reload_that_caps_a_backend_keeps_the_count_honest(table: Path) -> None:
    """Requests begun while the backend was uncapped hold no slot of the table; when they end
    after a reload capped it, they give none back (a slot another request holds stays taken)."""
    _, backend = _worker(table, 0, limit=0)
    uncapped = [backend.try_begin() for _ in range(3)]
    backend.max_in_flight = 2  # the reload
    capped = backend.try_begin()
    assert capped == SHARED
    assert backend.slots is not None
    backend.end(uncapped[0])
    assert backend.slots.taken() == 1
    assert backend.try_begin() == SHARED
    assert not backend.try_begin()  # 2 capped requests in flight: full
    for taken in uncapped[1:]:
        backend.end(taken)
    assert backend.slots.taken() == 2
