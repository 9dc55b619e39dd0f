"""Raw HTTP on loopback for the security tests: a capture backend that records exactly what
arrives, and a client that sends exactly the bytes it is given (no normalising, no retries)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

CRLF = b"\r\n"


@dataclass
class Received:
    """One request as the backend's socket saw it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def parsed(self) -> Any:
        """The body as a Python backend (vLLM's FastAPI) parses it: the last duplicate wins."""
        return json.loads(self.body)

    def parsed_first(self) -> Any:
        """The body as a first-duplicate-wins parser reads it."""

        def first(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for key, value in pairs:
                out.setdefault(key, value)
            return out

        return json.loads(self.body, object_pairs_hook=first)


Responder = Callable[[Received], bytes | Awaitable[bytes]]


def chat_answer(request: Received) -> bytes:
    """A vLLM-like answer: SSE with a usage event when the body asks to stream, else JSON."""
    try:
        body = request.parsed()
    except ValueError:
        body = {}
    model = body.get("model", "default-model") if isinstance(body, dict) else "default-model"
    usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    if isinstance(body, dict) and body.get("stream") is True:
        chunk = {"id": "c", "object": "chat.completion.chunk", "model": model}
        events = [
            {**chunk, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]},
            {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
        options = body.get("stream_options") or {}
        if isinstance(options, dict) and options.get("include_usage"):
            events.append({**chunk, "choices": [], "usage": usage})
        payload = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
        payload += b"data: [DONE]\n\n"
        return response(200, payload, b"text/event-stream")
    answer = {
        "id": "c",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": usage,
    }
    return response(200, json.dumps(answer).encode())


def response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
        % (status, content_type, len(body))
        + body
    )


@dataclass
class CaptureBackend:
    """A backend that records every request byte for byte and answers with ``respond``."""

    respond: Responder = chat_answer
    close_after: bool = False
    """Close the connection after each answer (for answers whose framing lies)."""
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _connections: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._answer(reader, writer)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
            while True:
                head = await reader.readuntil(CRLF + CRLF)
                request_line, *lines = head[:-4].split(CRLF)
                method, target, _version = request_line.split(b" ", 2)
                headers = []
                for line in lines:
                    name, _, value = line.partition(b":")
                    headers.append((name.strip().lower(), value.strip()))
                length = int(dict(headers).get(b"content-length", b"0"))
                body = await reader.readexactly(length)
                request = Received(method, target, headers, body)
                self.received.append(request)
                answer = self.respond(request)
                if inspect.isawaitable(answer):
                    answer = await answer
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break

    async def __aenter__(self) -> CaptureBackend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)


@dataclass
class RawResponse:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error_code(self) -> str | None:
        """The OpenAI error body's code (asserting the body has the OpenAI shape)."""
        assert self.headers.get(b"content-type") == b"application/json", self
        error = self.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str)
        return error["code"]  # type: ignore[no-any-return]


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """One HTTP/1.1 response (content-length or chunked) off ``reader``."""
    head = await reader.readuntil(CRLF + CRLF)
    status_line, *lines = head[:-4].split(CRLF)
    headers: dict[bytes, bytes] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding") == b"chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(CRLF)).strip(), 16)
            if size == 0:
                await reader.readuntil(CRLF)
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.read()
    return RawResponse(int(status_line.split(b" ")[1]), headers, body)


def http_request(
    method: str,
    target: bytes,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> bytes:
    """The exact bytes of one request (``target`` sent as it is)."""
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"host: gateway"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}".encode())
    if body or method == "POST":
        lines.append(b"content-type: application/json")
        lines.append(b"content-length: %d" % len(body))
    return CRLF.join(lines) + CRLF + CRLF + body


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
