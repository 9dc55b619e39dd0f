"""The upstream HTTP/1.1 leg: pooled connections to one backend, answers relayed from callbacks.

Why not aiohttp's client here: relaying one streamed chunk through it costs a buffer, a future,
a task wake-up through a dozen coroutine frames and a timer re-armed per read — measured on a
2-core machine, 62 µs of CPU per relayed chunk against 34 µs for a bare ``asyncio.Protocol`` relay
and 28 µs for nginx (the ``decode`` scenario of ``python -m bench`` measures it). At a thousand
streams decoding at 20 tokens/s that is the difference between a gateway nobody notices and one
whose event loop is always late. So the body of an answer is parsed by the C ``httptools`` parser
inside the connection's ``data_received`` and handed, a read's chunks at a time and
synchronously, to the sink the relay installed (which writes them to the client's socket at
once). Nothing per chunk is scheduled; the coroutine
serving the request sleeps until the answer ends. aiohttp stays the client for everything that
is not the relay hot path (health probes, ``/v1/models``, webhooks).

One :class:`UpstreamConnection` carries one exchange at a time; :class:`UpstreamPool` keeps the
idle ones (newest first, dropped after :data:`KEEPALIVE` seconds idle or when the backend closes
them) and caps the open ones at the backend's ``max_connections``. Failures are
:class:`UpstreamError` with a ``kind`` the proxy maps to its answer: ``unreachable`` (no
connection, or closed before any answer), ``invalid`` (not HTTP the gateway can relay: a malformed
or oversized head, broken framing), ``timeout`` (silence past the limit) or ``reset`` (broken off
mid-body).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable
from typing import Literal, cast
from urllib.parse import urlsplit

import httptools

KEEPALIVE = 30.0
"""Seconds an idle pooled connection is kept."""
MAX_HEAD = 64 * 1024
"""Largest answer head (status line and headers) relayed; a larger one is ``invalid``."""
MAX_HEADERS = 256
"""Most header lines in an answer head."""
HIGH_WATER = 256 * 1024
"""Bytes of an answer buffered (before the relay takes them) before the backend is paused."""

ErrorKind = Literal["unreachable", "invalid", "timeout", "reset"]
Sink = Callable[[bytes], None]


class UpstreamError(Exception):
    """The exchange failed; ``kind`` says how (see the module docstring)."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(detail)
        self.kind: ErrorKind = kind
        self.detail = detail


class _StopParsing(Exception):
    """Raised from a parser callback: the head is not one the gateway relays."""


