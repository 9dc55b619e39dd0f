"""The admission queue: best priority first, bounded, timed, and a leaver passes its turn on."""

from __future__ import annotations

import asyncio

import pytest

from llmproxy.routing.admission import HEAD_RECHECK, AdmissionQueue, AdmissionRefused


def _deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def _enter(queue: AdmissionQueue, priority: int, order: list[int]) -> None:
    await queue.wait(priority, ticket=None, deadline=_deadline())
    order.append(priority)


async def test_waiters_are_woken_best_priority_first_then_in_arrival_order() -> None:
    queue = AdmissionQueue(max_waiting=10, timeout=5)
    order: list[int] = []
    tasks = []
    for priority in (5, 1, 5, 0, 1):
        tasks.append(asyncio.create_task(_enter(queue, priority, order)))
        await asyncio.sleep(0)
    assert queue.waiting == 5
    assert queue.ahead(0)
    assert not queue.ahead(-1)  # a more important request does not wait behind them
    for _ in range(5):
        queue.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 1, 5, 5]
    assert queue.waiting == 0


async def test_a_waiter_that_waits_again_keeps_its_place() -> None:
    queue = AdmissionQueue(max_waiting=10, timeout=5)
    first = await _first_ticket(queue)
    later = asyncio.create_task(queue.wait(1, ticket=None, deadline=_deadline()))
    await asyncio.sleep(0)
    again = asyncio.create_task(queue.wait(1, ticket=first, deadline=_deadline()))
    await asyncio.sleep(0.01)
    queue.release()
    await asyncio.sleep(0.01)
    assert again.done()  # the older ticket went first, though it queued again after `later`
    assert not later.done()
    queue.release()
    await later


async def _first_ticket(queue: AdmissionQueue) -> int:
    task = asyncio.create_task(queue.wait(1, ticket=None, deadline=_deadline()))
    await asyncio.sleep(0)
    queue.release()
    return await task


async def test_a_full_queue_refuses_at_once() -> None:
    queue = AdmissionQueue(max_waiting=1, timeout=5)
    first = asyncio.create_task(queue.wait(0, ticket=None, deadline=_deadline()))
    await asyncio.sleep(0)
    with pytest.raises(AdmissionRefused) as refused:
        await queue.wait(0, ticket=None, deadline=_deadline())
    assert refused.value.reason == "queue_full"
    queue.release()
    await first
    assert queue.rejected == 1


async def test_a_wait_that_runs_out_is_refused_and_leaves_the_queue() -> None:
    queue = AdmissionQueue(max_waiting=5, timeout=0.05)
    with pytest.raises(AdmissionRefused) as refused:
        await queue.wait(0, ticket=None, deadline=_deadline(0.05))
    assert refused.value.reason == "timeout"
    assert queue.waiting == 0


async def test_the_head_looks_again_without_a_wake_up() -> None:
    """Capacity can come back without a request ending (a reload): the head re-routes."""
    queue = AdmissionQueue(max_waiting=5, timeout=5)
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(queue.wait(0, ticket=None, deadline=_deadline()), HEAD_RECHECK + 0.5)
    assert asyncio.get_running_loop().time() - started >= HEAD_RECHECK * 0.9


async def test_a_woken_waiter_that_leaves_hands_its_turn_to_the_next() -> None:
    queue = AdmissionQueue(max_waiting=5, timeout=5)
    leaver = asyncio.create_task(queue.wait(0, ticket=None, deadline=_deadline()))
    stayer = asyncio.create_task(queue.wait(1, ticket=None, deadline=_deadline()))
    await asyncio.sleep(0)
    queue.release()  # wakes the leaver...
    leaver.cancel()  # ...whose client is gone before it runs
    with pytest.raises(asyncio.CancelledError):
        await leaver
    await asyncio.wait_for(stayer, 0.2)  # the turn went on without another release


def test_reserved_slots_apply_to_less_important_requests_only() -> None:
    queue = AdmissionQueue(reserved_slots=1, reserved_priority=0)
    assert queue.reserve_for(0) == 0
    assert queue.reserve_for(-5) == 0
    assert queue.reserve_for(10) == 1
