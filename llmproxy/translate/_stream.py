"""A streamed chat completion -> Anthropic's Messages event stream, chunk by chunk."""

from __future__ import annotations

from typing import Any

import msgspec

from llmproxy.errors import anthropic_error_event
from llmproxy.translate._chat_wire import (
    RAW_ARGUMENTS,
    Chunk,
    ErrorObject,
    ToolCallDelta,
    Usage,
    message_id,
    stop_reason,
    tool_use_id,
)
from llmproxy.translate._errors import error_message, status_of
from llmproxy.translate._response import decode_object
from llmproxy.translate._sse import EventTooLarge, SseEvents

_decode_chunk = msgspec.json.Decoder(Chunk).decode
_encode = msgspec.json.Encoder().encode

_TEXT = -1
_THINKING = -2
"""What the open block holds: text, thinking, or (0 and up) the chat tool call of that index."""

_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_BLOCK_START = b'event: content_block_start\ndata: {"type":"content_block_start","index":'
_BLOCK_START_MID = b',"content_block":'
_TEXT_BLOCK = b'{"type":"text","text":""}'
_THINKING_BLOCK = b'{"type":"thinking","thinking":"","signature":""}'
_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT_DELTA = b',"delta":{"type":"text_delta","text":'
_THINKING_DELTA = b',"delta":{"type":"thinking_delta","thinking":'
_JSON_DELTA = b',"delta":{"type":"input_json_delta","partial_json":'
_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":'
_END = b"}\n\n"
_DELTA_END = b"}}\n\n"


