"""A backend cheap enough to stream 20,000 tokens a second beside the gateway it measures.

The project's own mock (:mod:`llmproxy.mock`) is an aiohttp application with a task and a sleep per
stream: faithful, but at a thousand streams of 20 tokens a second it would take more of the
2-core machine than the gateway, and the benchmark would measure the mock. This one is a plain
``asyncio.Protocol`` on uvloop with the C ``httptools`` parser: every chunk is a prebuilt byte
string written by one timer callback, about 2 µs of CPU.

It answers ``POST /v1/chat/completions`` (and any other path) like vLLM would for the benchmark's
purpose: streamed when the body says ``"stream": true`` (chunked ``text/event-stream``, one event
per token, a usage event when ``include_usage`` is asked for, then ``[DONE]``), otherwise one JSON
answer. ``x-mock-tokens`` and ``x-mock-itl`` override ``--tokens``/``--itl`` per request, as
:mod:`llmproxy.mock` does. ``GET /health`` answers 200. It counts the token chunks it wrote:
``GET /mock/chunks`` returns the count, which is what "CPU per relayed chunk" divides by.

``python -m bench.stream_mock --port P [--tokens 100] [--itl 0.05]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import cast

import httptools
import uvloop

_ID = "chatcmpl-bench0000000000000000000000"


def _event(payload: dict[str, object]) -> bytes:
    data = b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    return _event(
        {
            "id": _ID,
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "mock-model",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
    )


_FIRST = _chunk({"role": "assistant", "content": ""})
_TOKEN = _chunk({"content": " token"})
_LAST = _chunk({}, "stop")
_DONE = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def _usage(tokens: int) -> bytes:
    usage = {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": 10 + tokens}
    return _event(
        {
            "id": _ID,
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "mock-model",
            "choices": [],
            "usage": usage,
        }
    )


def _json_answer(tokens: int) -> bytes:
    body = json.dumps(
        {
            "id": _ID,
            "object": "chat.completion",
            "created": 1700000000,
            "model": "mock-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " token" * tokens},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": tokens,
                "total_tokens": 10 + tokens,
            },
        }
    ).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


class Counters:
    chunks = 0
    """Token events written (the usage event and ``[DONE]`` are not counted)."""


class Stream:
    """One answer being written, one timer callback per token."""

    __slots__ = ("handle", "itl", "left", "loop", "tokens", "transport", "usage")

    def __init__(self, transport: asyncio.Transport, tokens: int, itl: float, usage: bool) -> None:
        self.transport = transport
        self.tokens = self.left = tokens
        self.itl = itl
        self.usage = usage
        self.loop = asyncio.get_running_loop()
        self.handle: asyncio.TimerHandle | asyncio.Handle | None = None

    def start(self) -> None:
        self.transport.write(_STREAM_HEAD + _FIRST)
        self._next()

    def _next(self) -> None:
        if self.itl:
            self.handle = self.loop.call_later(self.itl, self._tick)
        else:
            self.handle = self.loop.call_soon(self._tick)

    def _tick(self) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        Counters.chunks += 1
        self.left -= 1
        if self.left > 0:
            transport.write(_TOKEN)
            self._next()
            return
        tail = _LAST + (_usage(self.tokens) if self.usage else b"") + _DONE
        transport.write(_TOKEN + tail)
        self.handle = None

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


class MockProtocol(asyncio.Protocol):
    """One client connection: parse requests, answer each one (keep-alive)."""

    def __init__(self, tokens: int, itl: float) -> None:
        self._defaults = (tokens, itl)
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._url = b""
        self._stream: Stream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stream is not None:
            self._stream.cancel()

    def on_message_begin(self) -> None:
        self._headers = {}
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        transport = self._transport
        assert transport is not None
        if self._url == b"/health":
            transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            return
        if self._url == b"/mock/chunks":
            body = str(Counters.chunks).encode()
            transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            return
        tokens, itl = self._defaults
        if b"x-mock-tokens" in self._headers:
            tokens = max(1, int(self._headers[b"x-mock-tokens"]))
        if b"x-mock-itl" in self._headers:
            itl = float(self._headers[b"x-mock-itl"])
        body = b"".join(self._body)
        if b'"stream":true' in body.replace(b" ", b""):
            self._stream = Stream(transport, tokens, itl, b'"include_usage":true' in body)
            self._stream.start()
        else:
            Counters.chunks += 1
            transport.write(_json_answer(tokens))


async def serve(port: int, tokens: int, itl: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: MockProtocol(tokens, itl), "127.0.0.1", port, backlog=4096
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_mock")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--itl", type=float, default=0.0)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, args.tokens, args.itl))


if __name__ == "__main__":
    main()
