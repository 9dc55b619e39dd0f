"""The client-facing HTTP/1.1 connection: uvicorn's httptools protocol with the gateway's limits.

uvicorn times out only idle keep-alive connections. A client that connects and says nothing,
sends its headers a byte a second, streams headers without end, or ends its headers and never
starts the body holds a socket (and memory) for as long as it likes. Every limit here counts from
what the client did, not from when the application got round to asking:

* ``server.header_timeout``: the whole header block, from a new connection's accept (or, on a
  keep-alive connection, from the first byte of the next request) to its last header line;
* ``server.max_header_size``: the header block's bytes, counted as they arrive (431 at once,
  not after the block has been buffered whole);
* ``server.read_timeout``: the body, from the end of the headers to its last byte; a request
  answered early (a 401 before its body was read) still has its body drained within it;
* ``server.idle_timeout``: a keep-alive connection between two requests (uvicorn's own);
* ``server.max_connections``: connections open in this process; one more is answered 503 and
  closed.

Every refusal is an OpenAI-style JSON error with ``connection: close``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from llmproxy.config.model import ServerConfig
from llmproxy.gateway.canonical import ABORT
from llmproxy.gateway.errors import error_body

log = logging.getLogger("llmproxy.listener")


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The per-connection limits, from ``server.*`` (fixed for the life of the listener)."""

    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_connections: int

    @classmethod
    def of(cls, server: ServerConfig) -> ConnectionLimits:
        return cls(
            header_timeout=server.header_timeout,
            body_timeout=server.read_timeout,
            max_header_bytes=server.max_header_size,
            max_connections=server.max_connections,
        )


def refusal(status: int, reason: bytes, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, with an OpenAI-style body."""
    body = error_body(status, message, code)
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        )
    )


_TOO_MANY = refusal(
    503, b"Service Unavailable", "the gateway has too many open connections", "too_many_connections"
)
_HEADERS_SLOW = refusal(
    408, b"Request Timeout", "the request headers did not arrive in time", "timeout"
)
_BODY_SLOW = refusal(408, b"Request Timeout", "the request body did not arrive in time", "timeout")
_BAD_REQUEST = refusal(
    400, b"Bad Request", "the request is not valid HTTP/1.1", "invalid_http_request"
)


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the limit."""


def headers_too_large(limit: int) -> bytes:
    return refusal(
        431,
        b"Request Header Fields Too Large",
        f"the request headers are larger than the limit of {limit} bytes",
        "headers_too_large",
    )


class GatewayProtocol(HttpToolsProtocol):
    """One client connection; see the module docstring. Build the class with :func:`protocol`.

    Deadlines are plain numbers checked by one sweep per process every :data:`SWEEP_INTERVAL`
    (:func:`_sweep`), not a timer armed and cancelled per request: a request then costs two
    clock reads, and a deadline is enforced within a quarter of a second.
    """

    limits: ClassVar[ConnectionLimits] = ConnectionLimits(10.0, 60.0, 64 * 1024, 4096)
    sweeper: ClassVar[asyncio.Task[None] | None] = None

    def __init__(
        self,
        config: UvicornConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._in_head = True  # between a request's first byte (or the accept) and its headers
        self._head_started = False  # a byte of the request in the head has arrived
        self._head_bytes = 0  # bytes of reads that found the head still arriving
        self._head_deadline = 0.0  # 0: no head being waited for (or its clock not started)
        self._body_deadline = 0.0  # 0: no body being waited for
        self._extensions: dict[str, object] = {ABORT: self._close}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            log.warning(
                "refusing a connection: %d open, server.max_connections is %d",
                len(self.connections) - 1,
                self.limits.max_connections,
            )
            self._refuse(_TOO_MANY)
            return
        self._head_deadline = self.loop.time() + self.limits.header_timeout
        cls = type(self)
        if cls.sweeper is None or cls.sweeper.done():
            # One sweep per listener (each has its own class): it runs while there are
            # connections, and the next connection starts it again.
            cls.sweeper = self.loop.create_task(_sweep(self.connections, self.loop))

    def data_received(self, data: bytes) -> None:
        continuing = self._in_head
        self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.limits.max_header_bytes and continuing:
            self._refuse(headers_too_large(self.limits.max_header_bytes))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = self._extensions  # type: ignore[typeddict-item]
        self._head_started = True
        if not self._in_head:
            # The next request on a kept-alive connection: its clock starts at its first byte
            # (or, while a response is still going out, when that response is done).
            self._in_head = True
            self._head_bytes = 0
            if self._response_done():
                self._head_deadline = self.loop.time() + self.limits.header_timeout

    def on_headers_complete(self) -> None:
        if self._head_bytes > self.limits.max_header_bytes and self._head_size() > (
            self.limits.max_header_bytes
        ):
            # The whole head came in one read: it is measured once it is parsed.
            self._refuse(headers_too_large(self.limits.max_header_bytes))
            raise _HeadTooLarge  # stops the parser before the request reaches the app
        self._in_head = self._head_started = False
        self._head_bytes = 0
        self._head_deadline = 0.0
        timeout = self.limits.body_timeout
        self._body_deadline = self.loop.time() + timeout if timeout else 0.0
        super().on_headers_complete()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_message_complete(self) -> None:
        self._body_deadline = 0.0
        self._head_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._in_head and not self._head_deadline and not self.transport.is_closing():
            # A pipelined request began while this one was answered: its clock starts now.
            self._head_deadline = self.loop.time() + self.limits.header_timeout

    def send_400_response(self, msg: str) -> None:
        if self.transport.is_closing():
            return  # refused already (a head over the limit stops the parser this way)
        log.info("refusing a malformed HTTP request from %s: %s", self.client, msg)
        self._refuse(_BAD_REQUEST)

    def check_deadlines(self, now: float) -> None:
        """Called by the sweep: act on a deadline that has passed."""
        if self._head_deadline and now >= self._head_deadline:
            self._head_deadline = 0.0
            if not self._response_done():
                return  # a response is still going out; the pipelined head waits for it
            if self._head_started:
                self._refuse(_HEADERS_SLOW)
            else:
                self._close()  # nothing was said: nothing to answer
        elif self._body_deadline and now >= self._body_deadline:
            self._body_deadline = 0.0
            if self.cycle is not None and not self.cycle.response_started:
                self._refuse(_BODY_SLOW)
            else:
                self._close()  # answered already; the rest of the body is not worth waiting for

    def _response_done(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _refuse(self, response: bytes) -> None:
        if not self.transport.is_closing():
            cycle = self.cycle
            if cycle is None or not cycle.response_started:
                self.transport.write(response)
        self._close()

    def _close(self) -> None:
        self._head_deadline = self._body_deadline = 0.0
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The application sees http.disconnect and stops; its sends become no-ops.
            cycle.disconnected = True
            cycle.message_event.set()
        if not self.transport.is_closing():
            self.transport.close()


SWEEP_INTERVAL = 0.25
"""Seconds between two checks of every connection's deadlines."""


async def _sweep(connections: set[Any], loop: asyncio.AbstractEventLoop) -> None:
    """Check every connection's deadlines while there are connections."""
    while connections:
        await asyncio.sleep(SWEEP_INTERVAL)
        now = loop.time()
        for connection in list(connections):
            if isinstance(connection, GatewayProtocol):
                connection.check_deadlines(now)


def protocol(limits: ConnectionLimits) -> type[GatewayProtocol]:
    """The connection class for a listener with ``limits`` (uvicorn's ``http=`` setting)."""
    return type("GatewayProtocol", (GatewayProtocol,), {"limits": limits, "sweeper": None})
