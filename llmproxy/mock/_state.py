"""What one mock backend keeps between requests, handed to every ``/v1`` endpoint.

Each :class:`~llmproxy.mock.MockBackend` owns one :class:`BackendState`, so two mocks in one test
process share nothing: a response stored by one is unknown to the other, which is how a gateway
test proves a ``previous_response_id`` follow-up reached the backend that created the response.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from llmproxy.mock.gpu import Gpu

STORED_RESPONSES = 10_000
"""Responses API objects a backend keeps; the oldest is forgotten first, as if it expired."""


class ResponseStore:
    """The ``/v1/responses`` objects created with ``store`` on, newest last, at most ``capacity``.

    Values are the encoded response objects, exactly what ``GET /v1/responses/{id}`` returns.
    """

    __slots__ = ("_items", "capacity")

    def __init__(self, capacity: int = STORED_RESPONSES) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, response_id: str) -> bool:
        return response_id in self._items

    def get(self, response_id: str) -> bytes | None:
        return self._items.get(response_id)

    def put(self, response_id: str, body: bytes) -> None:
        items = self._items
        items[response_id] = body
        while len(items) > self.capacity:
            items.popitem(last=False)

    def delete(self, response_id: str) -> bool:
        """Forget a response; False when it was not (or no longer) stored."""
        return self._items.pop(response_id, None) is not None


@dataclass(slots=True)
class BackendState:
    """The simulated GPU and the stored responses of one backend."""

    gpu: Gpu
    responses: ResponseStore = field(default_factory=ResponseStore)