class UpstreamConnection(asyncio.Protocol):
    """One connection to a backend; one request and its answer at a time.

    The relay's side: :meth:`send` writes a request and waits for the answer's head; the body
    then collects in :attr:`pending` until a :attr:`sink` is set (from then on each chunk goes
    to the sink as it is parsed); :meth:`body_started` waits for the first body bytes (or the
    end); :meth:`finished` waits for the end of the answer.
    """

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.used = 0
        """Exchanges started on this connection (> 0 before :meth:`send`: a reused one)."""
        self.counted = True
        """Still counted among the pool's open connections."""
        self.pooled = False
        """Waiting in the pool's idle list."""
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.content_type = ""
        self.pending: list[bytes] = []
        self._pending_bytes = 0
        self.sink: Sink | None = None
        self._batch: list[bytes] = []
        """Body chunks of the read being parsed, for the sink (see :meth:`on_body`)."""
        self.complete = False
        self.received = 0
        """Bytes received for this exchange (0 when the backend closed without answering)."""
        self._head_bytes = 0
        self._head: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_limit = 0.0
        self._last_read = 0.0
        self._paused = False
        self._length_known = False
        self._keep_alive = False
        self._no_body = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._head is None:
            self._close_transport()  # talking while idle: not a connection to reuse
            return
        self.received += len(data)
        if self._idle_limit:
            self._last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except _StopParsing:
            return
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("invalid", "an upgrade answer"))
        except httptools.HttpParserError as error:
            self._fail(UpstreamError("invalid", f"malformed HTTP: {error}"))
        if self._batch:
            self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if self._head is None or self.complete or self._error is not None:
            return
        if self._head.done() and not self._length_known and self.status:
            # An answer delimited by the end of the connection (no length, not chunked).
            self._on_end()
            return
        if not self._head.done():
            self._fail(UpstreamError("unreachable", "the backend closed the connection"))
        else:
            self._fail(UpstreamError("reset", "the backend closed the connection mid-answer"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        headers = self.raw_headers
        headers.append((name, value))
        if self._head_bytes > MAX_HEAD or len(headers) > MAX_HEADERS:
            self._fail(UpstreamError("invalid", "an oversized header block"))
            raise _StopParsing

    def on_headers_complete(self) -> None:
        parser = self._parser
        self.status = parser.get_status_code()
        # Asked now: once the answer is complete the parser has reset and always says no.
        self._keep_alive = parser.should_keep_alive()
        for name, value in self.raw_headers:
            lower = name.lower()
            if lower == b"content-type":
                self.content_type = value.split(b";", 1)[0].strip().lower().decode("latin-1")
            elif lower == b"content-length" or (
                lower == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                self._length_known = True
        self._cancel_timer()
        head = self._head
        if head is not None and not head.done():
            head.set_result(None)
        if self._no_body:
            self._length_known = False  # what follows cannot be framed: never reused
            self._on_end()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        if self.sink is not None:
            # Every chunk of this read goes to the sink at once, after the read is parsed: a
            # backend ahead of a busy gateway costs one client write per read, not per chunk.
            self._batch.append(body)
            return
        self.pending.append(body)
        self._pending_bytes += len(body)
        if self._pending_bytes > HIGH_WATER:
            self.pause()
        self._wake()

    def on_message_complete(self) -> None:
        if self._batch:
            self._flush()
        self._on_end()

    def _flush(self) -> None:
        batch = self._batch
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        batch.clear()
        if self.sink is not None:
            self.sink(data)

    # the relay's side

    async def send(
        self, request: bytes, first_byte_timeout: float | None, *, no_body: bool = False
    ) -> None:
        """Write ``request`` and wait for the answer's head (:attr:`status`, :attr:`raw_headers`).

        ``no_body``: the answer has none whatever its head says (a ``HEAD`` request); the
        connection is then not reused. Raises :class:`UpstreamError` (``timeout`` after
        ``first_byte_timeout`` seconds)."""
        transport = self.transport
        if transport is None or self.closed:
            raise UpstreamError("unreachable", "the connection is closed")
        self._reset_exchange()
        self._no_body = no_body
        self.used += 1
        loop = self._loop
        head = self._head = loop.create_future()
        if first_byte_timeout:
            self._timer = loop.call_later(first_byte_timeout, self._on_timeout)
        transport.write(request)
        try:
            await head
        except asyncio.CancelledError:
            self.abort()
            raise
        if self._error is not None and self.status == 0:
            raise self._error

    def watch_idle(self, seconds: float | None) -> None:
        """Fail the exchange with ``timeout`` when the backend stays silent ``seconds`` between
        two reads. One timer, re-armed only when it fires: a read costs one clock read."""
        self._cancel_timer()
        if not seconds or self.complete or self._error is not None:
            self._idle_limit = 0.0
            return
        self._idle_limit = seconds
        self._last_read = self._loop.time()
        self._timer = self._loop.call_later(seconds, self._check_idle)

    def _check_idle(self) -> None:
        self._timer = None
        if self.complete or self._error is not None:
            return
        silent = self._loop.time() - self._last_read
        if silent >= self._idle_limit or self._paused:
            if not self._paused:
                self._fail(UpstreamError("timeout", "the backend went silent"))
                return
            self._last_read = self._loop.time()  # paused by us: the silence is the client's
        self._timer = self._loop.call_later(self._idle_limit - silent, self._check_idle)

    def take_pending(self) -> bytes:
        """The body bytes received and not yet taken."""
        pending = self.pending
        if not pending:
            return b""
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self.pending = []
        self._pending_bytes = 0
        if self._paused and self.sink is None:
            self.resume()
        return data

    async def body_started(self) -> None:
        """Wait until body bytes are pending or the answer ended (raises its failure)."""
        while not self.pending and not self.complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        if self._error is not None and not self.pending:
            raise self._error

    async def finished(self) -> None:
        """Wait for the end of the answer; raises :class:`UpstreamError` if it broke off."""
        while not self.complete:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def pause(self) -> None:
        """Stop reading from the backend (the client is not taking the answer)."""
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    @property
    def reusable(self) -> bool:
        """Whether the exchange ended cleanly on a connection the backend keeps open."""
        return (
            self.complete
            and self._error is None
            and not self.closed
            and self._length_known
            and self._keep_alive
        )

    def idle(self) -> None:
        """Back in the pool: no exchange, so any byte the backend sends now closes it."""
        self.sink = None
        self._head = None

    def abort(self) -> None:
        """Close the connection now: the backend sees its client leave and stops. A close,
        not a reset: a request still on its way is read, so the backend learns of it and of
        its end alike instead of losing both to the reset."""
        self._cancel_timer()
        self._close_transport()

    def give_up(self, detail: str) -> None:
        """Stop reading an answer the gateway will not relay (one too large to hold): the
        exchange fails as ``invalid`` and the connection closes."""
        self._fail(UpstreamError("invalid", detail))

    # internals

    def _on_end(self) -> None:
        self.complete = True
        self._cancel_timer()
        self._wake()

    def _on_timeout(self) -> None:
        self._timer = None
        self._fail(UpstreamError("timeout", "the backend did not answer in time"))

    def _fail(self, error: UpstreamError) -> None:
        if self._error is not None or self.complete:
            return
        self._error = error
        self._cancel_timer()
        head = self._head
        if head is not None and not head.done():
            head.set_result(None)
        self._wake()
        self._close_transport()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_transport(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class UpstreamPool:
    """Connections to one backend URL: reused while idle, capped at ``max_connections``."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float | None,
        max_connections: int = 0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.loop = loop or asyncio.get_running_loop()
        self.host = parts.hostname or "127.0.0.1"
        tls = parts.scheme == "https"
        self.port = parts.port or (443 if tls else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        default_port = parts.port is None or parts.port == (443 if tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (host if default_port else f"{host}:{self.port}").encode("idna")
        self.path_prefix = parts.path.encode("ascii")
        """The URL's own path, before every request's target (a backend under a prefix)."""
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self._idle: collections.deque[UpstreamConnection] = collections.deque()
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    async def acquire(self) -> UpstreamConnection:
        """An idle connection (newest first) or a new one; waits while ``max_connections`` are
        open. Raises :class:`UpstreamError` (``unreachable``/``timeout``) when none can be made."""
        idle = self._idle
        now = self.loop.time()
        while idle:
            connection = idle.pop()
            connection.pooled = False
            if not connection.closed and now - connection.idle_since < KEEPALIVE:
                return connection
            self._discard(connection)
        while self.max_connections and self._open >= self.max_connections:
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if idle:
                return await self.acquire()
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self) -> UpstreamConnection:
        connecting = self.loop.create_connection(
            lambda: UpstreamConnection(self),
            self.host,
            self.port,
            ssl=self.ssl,
            server_hostname=self.host if self.ssl is not None else None,
        )
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the connection is made, and the request would go on without a
            # client (seen under load: a hundred requests kept streaming to nobody).
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await connecting
        except TimeoutError:
            raise UpstreamError("timeout", "connecting timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError("unreachable", type(exc).__name__) from None
        return protocol

    def release(self, connection: UpstreamConnection) -> None:
        """Give ``connection`` back after its exchange: kept if reusable, else closed."""
        if connection.reusable and not self._closed:
            connection.idle_since = self.loop.time()
            connection.idle()
            connection.pooled = True
            self._idle.append(connection)
            self._wake_one()
            return
        connection.abort()
        self._discard(connection)

    def forget(self, connection: UpstreamConnection) -> None:
        """``connection`` closed (by either side): out of the idle list if it waited there."""
        if connection.pooled:
            connection.pooled = False
            self._idle.remove(connection)
            self._discard(connection)

    def _discard(self, connection: UpstreamConnection) -> None:
        if connection.counted:
            connection.counted = False
            self._open -= 1
            self._wake_one()
        if not connection.closed:
            connection.abort()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close the idle connections; those in use close when their exchange ends."""
        self._closed = True
        while self._idle:
            connection = self._idle.pop()
            connection.pooled = False
            self._discard(connection)
