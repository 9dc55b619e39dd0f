"""Reading a request body: bounded per request (``server.max_body_size``) and per process
(``server.body_buffer_limit``).

The per-process bound is the memory the gateway holds in bodies it has not yet judged, counted
as their bytes arrive (a declared length is not memory): a flood of large requests is refused
with 503 ``server_busy`` (and ``Retry-After``) once that much is held, instead of growing the
process until the kernel kills it. Only requests whose key was
recognised (or that need none) get this far; the time a body may take is the listener's
(``server.read_timeout``, from the end of the headers).
"""

from __future__ import annotations

from llmproxy.errors import GatewayError
from llmproxy.gateway.asgi import Receive
from llmproxy.gateway.headers import find_header
from llmproxy.http_fields import RawHeaders


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class BodyBudget:
    """Bytes of request bodies held by this process while they are read and judged.

    Process-owned (it outlives config snapshots); ``limit`` follows the current config.
    """

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> None:
        """Hold ``size`` more bytes, or raise the 503 that says the process is full."""
        if self.held + size > self.limit:
            raise GatewayError(
                503,
                "the gateway is holding too many request bodies; retry shortly",
                "server_busy",
                headers=((b"retry-after", b"1"),),
            )
        self.held += size

    def give(self, size: int) -> None:
        """Release ``size`` bytes taken with :meth:`take`."""
        self.held = max(0, self.held - size)


class BodyReader:
    """One request's body read: call :meth:`read`, then :meth:`release` in a ``finally``."""

    __slots__ = ("_budget", "held")

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.held = 0

    async def read(self, receive: Receive, headers: RawHeaders, limit: int) -> bytes:
        """The whole body: 413 over ``limit``, 503 over the process budget, :class:`ClientGone`
        when the client leaves first."""
        declared = find_header(headers, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large(limit)
        # Only bytes that arrived are held: a length declared but never sent costs nothing.
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise too_large(limit)
            self._hold(len(body))
            return body
        chunks = [body]
        size = len(body)
        self._hold(size)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            self._hold(size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _hold(self, size: int) -> None:
        """Hold ``size`` bytes in all (what arrived so far)."""
        if size > self.held:
            self._budget.take(size - self.held)
            self.held = size

    def release(self) -> None:
        """Give back what this read held (the body is judged, or the request failed)."""
        if self.held:
            self._budget.give(self.held)
            self.held = 0


def too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, f"the request body is larger than the limit of {limit} bytes", "request_too_large"
    )
