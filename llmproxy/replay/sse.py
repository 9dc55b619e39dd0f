"""What a streamed answer tells a user: when text arrived, how much, and whether it ended well.

:class:`StreamScan` is fed the body's bytes as they arrive, each with its arrival time, and
splits them into server-sent events. A *content* event is one that carries text (``delta.content``
of a chat chunk, ``text`` of a completion chunk, also reasoning text or tool calls): the first one
is the time to first token — a role-only first chunk or a keep-alive comment is not something a
user sees. The final usage event (``stream_options.include_usage``) gives the exact output token
count; without one, content events are counted instead. A stream is whole only when it ends with
``data: [DONE]`` and had no error event (the gateway reports a backend failing mid-stream as an
SSE ``error`` event, never as a fake ``finish_reason``).
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[Any] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None


class _Usage(msgspec.Struct):
    completion_tokens: int | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: Any = None


class _Body(msgspec.Struct):
    usage: _Usage | None = None


_chunk = msgspec.json.Decoder(_Chunk)
_body = msgspec.json.Decoder(_Body)
_DONE = b"[DONE]"


def _has_content(choice: _Choice) -> bool:
    if choice.text:
        return True
    delta = choice.delta
    return delta is not None and bool(delta.content or delta.reasoning_content or delta.tool_calls)


class StreamScan:
    """Events of one SSE body, fed in arbitrary pieces (see the module docstring)."""

    __slots__ = (
        "_buffer",
        "content_events",
        "done",
        "error",
        "first_content",
        "last_content",
        "usage_tokens",
    )

    def __init__(self) -> None:
        self._buffer = b""
        self.first_content: float | None = None
        self.last_content: float | None = None
        self.content_events = 0
        self.usage_tokens: int | None = None
        self.done = False
        self.error: str | None = None
        """The first error event's payload (shortened), or None."""

    def feed(self, data: bytes, now: float) -> None:
        """Take the next piece of the body, which arrived at ``now``."""
        buffer = self._buffer + data if self._buffer else data
        if b"\r" in buffer:  # CRLF line ends; a pair split across pieces is joined next time
            buffer = buffer.replace(b"\r\n", b"\n")
        start = 0
        while (end := buffer.find(b"\n\n", start)) >= 0:
            self._event(buffer[start:end], now)
            start = end + 2
        self._buffer = buffer[start:]

    def _event(self, raw: bytes, now: float) -> None:
        data: list[bytes] = []
        name = b""
        for line in raw.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[5:].strip())
            elif line.startswith(b"event:"):
                name = line[6:].strip()
        if not data:
            return  # a comment or keep-alive
        payload = b"\n".join(data)
        if payload == _DONE:
            self.done = True
            return
        if name == b"error":
            self._fail(payload)
            return
        try:
            chunk = _chunk.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # not a chunk we understand: neither content nor an error
        if chunk.error is not None:
            self._fail(payload)
            return
        if chunk.usage is not None and chunk.usage.completion_tokens is not None:
            self.usage_tokens = chunk.usage.completion_tokens
        if chunk.choices and any(_has_content(choice) for choice in chunk.choices):
            self.content_events += 1
            if self.first_content is None:
                self.first_content = now
            self.last_content = now

    def _fail(self, payload: bytes) -> None:
        if self.error is None:
            self.error = payload[:200].decode(errors="replace")

    @property
    def output_tokens(self) -> int:
        """Tokens of the answer: the usage event's count, else the content events."""
        return self.usage_tokens if self.usage_tokens is not None else self.content_events

    @property
    def mean_gap(self) -> float | None:
        """Mean seconds between content events (inter-token latency); None below two events."""
        if self.content_events < 2 or self.first_content is None or self.last_content is None:
            return None
        return (self.last_content - self.first_content) / (self.content_events - 1)

    @property
    def complete(self) -> bool:
        """The stream ended with ``[DONE]`` and carried no error event."""
        return self.done and self.error is None


def body_output_tokens(body: bytes) -> int | None:
    """``usage.completion_tokens`` of a whole (non-streamed) JSON answer, or None."""
    try:
        usage = _body.decode(body).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return None if usage is None else usage.completion_tokens
