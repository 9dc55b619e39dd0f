"""Live usage records, in process: ``llmproxy usage --follow``, dashboards, tests.

::

    async with sink.bus.subscribe() as records:
        async for record in records:
            print(record.model, record.total_tokens)

Each subscriber has its own bounded queue. Publishing never waits: a subscriber that falls behind
misses records, counted in its ``dropped`` and in the bus's ``dropped``.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from llmproxy.usage.record import UsageRecord


class Subscription:
    """One subscriber's queue; iterate it, and close it (or leave its ``async with``) when done."""

    def __init__(self, bus: UsageBus, size: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[UsageRecord] = asyncio.Queue(maxsize=size)
        self.dropped = 0

    def _offer(self, record: UsageRecord) -> bool:
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        return True

    def close(self) -> None:
        """Stop receiving records."""
        self._bus._subscribers.discard(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> UsageRecord:
        return await self._queue.get()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class UsageBus:
    """Fan-out of submitted records to live subscribers; ``dropped`` counts records they missed."""

    def __init__(self, subscriber_queue: int = 1000) -> None:
        self.subscriber_queue = subscriber_queue
        self._subscribers: set[Subscription] = set()
        self.dropped = 0

    def subscribe(self) -> Subscription:
        """A new subscription, receiving every record published from now on."""
        subscription = Subscription(self, self.subscriber_queue)
        self._subscribers.add(subscription)
        return subscription

    def publish(self, record: UsageRecord) -> None:
        """Hand ``record`` to every subscriber with room for it; never waits."""
        for subscription in self._subscribers:
            if not subscription._offer(record):
                self.dropped += 1

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscribers)
