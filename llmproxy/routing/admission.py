"""The admission queue: requests wait here, best priority first, while every backend is full.

A backend with ``max_in_flight`` set takes no more than that many requests at once (its batch
slots); beyond, the GPU would only queue them itself, first come first served, and a
high-priority key would wait behind a flood of low-priority ones. So when every backend that
could serve a request is full, the gateway holds the request instead, in a bounded heap ordered
by (priority, arrival): lower priority values go first, as in vLLM's priority scheduling. Each
slot that frees wakes the best waiter, which then routes again. A full queue or a wait longer
than ``timeout`` is a clear 503, never a silent hang.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Final

DEFAULT_PRIORITY: Final = 0
"""The priority of a key that has none (vLLM's default)."""


class AdmissionRefused(Exception):
    """The request cannot wait for a slot: the queue is full, or the wait ran out."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class AdmissionQueue:
    """A bounded, priority-ordered set of requests waiting for any backend slot."""

    __slots__ = ("_heap", "_sequence", "max_waiting", "rejected", "timeout")

    def __init__(self, max_waiting: int = 1000, timeout: float = 30.0) -> None:
        self.max_waiting = max_waiting
        self.timeout = timeout
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._sequence = itertools.count()
        self.rejected = 0

    @property
    def waiting(self) -> int:
        """Requests waiting now."""
        return sum(1 for _, _, future in self._heap if not future.done())

    async def wait(self, priority: int) -> None:
        """Wait until a slot frees up for this request (then route again).

        Raises :class:`AdmissionRefused` when ``max_waiting`` requests already wait, or when no
        slot came within ``timeout`` seconds.
        """
        if self.waiting >= self.max_waiting:
            self.rejected += 1
            raise AdmissionRefused(
                "queue_full",
                f"every backend is at capacity and {self.max_waiting} requests are already "
                "waiting; try again later",
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (priority, next(self._sequence), future))
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives just as the future completes, and a client that left would hold a slot.
            async with asyncio.timeout(self.timeout):
                await future
        except TimeoutError:
            self.rejected += 1
            raise AdmissionRefused(
                "timeout",
                f"every backend stayed at capacity for {self.timeout:g} s; try again later",
            ) from None
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # woken, but the client left: the slot goes to the next waiter
            raise
        finally:
            if not future.done():
                future.cancel()  # it left the queue: release() skips it

    def release(self) -> None:
        """A slot freed up: wake the best waiter still waiting."""
        heap = self._heap
        while heap:
            _, _, future = heapq.heappop(heap)
            if not future.done():
                future.set_result(None)
                return
