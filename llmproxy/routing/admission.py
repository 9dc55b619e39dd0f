"""The admission queue: requests wait here, best priority first, while every backend is full.

A backend with ``max_in_flight`` set takes no more than that many requests at once (its batch
slots); beyond, the GPU would only queue them itself, first come first served, and a
high-priority key would wait behind a flood of low-priority ones. So when every backend that
could serve a request is full, the gateway holds the request instead, in a bounded heap ordered
by (priority, arrival): lower priority values go first, as in vLLM's priority scheduling. Each
slot that frees wakes the best waiter, which then routes again, keeping its place if it still
finds no room. A new request does not take a freed slot while a request at least as important
waits (no jumping the queue). A full queue or a wait longer than ``timeout`` is a clear 503,
never a silent hang.

Capacity can also appear without a request ending (a reload, an ejected backend coming back):
the head of the queue looks again every `HEAD_RECHECK` seconds, so the queue never stalls.

With several workers (``shared``, the daemon's slot table) the order is the daemon's: tickets are
drawn from the table, each worker publishes its best waiter there, a request does not go ahead of
a waiter at least as important in any worker, and the local head routes again only when it is
the daemon's best — at once when its own worker frees a slot, within
:data:`~llmproxy.routing.shared_slots.POLL` seconds when another one does.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Final

from llmproxy.routing.shared_slots import POLL, SharedSlots

DEFAULT_PRIORITY: Final = 0
"""The priority of a key that has none (vLLM's default)."""

HEAD_RECHECK: Final = 0.5
"""Seconds after which the request at the head of the queue routes again without a wake-up."""


class AdmissionRefused(Exception):
    """The request cannot wait for a slot: the queue is full, or the wait ran out."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class AdmissionQueue:
    """A bounded, priority-ordered set of requests waiting for any backend slot.

    ``reserved_slots`` of every limited backend are kept for requests whose priority is at most
    ``reserved_priority``: without preemption, an important request arriving at a fleet full
    of long low-priority generations would otherwise wait for one of them to end.
    """

    __slots__ = (
        "_entries",
        "_handoffs",
        "_heap",
        "_poller",
        "_sequence",
        "_shared",
        "max_waiting",
        "rejected",
        "reserved_priority",
        "reserved_slots",
        "timeout",
    )

    def __init__(
        self,
        max_waiting: int = 1000,
        timeout: float = 30.0,
        *,
        reserved_slots: int = 0,
        reserved_priority: int = DEFAULT_PRIORITY,
        shared: SharedSlots | None = None,
    ) -> None:
        self.max_waiting = max_waiting
        self.timeout = timeout
        self.reserved_slots = reserved_slots
        self.reserved_priority = reserved_priority
        # (priority, ticket, entry number, future): the entry number keeps two entries of one
        # ticket (a waiter that queued again before its old entry was popped) comparable.
        self._heap: list[tuple[int, int, int, asyncio.Future[None]]] = []
        self._sequence = itertools.count()
        self._entries = itertools.count()
        self._shared = shared
        self._poller: asyncio.Task[None] | None = None
        """With several workers, while anyone waits here: wakes this worker's head every
        POLL when it is the daemon's first (one timer, not one per waiter)."""
        self._handoffs = 0
        """Waiters woken by release() that have not run yet: while one is pending, the slot is
        theirs, and no waiter looking again on its own may take it."""
        self.rejected = 0

    @property
    def waiting(self) -> int:
        """Requests waiting now."""
        return sum(1 for *_, future in self._heap if not future.done())

    def reserve_for(self, priority: int) -> int:
        """Slots of each backend a request of ``priority`` must leave free."""
        return 0 if priority <= self.reserved_priority else self.reserved_slots

    def ahead(self, priority: int) -> bool:
        """Whether a request at least as important as ``priority`` is waiting (in any worker),
        or a woken waiter is about to take the slot it was handed."""
        if self._handoffs:
            return True
        head = self._head()
        if head is not None and head[0] <= priority:
            return True
        if self._shared is None:
            return False
        elsewhere = self._shared.best_elsewhere()
        return elsewhere is not None and elsewhere[0] <= priority

    async def wait(self, priority: int, *, ticket: int | None, deadline: float) -> int:
        """Wait until this request may route again; returns its ticket (pass it back to keep
        its place when it waits again, or call :meth:`left` once it waits no more).

        Raises :class:`AdmissionRefused` when ``max_waiting`` requests already wait, or at
        ``deadline`` (loop time).
        """
        if ticket is None:
            if self.waiting >= self.max_waiting:
                self.rejected += 1
                raise AdmissionRefused(
                    "queue_full",
                    f"every backend is at capacity and {self.max_waiting} requests are already "
                    "waiting; try again later",
                )
            ticket = next(self._sequence) if self._shared is None else self._shared.draw_ticket()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._heap, (priority, ticket, next(self._entries), future))
        self._publish()
        if self._shared is not None and self._poller is None:
            self._poller = loop.create_task(self._poll())
        # Returned to route again: this worker's published head stays (the request is still
        # first) until it waits again or calls left(), so no other worker slips in between.
        again = False
        woken = False
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    self.rejected += 1
                    raise AdmissionRefused(
                        "timeout",
                        f"every backend stayed at capacity for {self.timeout:g} s; try again later",
                    )
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                    # that arrives as the future completes, and a client that left would hold
                    # its place.
                    async with asyncio.timeout(min(remaining, HEAD_RECHECK)):
                        await asyncio.shield(future)
                    self._handoffs -= 1  # woken by release(): the handed slot is ours to try
                    woken = again = True
                    return ticket
                except TimeoutError:
                    if (
                        loop.time() < deadline
                        and not self._handoffs
                        and self._is_head(future)
                        and self._first(ticket)
                    ):
                        again = True
                        return ticket  # look again: capacity may have come without a wake-up
                    if not self._handoffs:
                        self._publish()  # still here: keep this worker's head fresh
        finally:
            if future.done() and not future.cancelled() and not woken:
                # Woken, but leaving (the client left, or the deadline came first): the turn
                # goes to the next waiter.
                self._handoffs -= 1
                self.release()
            if not future.done():
                future.cancel()  # it left the queue: release() skips it
            if not again:
                self._publish()

    def left(self) -> None:
        """A request that waited routed again and waits no more (it got a backend, or none can
        serve it): with several workers, this worker's published head moves on."""
        self._publish()

    def release(self) -> None:
        """A slot freed up: wake the best waiter still waiting (with several workers, only when it
        is the daemon's best; a better one elsewhere finds the slot itself)."""
        if self._shared is not None:
            head = self._head()
            if head is None or not self._first(head[1], head[0]):
                return
        self._wake_head()

    def _wake_head(self) -> None:
        """Hand the slot to the best waiter still waiting."""
        heap = self._heap
        while heap:
            *_, future = heapq.heappop(heap)
            if not future.done():
                # Its place stays published until it has routed (it calls left() or waits
                # again): another worker's waiter must not take the slot in between, nor a
                # waiter of this one that looks again on its own (see _handoffs).
                future.set_result(None)
                self._handoffs += 1
                return

    async def _poll(self) -> None:
        """While anyone waits here (several workers): every POLL, wake this worker's head if it
        is the daemon's first — a slot another worker frees wakes nobody here — else refresh
        its published place."""
        try:
            while self._head() is not None:
                await asyncio.sleep(POLL)
                if self._handoffs:
                    continue  # a woken waiter is routing; its place stays published
                head = self._head()
                if head is None:
                    break
                if self._first(head[1], head[0]):
                    self._wake_head()
                else:
                    self._publish()
        finally:
            self._poller = None

    def _first(self, ticket: int, priority: int | None = None) -> bool:
        """Whether this worker's head (``ticket``) goes before every other worker's."""
        if self._shared is None:
            return True
        if priority is None:
            head = self._head()
            if head is None:
                return True
            priority = head[0]
        elsewhere = self._shared.best_elsewhere()
        return elsewhere is None or (priority, ticket) < elsewhere

    def _publish(self) -> None:
        if self._shared is not None:
            head = self._head()
            self._shared.publish(None if head is None else (head[0], head[1]))

    def _is_head(self, future: asyncio.Future[None]) -> bool:
        head = self._head()
        return head is not None and head[3] is future

    def _head(self) -> tuple[int, int, int, asyncio.Future[None]] | None:
        """The best entry still waiting (entries of requests that left are dropped here)."""
        heap = self._heap
        while heap and heap[0][3].done():
            heapq.heappop(heap)
        return heap[0] if heap else None
