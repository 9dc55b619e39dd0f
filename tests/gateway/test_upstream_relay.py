"""The relay's own upstream HTTP/1.1 leg (``gateway.upstream_http``), end to end through the
gateway against raw-socket backends: keep-alive reuse, a kept-alive connection the backend closed,
a backend under a path prefix, a HEAD answer, and flow control from a client that stops reading
back to the backend."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from tests.harness import gateway, make_config

SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(text: str) -> bytes:
    return _chunk(
        b'data: {"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}\n\n'
        % text.encode()
    )


_END = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class _Backend(asyncio.Protocol):
    """One connection of a scripted backend: ``answer(protocol, head)`` runs per request."""

    def __init__(self, owner: RawBackend) -> None:
        self.owner = owner
        self.buffer = b""
        self.requests = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.owner.connections += 1
        self.owner.protocols.append(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.requests += 1
            self.owner.heads.append(head)
            self.owner.answer(self, head)


class RawBackend:
    def __init__(self, answer: Callable[[_Backend, bytes], None]) -> None:
        self.answer = answer
        self.connections = 0
        self.heads: list[bytes] = []
        self.protocols: list[_Backend] = []
        self.port = 0
        self.sent = 0


@contextlib.asynccontextmanager
async def raw_backend(answer: Callable[[_Backend, bytes], None]) -> AsyncIterator[RawBackend]:
    backend = RawBackend(answer)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Backend(backend), "127.0.0.1", 0)
    backend.port = server.sockets[0].getsockname()[1]
    try:
        yield backend
    finally:
        server.close()
        for protocol in backend.protocols:
            if protocol.transport is not None:
                protocol.transport.abort()


def _stream_answer(protocol: _Backend, head: bytes) -> None:
    assert protocol.transport is not None
    protocol.transport.write(SSE + _event("a") + _event("b") + _END)


BODY = {"model": "m", "messages": [], "stream": True}


async def test_one_kept_alive_connection_serves_requests_one_after_another() -> None:
    async with raw_backend(_stream_answer) as backend:
        config = make_config([{"url": f"http://127.0.0.1:{backend.port}"}])
        async with gateway(config) as gw, httpx.AsyncClient() as client:
            for _ in range(5):
                answer = await client.post(gw.url + "/v1/chat/completions", json=BODY)
                assert answer.status_code == 200
                assert answer.text.endswith("data: [DONE]\n\n")
        assert backend.connections == 1
        assert backend.protocols[0].requests == 5


async def test_a_kept_alive_connection_the_backend_dropped_is_not_a_failure() -> None:
    """The backend answers the first request on a connection and closes on the second without a
    word (its keep-alive ran out as the request went out): the gateway sends it again on a new
    connection, the client gets its answer, and the backend stays healthy."""

    def answer(protocol: _Backend, head: bytes) -> None:
        assert protocol.transport is not None
        if protocol.requests > 1:
            protocol.transport.close()
            return
        _stream_answer(protocol, head)

    async with raw_backend(answer) as backend:
        config = make_config(
            [{"url": f"http://127.0.0.1:{backend.port}"}],
            routing={"retry": {"max_retries": 0}},
        )
        async with gateway(config) as gw, httpx.AsyncClient() as client:
            for _ in range(3):
                answer_ = await client.post(gw.url + "/v1/chat/completions", json=BODY)
                assert answer_.status_code == 200
                assert answer_.headers["x-llmproxy-attempts"] == "1"
            backend_state = gw.runtime.backends[0]
            now = asyncio.get_running_loop().time()
            assert not backend_state.is_down(now)
        assert backend.connections == 3


async def test_a_backend_under_a_path_prefix_gets_the_prefix_and_the_raw_target() -> None:
    async with raw_backend(_stream_answer) as backend:
        config = make_config([{"url": f"http://127.0.0.1:{backend.port}/serving/v1-proxy"}])
        async with gateway(config) as gw, httpx.AsyncClient() as client:
            answer = await client.post(gw.url + "/v1/chat/completions?x=%41", json=BODY)
            assert answer.status_code == 200
        request_line = backend.heads[0].split(b"\r\n")[0]
        assert request_line == b"POST /serving/v1-proxy/v1/chat/completions?x=%41 HTTP/1.1"
        headers = backend.heads[0].lower()
        assert f"host: 127.0.0.1:{backend.port}".encode() in headers
        assert b"content-length: " in headers


async def test_a_head_answer_has_no_body_whatever_its_length_says() -> None:
    def answer(protocol: _Backend, head: bytes) -> None:
        assert protocol.transport is not None
        protocol.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1234\r\n\r\n"
        )

    async with raw_backend(answer) as backend:
        config = make_config([{"url": f"http://127.0.0.1:{backend.port}"}])
        async with gateway(config) as gw, httpx.AsyncClient(timeout=5) as client:
            answer_ = await client.head(gw.url + "/v1/files/file-1")
            assert answer_.status_code == 200
            assert answer_.content == b""
        assert backend.heads[0].startswith(b"HEAD /v1/files/file-1 HTTP/1.1")


async def test_a_client_that_stops_reading_stops_the_gateway_reading_the_backend() -> None:
    """Flow control end to end: the backend writes as fast as it can; while the client reads
    nothing, the gateway stops reading the backend (whose send buffer then fills up) instead of
    buffering the answer in memory; once the client reads again, the whole answer arrives."""
    event = _event("x" * 4000)
    total = 10_000  # 40 MB of events: more than every socket buffer on the way can hold

    def answer(protocol: _Backend, head: bytes) -> None:
        transport = protocol.transport
        assert transport is not None
        transport.write(SSE)
        sent = 0

        def more() -> None:
            nonlocal sent
            while sent < total and transport.get_write_buffer_size() < 1 << 20:
                transport.write(event)
                sent += 1
            protocol.owner.sent = sent
            if sent < total:
                asyncio.get_running_loop().call_later(0.01, more)
            else:
                transport.write(_END)

        more()

    async with raw_backend(answer) as backend:
        config = make_config([{"url": f"http://127.0.0.1:{backend.port}"}])
        async with gateway(config) as gw:
            port = int(gw.url.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            body = b'{"model": "m", "messages": [], "stream": true}'
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
                b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
            await asyncio.sleep(1.0)  # not reading: buffers fill, the gateway must stop reading
            stalled_at = backend.sent
            await asyncio.sleep(0.5)
            # Without flow control the gateway would read on into its own memory and the backend
            # would have sent all 40 MB by now; with it, the backend is stuck once the socket
            # buffers on the way are full.
            assert backend.sent == stalled_at < total, f"{backend.sent} of {total} events sent"
            received = 0
            while True:
                data = await asyncio.wait_for(reader.read(1 << 16), 10)
                if not data:
                    break
                received += len(data)
                if data.endswith(b"0\r\n\r\n"):
                    break
            writer.close()
            assert received > total * len(event) * 0.99


async def test_the_request_line_and_headers_are_built_byte_for_byte_and_never_split() -> None:
    from llmproxy.errors import GatewayError
    from llmproxy.gateway.proxy import request_bytes
    from llmproxy.gateway.upstream_http import UpstreamPool

    pool = UpstreamPool("http://127.0.0.1:8000/base", connect_timeout=None)
    wire = request_bytes("POST", pool, "/v1/chat/completions?a=%20", {"x-a": "é"}, b"{}")
    assert wire == (
        b"POST /base/v1/chat/completions?a=%20 HTTP/1.1\r\nhost: 127.0.0.1:8000\r\n"
        b"x-a: \xc3\xa9\r\ncontent-length: 2\r\n\r\n{}"
    )
    assert b"content-length" not in request_bytes("GET", pool, "/v1/files", {}, b"")
    for value in ("a\r\nx-evil: 1", "a\nb", "a\rb"):
        with pytest.raises(GatewayError) as refused:
            request_bytes("POST", pool, "/v1/x", {"x-a": value}, b"")
        assert refused.value.status == 400
