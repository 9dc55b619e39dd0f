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
* ``server.send_timeout``: a response the client stops taking (its socket buffer full) for
  this long: the connection is dropped, and with it the backend request (a client that does
  not read must not hold a GPU slot); ``server.write_timeout``: a whole response, when set;
* ``server.idle_timeout``: a keep-alive connection between two requests (uvicorn's own);
* ``server.max_connections``: connections open in this process; one more is answered 503 and
  closed;
* pipelining: at most :data:`MAX_PIPELINED` requests may wait behind one being answered (uvicorn
  would queue every request a client sends without reading its answers).

Every refusal is an OpenAI-style JSON error with ``connection: close``, after which the
connection is half-closed and lingers for :data:`LINGER` seconds, reading and discarding, so a
client still sending gets the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from llmproxy.apis import is_anthropic
from llmproxy.config.model import ServerConfig
from llmproxy.errors import GatewayError, error_body
from llmproxy.gateway.asgi import BODY_WRITER
from llmproxy.gateway.canonical import ABORT

log = logging.getLogger("llmproxy.listener")


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The per-connection limits, from ``server.*`` (fixed for the life of the listener)."""

    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_connections: int
    send_timeout: float = 60.0
    write_timeout: float = 0.0

    @classmethod
    def of(cls, server: ServerConfig) -> ConnectionLimits:
        return cls(
            header_timeout=server.header_timeout,
            body_timeout=server.read_timeout,
            max_header_bytes=server.max_header_size,
            max_connections=server.max_connections,
            send_timeout=server.send_timeout,
            write_timeout=server.write_timeout,
        )


def refusal(status: int, reason: bytes, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, with an OpenAI-style body (its
    Anthropic twin, for a request on ``/v1/messages``, is kept in :data:`_ANTHROPIC`)."""
    response = _response(status, reason, error_body(status, message, code))
    if response not in _ANTHROPIC:
        error = GatewayError(status, message, code)
        twin_status, body = error.anthropic()
        _ANTHROPIC[response] = _response(twin_status, reason, body)
    return response


def _response(status: int, reason: bytes, body: bytes) -> bytes:
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        )
    )


_ANTHROPIC: dict[bytes, bytes] = {}
"""Each refusal as Anthropic's clients read it."""


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


class _StopParsing(Exception):
    """Raised from a parser callback to stop parsing a request that was refused."""


MAX_PIPELINED = 16
"""Requests that may wait behind the one being answered on a connection; one more closes it."""

LINGER = 1.0
"""Seconds a refused connection stays half-closed, discarding what the client still sends."""


def headers_too_large(limit: int) -> bytes:
    return refusal(
        431,
        b"Request Header Fields Too Large",
        f"the request headers are larger than the limit of {limit} bytes",
        "headers_too_large",
    )


