"""Token usage of a typed-event stream — Anthropic Messages, OpenAI Responses — read from the SSE
bytes as they are relayed, never changing them.

Both APIs name every event by a ``"type"`` in its data and always report usage in the stream
(the gateway asks for nothing, so nothing is ever cut out):

- Messages: ``message_start`` carries the prompt's tokens (``input_tokens`` plus the cache's
  fields), each ``content_block_delta`` is about one token, ``message_delta`` carries the
  answer's final ``output_tokens`` and ``stop_reason``, ``message_stop`` ends the stream.
- Responses: each ``response.*.delta`` (text, reasoning, tool arguments) is about one token;
  ``response.completed`` (or ``incomplete`` / ``failed``) carries the whole response, its
  ``usage`` and ``status``, and ends the stream.

Deltas are counted with one ``bytes.count`` per chunk of whole events; only the few events that
carry usage are decoded (into structs that hold nothing else). A client that leaves early is
billed the backend's prompt count (when ``message_start`` came) plus the deltas it was sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import msgspec

from llmproxy.apis import Api
from llmproxy.finish import UsageSource
from llmproxy.usage.extract import Usage, UsageFields
from llmproxy.usage.stream import StreamUsage

_MAX_EVENT: Final = 64 * 1024
"""An event still open past this many bytes is not read (``response.completed`` of a long answer
holds its whole text and may be longer: its usage is then not read, and the count stands)."""

_MAX_USAGE_EVENT: Final = 16 * 1024 * 1024
"""...except when the event is one that carries usage: kept up to this many bytes."""


def _typed(*names: str) -> tuple[bytes, ...]:
    """``"type":"<name>"`` as JSON writers put it, with or without a space: a member, never text
    (inside a JSON string every quote is escaped, so text cannot hold it; a text that *is* an
    event's name is ``"<name>"`` without the ``"type":`` before it)."""
    return tuple(f'"type":{space}"{name}"'.encode() for name in names for space in ("", " "))


@dataclass(frozen=True, slots=True)
class Dialect:
    """What marks a token, a usage event and the end in one API's stream."""

    deltas: tuple[bytes, ...] | re.Pattern[bytes]
    """A token's event holds one of these (or matches)."""
    usage: tuple[bytes, ...]
    """Events that carry usage (decoded)."""
    end: tuple[bytes, ...]
    """Events that end the stream properly."""

    def count(self, data: bytes) -> int:
        """Token events in ``data`` (whole events)."""
        deltas = self.deltas
        if isinstance(deltas, tuple):
            return sum(data.count(marker) for marker in deltas)
        return sum(1 for _ in deltas.finditer(data))


MESSAGES: Final = Dialect(
    deltas=_typed("content_block_delta"),
    usage=_typed("message_start", "message_delta"),
    end=_typed("message_stop"),
)
"""Anthropic Messages."""

_RESPONSE_ENDS: Final = _typed("response.completed", "response.incomplete", "response.failed")
RESPONSES: Final = Dialect(
    # response.output_text.delta, .reasoning_text.delta, .function_call_arguments.delta...
    deltas=re.compile(rb'"type": ?"response\.[a-z_.]*\.delta"'),
    usage=_RESPONSE_ENDS,
    end=_RESPONSE_ENDS,
)
"""OpenAI Responses."""

_ERRORS: Final = _typed("error")


class _Holder(msgspec.Struct):
    usage: UsageFields | None = None
    stop_reason: str | None = None
    status: str | None = None


class _Event(msgspec.Struct):
    type: str = ""
    usage: UsageFields | None = None
    message: _Holder | None = None  # message_start
    response: _Holder | None = None  # response.completed
    delta: _Holder | None = None  # message_delta: stop_reason


_decode_event = msgspec.json.Decoder(_Event).decode


class EventStreamUsage:
    """Follows one typed-event SSE stream through chunks cut anywhere (see the module
    docstring); the same reading interface as :class:`~llmproxy.usage.stream.StreamUsage`."""

    __slots__ = (
        "_cached",
        "_completion",
        "_deltas_since",
        "_dialect",
        "_held",
        "_limit",
        "_parts",
        "_prompt",
        "done",
        "error",
        "events",
        "finish_reason",
    )

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._parts: list[bytes] = []
        """The incomplete trailing event, in the pieces it came in (joined once it ends)."""
        self._held = 0
        self._limit = _MAX_EVENT
        self._prompt: int | None = None
        self._cached = 0  # of the prompt, tokens read from the prefix cache
        self._completion: int | None = None
        self._deltas_since = 0
        """Deltas after the backend's final count (a stream that went on: counted on top)."""
        self.events = 0
        """Token events relayed."""
        self.done = False
        self.error: bytes | None = None
        self.finish_reason: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        """Take the next upstream chunk; the bytes to send on: always ``chunk`` itself."""
        if self._parts:
            if b"\n" not in chunk:
                # Still inside a long line (JSON holds no raw newline): no event ends here.
                self._hold(chunk)
                return chunk
            parts, self._parts, self._held, self._limit = self._parts, [], 0, _MAX_EVENT
            data = b"".join((*parts, chunk))
        elif chunk.endswith(b"\n\n"):  # whole events, as servers write them
            self._events(chunk)
            return chunk
        else:
            data = chunk
        end = data.rfind(b"\n\n")
        crlf = data.rfind(b"\r\n\r\n")
        cut = max(end + 2 if end >= 0 else -1, crlf + 4 if crlf >= 0 else -1)
        if cut < 0:
            self._hold(data)
            return chunk
        self._events(data[:cut])
        if cut < len(data):
            self._hold(data[cut:])
        return chunk

    def _hold(self, piece: bytes) -> None:
        """Keep a piece of an incomplete trailing event (each byte once: no rescans), unless
        the event grows too long to be one worth reading — an event that carries usage may be
        long (its first bytes say so) — then its rest arrives as a fragment that holds no
        marker, and scanning goes on after it."""
        self._parts.append(piece)
        self._held += len(piece)
        if self._held <= self._limit:
            return
        if self._limit == _MAX_EVENT:  # decided once, when the event first grows long
            head = b"".join(self._parts)[:1024]
            if any(marker in head for marker in self._dialect.usage):
                self._limit = _MAX_USAGE_EVENT
                return
        self._parts, self._held, self._limit = [], 0, _MAX_EVENT

    def _events(self, data: bytes) -> None:
        """Whole events: count the deltas, read the usage events, note the end and errors."""
        dialect = self._dialect
        deltas = dialect.count(data)
        if deltas:
            self.events += deltas
            self._deltas_since += deltas
        if self.error is None and (_ERRORS[0] in data or _ERRORS[1] in data):
            self.error = data
        for marker in dialect.usage:
            if marker in data:
                for event in data.split(b"\n\n"):
                    if marker in event:
                        self._read_usage(event)
        if not self.done:
            self.done = any(marker in data for marker in dialect.end)

    def _read_usage(self, event: bytes) -> None:
        start = event.find(b"data:")
        if start < 0:
            return
        payload = event[start + 5 :].strip()
        try:
            fields = _decode_event(payload)
        except msgspec.MsgspecError:
            return  # relayed as it is; the count stands
        holder = fields.message or fields.response
        usage = fields.usage or (holder.usage if holder is not None else None)
        if fields.delta is not None and fields.delta.stop_reason is not None:
            self.finish_reason = fields.delta.stop_reason
        if fields.response is not None and fields.response.status is not None:
            self.finish_reason = fields.response.status
        if usage is None:
            return
        prompt = usage.prompt()
        if prompt is not None:
            self._prompt = prompt
            self._cached = usage.cached()
        if fields.type != "message_start":  # its output_tokens is a placeholder (1)
            completion = usage.completion_tokens
            if completion is None:
                completion = usage.output_tokens
            if completion is not None:
                self._completion = completion
                self._deltas_since = 0

    @property
    def content_events(self) -> int:
        """Token events relayed (what replay times: the first is the time to first token)."""
        return self.events

    @property
    def reported_completion(self) -> int | None:
        """The backend's final count of the answer's tokens, once sent."""
        return self._completion

    def finish(self) -> bytes:
        """At the end of the stream: a trailing event without its blank line is read too."""
        parts, self._parts, self._held, self._limit = self._parts, [], 0, _MAX_EVENT
        if parts:
            self._events(b"".join(parts))
        return b""

    def usage(self, prompt_estimate: int) -> Usage:
        """The backend's numbers where it sent them (``"backend"``); its prompt and the deltas
        relayed when the stream was cut before its final count (``"counted"``); else the
        estimate and the deltas (``"estimated"``)."""
        prompt, completion = self.counted(prompt_estimate)
        source: UsageSource
        if self._prompt is None:
            source = "estimated"
        elif self._completion is None or self._deltas_since:
            source = "counted"
        else:
            source = "backend"
        cached = min(self._cached, prompt)
        return Usage(prompt, completion, prompt + completion, source, self.finish_reason, cached)

    def counted(self, prompt_estimate: int) -> tuple[int, int]:
        """(prompt, completion) of :meth:`usage`, without building it (the journal's reads)."""
        prompt = self._prompt if self._prompt is not None else prompt_estimate
        if self._completion is None:
            return prompt, self.events
        return prompt, self._completion + self._deltas_since


StreamMeter = StreamUsage | EventStreamUsage
"""What follows a relayed stream's usage, whichever API it speaks."""


def stream_meter(api: Api | None, *, strip_usage_event: bool) -> StreamMeter:
    """The meter of a stream of ``api``: typed events for Messages and Responses, else the
    OpenAI chunk scanner (which may strip the usage event the gateway asked for)."""
    if api == "messages":
        return EventStreamUsage(MESSAGES)
    if api == "responses":
        return EventStreamUsage(RESPONSES)
    return StreamUsage(strip_usage_event=strip_usage_event)