class ChatStreamToMessages:
    """Stateful: chat completion SSE bytes (cut anywhere between chunks) -> Anthropic SSE bytes.

    One per streamed request::

        translate = ChatStreamToMessages(model=requested_model)
        async for chunk in upstream:
            if out := translate.feed(chunk):
                await client.write(out)
        await client.write(translate.finish())  # or translate.error("...") on a broken upstream

    The client sees ``message_start`` and ``ping`` at the first chat chunk, then content blocks in
    the order the model writes them: reasoning as ``thinking`` (``thinking_delta``), text
    (``text_delta``), each tool call as ``tool_use`` whose arguments arrive as ``partial_json``
    pieces, unchanged (a new tool call closes the block before it). The answer ends with
    ``message_delta`` (stop reason and usage) and ``message_stop`` once, at the first of: usage
    known after the ``finish_reason``, ``[DONE]``, :meth:`finish`. Anything after is ignored.

    An upstream error event, an unreadable chunk, or a stream ending before any ``finish_reason``
    ends the stream with ``event: error`` instead. Only the first choice is followed (a Message is
    one answer). Each chat chunk is decoded once into small structs; the output is assembled from
    pre-encoded pieces.
    """

    __slots__ = (
        "_arguments",
        "_ended",
        "_events",
        "_finish_reason",
        "_index",
        "_index_json",
        "_matched",
        "_message_id",
        "_model",
        "_open",
        "_started",
        "_tools",
        "_usage",
        "_waiting",
    )

    def __init__(self, model: str, message_id: str | None = None) -> None:
        self._model = model
        self._message_id = message_id
        self._events = SseEvents()
        self._started = False
        self._ended = False
        self._open: int | None = None
        self._index = -1
        self._index_json = b"-1"
        self._tools: dict[int, tuple[bytes, str | None]] = {}  # chat index: block index, call id
        self._arguments: dict[bytes, list[str]] = {}
        """The open tool block's arguments so far: sent whole when it ends, as one JSON object
        (a backend's arguments that are not one are sent as the whole answer shows them, under
        ``_raw_arguments``: the SDK would fail on the whole stream otherwise)."""
        self._waiting: dict[int, tuple[str | None, str]] = {}  # calls not named yet: id, arguments
        self._finish_reason: str | None = None
        self._matched: int | str | None = None
        self._usage: Usage | None = None

    def feed(self, chunk: bytes) -> bytes:
        """The Anthropic events that ``chunk`` completes (often ``b""``: a partial chat event)."""
        if self._ended:
            return b""
        try:
            events = self._events.feed(chunk)
        except EventTooLarge as exc:
            return self._fail(f"the backend's stream is unreadable: {exc}")
        return self._translate(events) if events else b""

    def finish(self) -> bytes:
        """At the upstream's end: what closes the stream properly, or an ``error`` event when the
        backend stopped before it said why its answer ended (a cut connection, a crash)."""
        out = b"" if self._ended else self._translate(self._events.finish())
        if self._ended:
            return out
        if self._finish_reason is None:
            return out + self._fail("the backend ended the stream before its answer finished")
        return out + self._close()

    def error(self, message: str) -> bytes:
        """An Anthropic ``event: error`` (``api_error``) for an upstream that broke: the client's
        SDK raises it rather than take a cut answer for a whole one. ``b""`` once ended."""
        return b"" if self._ended else self._fail(message)

    def _translate(self, events: list[tuple[bytes, bytes]]) -> bytes:
        out: list[bytes] = []
        for name, data in events:
            if self._ended:
                break
            if data == b"[DONE]":
                out.append(self._close())
                continue
            if name == b"error":
                out.append(self._fail(error_message(data, 502)))
                break
            try:
                chunk = _decode_chunk(data)
            except msgspec.DecodeError as exc:  # or its ValidationError
                out.append(self._fail(f"the backend sent an unreadable stream event: {exc}"))
                break
            if chunk.error is not None or chunk.object == "error":
                out.append(self._upstream_error(chunk))
                break
            self._chunk(chunk, out)
        return b"".join(out)

    def _chunk(self, chunk: Chunk, out: list[bytes]) -> None:
        if not self._started:
            out.append(self._start(chunk))
        if chunk.usage is not None:
            self._usage = chunk.usage
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta is not None:
                reasoning = delta.reasoning_content or delta.reasoning
                if reasoning:
                    self._text(_THINKING, _THINKING_DELTA, reasoning, out)
                if delta.content:
                    self._text(_TEXT, _TEXT_DELTA, delta.content, out)
                for call in delta.tool_calls or ():
                    self._tool_call(call, out)
            if choice.finish_reason is not None:
                self._finish_reason = choice.finish_reason
                self._matched = choice.stop_reason
        if self._finish_reason is not None and chunk.usage is not None:
            out.append(self._close())

    def _start(self, chunk: Chunk | None) -> bytes:
        self._started = True
        usage = chunk.usage if chunk is not None else None
        message: dict[str, Any] = {
            "id": self._message_id or message_id(chunk.id if chunk is not None else None),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": usage.prompt_tokens if usage else 0, "output_tokens": 0},
        }
        body = _encode({"type": "message_start", "message": message})
        return b"event: message_start\ndata: " + body + b"\n\n" + _PING

    def _text(self, kind: int, delta: bytes, text: str, out: list[bytes]) -> None:
        if self._open != kind:
            out.append(self._start_block(kind, _TEXT_BLOCK if kind == _TEXT else _THINKING_BLOCK))
        out.append(_DELTA + self._index_json + delta + _encode(text) + _DELTA_END)

    def _tool_call(self, call: ToolCallDelta, out: list[bytes]) -> None:
        function = call.function
        name = function.name if function is not None else None
        arguments = (function.arguments if function is not None else None) or ""
        known = self._tools.get(call.index)
        if known is not None and call.id and name and call.id != known[1]:
            known = None  # a server that numbers every call 0 tells them apart by id
        if known is not None:
            if arguments:
                held = self._arguments.get(known[0])
                if held is not None:
                    held.append(arguments)
                else:  # its block was closed (interleaved calls): sent as they come
                    out.append(_DELTA + known[0] + _JSON_DELTA + _encode(arguments) + _DELTA_END)
            return
        waited_id, waited_arguments = self._waiting.pop(call.index, (None, ""))
        call_id = call.id or waited_id
        if not name:  # the name comes later: hold what came, a tool_use block starts with it
            self._waiting[call.index] = (call_id, waited_arguments + arguments)
            return
        self._open_tool(call.index, call_id, name, waited_arguments + arguments, out)

    def _open_tool(
        self, index: int, call_id: str | None, name: str, arguments: str, out: list[bytes]
    ) -> None:
        block = {"type": "tool_use", "id": tool_use_id(call_id), "name": name, "input": {}}
        out.append(self._start_block(index, _encode(block)))
        self._tools[index] = (self._index_json, call_id)
        self._arguments[self._index_json] = [arguments] if arguments else []

    def _start_block(self, kind: int, block: bytes) -> bytes:
        stop = self._stop_block()
        self._index += 1
        self._index_json = str(self._index).encode()
        self._open = kind
        return stop + _BLOCK_START + self._index_json + _BLOCK_START_MID + block + _END

    def _stop_block(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        held = self._arguments.pop(self._index_json, None)
        stop = _BLOCK_STOP + self._index_json + _END
        if not held:
            return stop
        text = "".join(held)
        if not text.strip():
            return stop
        try:
            decode_object(text)
        except (msgspec.DecodeError, msgspec.ValidationError):
            text = _encode({RAW_ARGUMENTS: text}).decode()
        return _DELTA + self._index_json + _JSON_DELTA + _encode(text) + _DELTA_END + stop

    def _close(self) -> bytes:
        out = [] if self._started else [self._start(None)]
        for index, (call_id, arguments) in self._waiting.items():
            self._open_tool(index, call_id, "", arguments, out)  # never named: shown, not lost
        self._waiting.clear()
        out.append(self._stop_block())
        reason, sequence = stop_reason(self._finish_reason, self._matched, bool(self._tools))
        usage = self._usage
        counts = (
            {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}
            if usage is not None
            else {"output_tokens": 0}
        )
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        body = _encode({"type": "message_delta", "delta": delta, "usage": counts})
        out.append(b"event: message_delta\ndata: " + body + b"\n\n" + _MESSAGE_STOP)
        self._ended = True
        return b"".join(out)

    def _upstream_error(self, chunk: Chunk) -> bytes:
        error = chunk.error
        if isinstance(error, ErrorObject):
            message, code = error.message, error.code
        elif isinstance(error, str):
            message, code = error, None
        else:
            message, code = chunk.message, chunk.code
        return self._fail(message or "the backend failed mid-answer", status_of(code))

    def _fail(self, message: str, status: int = 502) -> bytes:
        self._ended = True
        return anthropic_error_event(message, status)