class GatewayProtocol(HttpToolsProtocol):
    """One client connection; see the module docstring. Build the class with :func:`protocol`.

    Deadlines are plain numbers checked by one sweep per listener every :data:`SWEEP_INTERVAL`
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
        self._head_started = False  # the parser began a request in this head
        self._head_bytes = 0  # bytes of this head received in earlier reads
        self._read_len = 0  # bytes of the read being parsed
        self._began_mid_read = False  # the head being parsed began inside the current read
        self._body_open = False  # headers done, the body's last byte not yet received
        self._head_deadline = 0.0  # 0: no head being waited for (or its clock not started)
        self._body_deadline = 0.0  # 0: no body being waited for
        self._refused = False  # answered with a refusal: lingering, discarding input
        self._stalled_since = 0.0  # when the client stopped taking the response (0: it takes)
        self._answering: object = None  # the cycle whose response was seen going out
        self._answer_since = 0.0
        self.on_resume: Callable[[], None] | None = None
        """Told when the client takes data again (the relay resumes reading its backend)."""

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
        if self._refused:
            return  # lingering after a refusal: what still comes is discarded
        if not self._in_head and not self._body_open and self._response_done():
            # An idle kept-alive connection: whatever comes now (a stray CRLF included, which
            # the parser skips without beginning a request) starts the next head's clock.
            self._begin_head()
        counted = self._in_head
        self._began_mid_read = False
        self._read_len = len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no upgrades here (ws is off): the request is served as plain HTTP
        except httptools.HttpParserError as error:
            if not self._refused:  # else a callback refused the request and stopped the parser
                log.info("refusing a malformed HTTP request from %s: %s", self.client, error)
                self._refuse(_BAD_REQUEST)
            return
        if self._in_head and not self._refused:
            # A head still arriving: its size so far (a header line not yet complete is not
            # seen by the parser, so raw bytes count; a head that began inside this read,
            # after the end of the last request, counts what the parser took of it).
            if counted and not self._began_mid_read:
                self._head_bytes += len(data)
            else:
                self._head_bytes = self._head_size()
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(headers_too_large(self.limits.max_header_bytes))

    def _begin_head(self) -> None:
        self._in_head = True
        self._head_started = False
        self._head_bytes = 0
        if self._response_done():
            self._head_deadline = self.loop.time() + self.limits.header_timeout

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:
            # Pipelined: the next request began inside a read, after the previous one's end;
            # its clock starts now, or when the response going out is done.
            self._begin_head()
            self._began_mid_read = True
        self._head_started = True

    def on_headers_complete(self) -> None:
        limit = self.limits.max_header_bytes
        if (self._head_bytes or self._read_len > limit) and self._head_size() > limit:
            # Measured exactly once parsed (a head within one read is counted here).
            self._refuse(headers_too_large(limit))
            raise _StopParsing
        previous = self.cycle
        waiting = previous is not None and not previous.response_complete
        if waiting and len(self.pipeline) >= MAX_PIPELINED:
            log.warning("closing a connection from %s: too many pipelined requests", self.client)
            self._refuse(_BAD_REQUEST)
            raise _StopParsing
        self._in_head = self._head_started = False
        self._head_bytes = 0
        self._head_deadline = 0.0
        self._body_open = True
        timeout = self.limits.body_timeout
        self._body_deadline = self.loop.time() + timeout if timeout else 0.0
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # else an upgrade: no request here
            # Set before the request's task first runs (uvicorn only created it).
            extensions: dict[str, object] = {
                ABORT: self._close,
                BODY_WRITER: DirectBody(self, cycle),
            }
            self.scope["extensions"] = extensions  # type: ignore[typeddict-item]

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_message_complete(self) -> None:
        self._body_open = False
        self._body_deadline = 0.0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._in_head and not self._head_deadline and not self.transport.is_closing():
            # A pipelined request began while this one was answered: its clock starts now.
            self._head_deadline = self.loop.time() + self.limits.header_timeout

    def send_400_response(self, msg: str) -> None:
        log.info("refusing a malformed HTTP request from %s: %s", self.client, msg)
        self._refuse(_BAD_REQUEST)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._stalled_since = self.loop.time()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stalled_since = 0.0
        if self.on_resume is not None:
            self.on_resume()

    def check_deadlines(self, now: float) -> None:
        """Called by the sweep: act on a deadline that has passed."""
        limits = self.limits
        stalled = self._stalled_since
        if stalled and limits.send_timeout and now - stalled >= limits.send_timeout:
            log.info("dropping a connection from %s: it stopped reading", self.client)
            self._abort()
            return
        if limits.write_timeout:
            cycle = self.cycle
            if cycle is not None and cycle.response_started and not cycle.response_complete:
                if self._answering is not cycle:
                    self._answering, self._answer_since = cycle, now
                elif now - self._answer_since >= limits.write_timeout:
                    log.info("dropping a connection from %s: server.write_timeout", self.client)
                    self._abort()
                    return
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
            self._refuse(_BODY_SLOW)

    def _response_done(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _refuse(self, response: bytes) -> None:
        """Answer ``response`` when no other answer is going out, then close: half-closed and
        lingering when the transport allows, so the client reads the answer."""
        transport = self.transport
        if self._refused or transport.is_closing():
            return
        cycle = self.cycle
        if self.pipeline or (
            cycle is not None and cycle.response_started and not cycle.response_complete
        ):
            self._close()  # mid-answer: nothing more can be said on this connection
            return
        url = getattr(self, "url", b"") or b""
        if url.startswith(b"/v1/messages") and is_anthropic(
            url.partition(b"?")[0].decode("latin-1").lower()
        ):
            response = _ANTHROPIC.get(response, response)
        self._refused = True
        self._head_deadline = self._body_deadline = 0.0
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the application stops; its sends become no-ops
            cycle.message_event.set()
        transport.write(response)
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(LINGER, self._abort)
        else:
            self._close()

    def _abort(self) -> None:
        """Close at once, dropping what is still buffered for the client (it is not reading)."""
        self._close()
        self.transport.abort()

    def _close(self) -> None:
        self._head_deadline = self._body_deadline = 0.0
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The application sees http.disconnect and stops; its sends become no-ops.
            cycle.disconnected = True
            cycle.message_event.set()
        if not self.transport.is_closing():
            self.transport.close()


class DirectBody:
    """The :class:`~llmproxy.gateway.asgi.BodyWriter` of one request: its body chunks written
    to the socket in uvicorn's framing for that response, without a ``send`` per chunk."""

    __slots__ = ("_cycle", "_head", "_protocol", "_transport")

    def __init__(self, protocol: GatewayProtocol, cycle: RequestResponseCycle) -> None:
        self._protocol = protocol
        # A weak reference: the cycle's scope holds this writer, and a strong one back would
        # make every request a reference cycle for the garbage collector (long gen-2 pauses).
        self._cycle = weakref.ref(cycle)
        self._transport = protocol.transport
        self._head = cycle.scope["method"] == "HEAD"

    def write(self, data: bytes) -> bool:
        cycle = self._cycle()
        if (
            cycle is None
            or cycle.disconnected
            or not cycle.response_started
            or cycle.response_complete
        ):
            return False
        if data and not self._head:
            if cycle.chunked_encoding:
                self._transport.write(b"%x\r\n%s\r\n" % (len(data), data))
            elif len(data) > cycle.expected_content_length:
                return False  # more than its Content-Length: uvicorn's own send refuses it too
            else:
                cycle.expected_content_length -= len(data)
                self._transport.write(data)
        return not cycle.flow.write_paused

    def on_resume(self, callback: Callable[[], None] | None) -> None:
        self._protocol.on_resume = callback


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
