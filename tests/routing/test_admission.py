"""The admission queue: best priority first, bounded, timed, and a leaver passes its turn on."""

from __future__ import annotations

import asyncio

import pytest

from llmproxy.gateway.request_peek import with_member
from llmproxy.routing.admission import AdmissionQueue, AdmissionRefused


async def _enter(queue: AdmissionQueue, priority: int, order: list[int]) -> None:
    await queue.wait(priority)
    order.append(priority)


async def test_waiters_are_woken_best_priority_first_then_in_arrival_order() -> None:
    queue = AdmissionQueue(max_waiting=10, timeout=5)
    order: list[int] = []
    tasks = []
    for priority in (5, 1, 5, 0, 1):
        tasks.append(asyncio.create_task(_enter(queue, priority, order)))
        await asyncio.sleep(0)
    assert queue.waiting == 5
    for _ in range(5):
        queue.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 1, 5, 5]
    assert queue.waiting == 0


async def test_a_full_queue_refuses_at_once() -> None:
    queue = AdmissionQueue(max_waiting=1, timeout=5)
    first = asyncio.create_task(queue.wait(0))
    await asyncio.sleep(0)
    with pytest.raises(AdmissionRefused) as refused:
        await queue.wait(0)
    assert refused.value.reason == "queue_full"
    queue.release()
    await first
    assert queue.rejected == 1


async def test_a_wait_that_runs_out_is_refused_and_leaves_the_queue() -> None:
    queue = AdmissionQueue(max_waiting=5, timeout=0.05)
    with pytest.raises(AdmissionRefused) as refused:
        await queue.wait(0)
    assert refused.value.reason == "timeout"
    assert queue.waiting == 0


async def test_a_woken_waiter_that_leaves_hands_its_turn_to_the_next() -> None:
    queue = AdmissionQueue(max_waiting=5, timeout=5)
    leaver = asyncio.create_task(queue.wait(0))
    stayer = asyncio.create_task(queue.wait(1))
    await asyncio.sleep(0)
    queue.release()  # wakes the leaver...
    leaver.cancel()  # ...whose client is gone before it runs
    with pytest.raises(asyncio.CancelledError):
        await leaver
    await asyncio.wait_for(stayer, 1)  # the turn went on without another release


def test_with_member_adds_or_replaces_the_priority() -> None:
    assert with_member(b' {"model": "m"}', "priority", 3) == b' {"priority":3,"model": "m"}'
    replaced = with_member(b'{"model":"m","priority":-100}', "priority", 7)
    assert replaced == b'{"model":"m","priority":7}'
