"""A backend cheap enough to stream 20,000 tokens a second beside the gateway it measures.

The project's own mock (:mod:`llmproxy.mock`) is an aiohttp application with a task and a sleep per
stream: faithful, but at a thousand streams of 20 tokens a second it would take more of the
2-core machine than the gateway, and the benchmark would measure the mock. This one is a plain
``asyncio.Protocol`` on uvloop with the C ``httptools`` parser: every chunk is a prebuilt byte
string written by one timer callback, about 2 µs of CPU.

It answers ``POST /v1/chat/completions`` (and any other path) like vLLM would for the benchmark's
purpose: streamed when the body says ``"stream": true`` (chunked ``text/event-stream``, one event
per token, a usage event when ``include_usage`` is asked for, then ``[DONE]``), otherwise one JSON
answer. ``POST /v1/messages`` and ``/v1/responses`` answer in Anthropic's and OpenAI's Responses
shapes the same way (the events :mod:`llmproxy.mock` sends: an opening burst without text, one
``content_block_delta`` / ``response.output_text.delta`` per token, then the closing events with
the usage), so the gateway meters them as it would a real server's and ``--api`` compares the
APIs over one backend. ``x-mock-tokens`` and ``x-mock-itl`` override ``--tokens``/``--itl`` per
request, as :mod:`llmproxy.mock` does. ``GET /health`` answers 200. It counts the token chunks it
wrote: ``GET /mock/chunks`` returns the count, which is what "CPU per relayed chunk" divides by.

``python -m bench.stream_mock --port P [--tokens 100] [--itl 0.05]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
from typing import Any, cast

import httptools
import uvloop

_ID = "chatcmpl-bench0000000000000000000000"


def _frame(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _event(payload: dict[str, object]) -> bytes:
    return _frame(b"data: " + _encode(payload) + b"\n\n")


def _typed(payload: dict[str, Any]) -> bytes:
    """An event as Anthropic and the Responses API frame it: its ``type`` as the event name."""
    name: str = payload["type"]
    return _frame(b"event: " + name.encode() + b"\ndata: " + _encode(payload) + b"\n\n")


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


def _json(body: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % len(body) + body


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


class ChatAnswer:
    """One chat completion: the events of its stream, or its JSON answer.

    Each API's answer has the same four parts, so :class:`Stream` writes any of them alike: the
    opening events (no text yet: what time to first token sees), one event per token, the
    closing events (with the usage) and the end of the chunked body.
    """

    def __init__(self, tokens: int, usage: bool) -> None:
        self.tokens, self.usage = tokens, usage

    def opening(self) -> bytes:
        return _FIRST

    def token(self, index: int) -> bytes:
        return _TOKEN

    def closing(self) -> bytes:
        return _LAST + (_usage(self.tokens) if self.usage else b"") + _DONE

    def whole(self) -> bytes:
        return _json_answer(self.tokens)


_END = b"0\r\n\r\n"
_MESSAGE_ID = "msg_bench0000000000000000000000"
_TEXT_DELTA = _typed(
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " token"}}
)


class MessagesAnswer(ChatAnswer):
    """One Anthropic message, with the events :mod:`llmproxy.mock._messages` sends."""

    def _message(self, content: list[dict[str, str]], stop: str | None, out: int) -> dict[str, Any]:
        return {
            "id": _MESSAGE_ID,
            "type": "message",
            "role": "assistant",
            "model": "mock-model",
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": out,
            },
        }

    def opening(self) -> bytes:
        return b"".join(
            (
                _typed({"type": "message_start", "message": self._message([], None, 1)}),
                _typed({"type": "ping"}),
                _typed(
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    }
                ),
            )
        )

    def token(self, index: int) -> bytes:
        return _TEXT_DELTA

    def closing(self) -> bytes:
        delta = {"stop_reason": "end_turn", "stop_sequence": None}
        return b"".join(
            (
                _typed({"type": "content_block_stop", "index": 0}),
                _typed(
                    {
                        "type": "message_delta",
                        "delta": delta,
                        "usage": {"output_tokens": self.tokens},
                    }
                ),
                _typed({"type": "message_stop"}),
                _END,
            )
        )

    def whole(self) -> bytes:
        content = [{"type": "text", "text": " token" * self.tokens}]
        return _json(_encode(self._message(content, "end_turn", self.tokens)))


_response_ids = itertools.count()


class ResponsesAnswer(ChatAnswer):
    """One OpenAI Responses API response, with the events :mod:`llmproxy.mock._responses`
    sends. Each has its own id, as a real server's does: the gateway notes which backend made
    every response (for follow-ups), and one id over and over would make that cheaper."""

    def __init__(self, tokens: int, usage: bool) -> None:
        super().__init__(tokens, usage)
        number = next(_response_ids)
        self.id, self.item_id = f"resp_bench{number:020d}", f"msg_bench{number:020d}"
        self._delta = (
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            b'"item_id":"' + self.item_id.encode() + b'","output_index":0,"content_index":0,'
            b'"logprobs":[],"delta":" token","sequence_number":%d}\n\n'
        )

    def _response(self, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        usage = {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 10 + self.tokens,
        }
        return {
            "id": self.id,
            "object": "response",
            "created_at": 1700000000,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "model": "mock-model",
            "output": output,
            "store": True,
            "usage": None if status == "in_progress" else usage,
        }

    def _item(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [_output_text(text)]
        return {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def _where(self, sequence: int, kind: str) -> dict[str, Any]:
        return {
            "type": kind,
            "item_id": self.item_id,
            "output_index": 0,
            "content_index": 0,
            "sequence_number": sequence,
        }

    def opening(self) -> bytes:
        started = self._response("in_progress", [])
        added = {"type": "response.output_item.added", "output_index": 0, "sequence_number": 2}
        added["item"] = self._item("in_progress", None)
        return b"".join(
            (
                _typed({"type": "response.created", "response": started, "sequence_number": 0}),
                _typed({"type": "response.in_progress", "response": started, "sequence_number": 1}),
                _typed(added),
                _typed({**self._where(3, "response.content_part.added"), "part": _output_text("")}),
            )
        )

    def token(self, index: int) -> bytes:
        return _frame(self._delta % (4 + index))

    def closing(self) -> bytes:
        text, seq = " token" * self.tokens, 4 + self.tokens
        item = self._item("completed", text)
        done = {**self._where(seq, "response.output_text.done"), "text": text, "logprobs": []}
        return b"".join(
            (
                _typed(done),
                _typed(
                    {
                        **self._where(seq + 1, "response.content_part.done"),
                        "part": item["content"][0],
                    }
                ),
                _typed(
                    {
                        "type": "response.output_item.done",
                        "output_index": 0,
                        "item": item,
                        "sequence_number": seq + 2,
                    }
                ),
                _typed(
                    {
                        "type": "response.completed",
                        "response": self._response("completed", [item]),
                        "sequence_number": seq + 3,
                    }
                ),
                _END,
            )
        )

    def whole(self) -> bytes:
        item = self._item("completed", " token" * self.tokens)
        return _json(_encode(self._response("completed", [item])))


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def answer_for(url: bytes, tokens: int, usage: bool) -> ChatAnswer:
    """The answer of the API ``url`` names (chat for any path but Messages' and Responses')."""
    path = url.split(b"?", 1)[0]
    if path == b"/v1/messages":
        return MessagesAnswer(tokens, usage)
    if path == b"/v1/responses":
        return ResponsesAnswer(tokens, usage)
    return ChatAnswer(tokens, usage)


class Stream:
    """One answer being written, one timer callback per token."""

    __slots__ = ("answer", "handle", "itl", "left", "loop", "tokens", "transport")

    def __init__(
        self, transport: asyncio.Transport, tokens: int, itl: float, answer: ChatAnswer
    ) -> None:
        self.transport = transport
        self.tokens = self.left = tokens
        self.itl = itl
        self.answer = answer
        self.loop = asyncio.get_running_loop()
        self.handle: asyncio.TimerHandle | asyncio.Handle | None = None

    def start(self) -> None:
        self.transport.write(_STREAM_HEAD + self.answer.opening())
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
        token = self.answer.token(self.tokens - self.left - 1)
        if self.left > 0:
            transport.write(token)
            self._next()
            return
        transport.write(token + self.answer.closing())
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
        answer = answer_for(self._url, tokens, b'"include_usage":true' in body)
        if b'"stream":true' in body.replace(b" ", b""):
            self._stream = Stream(transport, tokens, itl, answer)
            self._stream.start()
        else:
            Counters.chunks += 1
            transport.write(answer.whole())


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
