"""Token usage of a streamed answer, read from the SSE bytes as they are relayed.

The gateway relays upstream chunks as bytes and never re-encodes them. :class:`StreamUsage` looks
at each chunk on its way through::

    meter = StreamUsage(strip_usage_event=not client_asked)   # from the request's peek
    async for chunk in upstream.content.iter_any():
        out = meter.feed(chunk)
        if out:
            await client.write(out)
    await client.write(meter.finish())                        # b"" unless bytes were held back
    usage = meter.usage(prompt_estimate)                      # also after a cut-off stream

Ordinary content events cost a handful of ``bytes.find`` calls and are never decoded; only an
event that holds a ``"usage"`` object is (one msgspec decode into a two-field struct).

Where the numbers come from, best first: the backend's ``usage`` object, which vLLM sends in a
usage-only event (``"choices":[]``) after the last token when ``stream_options.include_usage``
is set, and in every event with ``continuous_usage_stats``; else a count of the content-bearing
events relayed. The count is of *events*, not tokens: vLLM sends one token per event, but a
tool-call parser may send several tokens of arguments in one event, and other servers may batch.
"""

from __future__ import annotations

import msgspec

from llmproxy.usage.extract import Usage, UsageFields, string_value_at

_MAX_USAGE_EVENT = 16 * 1024
"""A held-back partial event longer than this is not the usage event (those are ~300 bytes)."""

_MAX_EVENT = 64 * 1024
"""An event still open past this many bytes is not followed to its end: no event the gateway
reads is that long, and a backend that never ends its events (no blank line) must not make the
gateway hold, copy and rescan an ever longer tail. Scanning resumes after the next blank line."""

_JSON_EVENT = b"data: {"
_CONTENT_KEY = b'content":'  # also matches "reasoning_content":
_OTHER_TEXT_KEYS = (b'"text":', b'"arguments":', b'"reasoning":', b'"name":')
_CHOICES_KEY = b'"choices":'
_DONE = b"[DONE]"
_ERROR_EVENT = b'data: {"error"'


class _Choice(msgspec.Struct):
    finish_reason: str | None = None


class _ChunkFields(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: UsageFields | None = None


_decode_chunk = msgspec.json.Decoder(_ChunkFields).decode


class StreamUsage:
    """Follows one SSE stream, in order, through chunks cut anywhere; says what to relay.

    ``strip_usage_event=False``: :meth:`feed` returns the chunk it was given, the same object,
    and only looks at it. ``strip_usage_event=True`` (the gateway added ``include_usage``, the
    client did not ask for it): the usage-only event is cut out of the stream; every other byte
    is relayed unchanged and in order, as soon as it is known not to belong to that event. Only
    an incomplete trailing event that may still turn out to be it is held back, until the chunk
    that completes it (a client cannot act on half an event anyway).

    Events end with a blank line, ``\\n\\n`` or ``\\r\\n\\r\\n`` (mixed too); a stream with
    CR-only line ends is relayed untouched but not understood. Within an event, ``usage`` is
    expected after ``choices`` (so after any ``finish_reason``), as vLLM, OpenAI, TGI and
    llama.cpp write it: an event with a ``finish_reason`` is searched for ``usage`` only past it.
    Attributes, readable at any time:

    - ``finish_reason``: the last non-null ``finish_reason`` seen (of the last choice in an event).
    - ``events``: data events relayed, not counting ``[DONE]`` (nor a stripped usage event).
    - ``done``: ``data: [DONE]`` was seen — the backend ended the stream properly.
    - ``error``: the first error event (``event: error``, or a ``{"error": ...}`` chunk).
    """

    __slots__ = (
        "_cached",
        "_content_events",
        "_content_since_usage",
        "_held",
        "_lost",
        "_strip",
        "_tail",
        "_usage",
        "done",
        "error",
        "events",
        "finish_reason",
    )

    def __init__(self, *, strip_usage_event: bool) -> None:
        self._strip = strip_usage_event
        self._tail = b""  # the incomplete trailing event, not yet scanned
        self._held = False  # whether _tail has been kept from the client (strip mode only)
        self._lost = False  # inside an over-long event: skipping to its blank line
        self._usage: tuple[int, int, int] | None = None  # the backend's latest usage
        self._cached = 0  # of its prompt, tokens read from the prefix cache
        self._content_events = 0
        self._content_since_usage = 0
        self.finish_reason: str | None = None
        self.events = 0
        self.done = False
        self.error: bytes | None = None

    def feed(self, chunk: bytes) -> bytes:
        """Take the next upstream chunk; return the bytes to send to the client now."""
        if self._lost:
            return self._skip_long_event(chunk)
        if not self._tail:
            # The usual chunk is one whole JSON event (vLLM writes one per token): its only
            # newlines are those of the blank line at its end.
            nl = chunk.find(b"\n")
            last = len(chunk) - 2
            if (
                (nl == last and chunk[-1] == 0x0A)
                or (nl == last - 1 and chunk.endswith(b"\r\n\r\n"))
            ) and chunk.startswith(b"data: {"):
                if self._json_event(chunk) and self._strip:
                    self.events -= 1
                    return b""
                return chunk
        if self._strip:
            return self._feed_stripping(chunk)
        tail = self._tail
        buf = tail + chunk if tail else chunk
        self._tail = buf[self._scan(buf, 0, None) :]
        if len(self._tail) > _MAX_EVENT:
            self._tail, self._lost = b"", True
        return chunk

    def _skip_long_event(self, chunk: bytes) -> bytes:
        """Inside an over-long event: relay, and scan again after its blank line."""
        end = chunk.find(b"\n\n")
        crlf = chunk.find(b"\n\r\n")
        if crlf >= 0 and (end < 0 or crlf < end):
            end = crlf + 1
        if end < 0:
            return chunk
        self._lost = False
        head, rest = chunk[: end + 2], chunk[end + 2 :]
        return head + self.feed(rest) if rest else head

    def finish(self) -> bytes:
        """At the end of the stream: the held-back bytes to flush to the client, often ``b""``.

        A trailing event without its blank line is taken into account only if its data is
        complete JSON (or ``[DONE]``); a truncated one is relayed (when held back) but not
        counted, as the client's SSE parser drops it too. A complete usage-only event is
        stripped here as well.
        """
        tail, held = self._tail, self._held
        self._tail, self._held = b"", False
        usage_only = False
        if tail and _is_complete(tail):
            usage_only = self._event(tail)
        if not held:
            return b""
        if usage_only:
            self.events -= 1
            return b""
        return tail

    def usage(self, prompt_estimate: int) -> Usage:
        """The usage to bill, from the backend's numbers when it sent them.

        - The backend's latest ``usage`` with no content event after it: those numbers,
          ``"backend"``.
        - A backend ``usage`` followed by more content events (usage reported early, stream went
          on): its prompt, its completion plus the events after it, ``"counted"``.
        - No backend ``usage`` (not asked for, or the stream was cut before it): ``prompt_estimate``
          and the count of content events, ``"estimated"``.
        """
        reason = self.finish_reason
        if self._usage is None:
            completion = self._content_events
            return Usage(
                prompt_estimate, completion, prompt_estimate + completion, "estimated", reason
            )
        prompt, completion, total = self._usage
        cached = min(self._cached, prompt)
        extra = self._content_since_usage
        if not extra:
            return Usage(prompt, completion, total, "backend", reason, cached)
        completion += extra
        return Usage(prompt, completion, prompt + completion, "counted", reason, cached)

    def counted(self, prompt_estimate: int) -> tuple[int, int]:
        """(prompt, completion) of :meth:`usage`, without building it: the journal reads every
        open stream's count four times a second."""
        if self._usage is None:
            return prompt_estimate, self._content_events
        return self._usage[0], self._usage[1] + self._content_since_usage

    def _feed_stripping(self, chunk: bytes) -> bytes:
        tail = self._tail
        if tail:
            buf = tail + chunk
            sent = 0 if self._held else len(tail)  # the start of buf the client has already
        else:
            buf, sent = chunk, 0
        stripped: list[tuple[int, int]] = []
        start = self._scan(buf, sent, stripped)
        rest = buf[start:]
        self._tail = rest
        # A partial event some of which went out already cannot be held (nor be the usage event).
        hold = bool(rest) and start >= sent and _may_be_usage_event(rest)
        self._held = hold
        if len(rest) > _MAX_EVENT:  # never held: longer than any usage event
            self._tail, self._lost = b"", True
        stop = start if hold else len(buf)
        if not stripped:
            if stop == len(buf) and sent == len(tail):
                return chunk
            return buf[sent:stop]
        pieces = []
        pos = sent
        for begin, end in stripped:
            pieces.append(buf[pos:begin])
            pos = end
        pieces.append(buf[pos:stop])
        return b"".join(pieces)

    def _scan(self, buf: bytes, sent: int, stripped: list[tuple[int, int]] | None) -> int:
        """Account for every complete event in ``buf``; return where the incomplete rest starts.

        With ``stripped``, the spans of usage-only events that start at or after ``sent`` (none
        of whose bytes went out yet) are appended to it.
        """
        find = buf.find
        size = len(buf)
        start = pos = 0
        while True:
            # JSON escapes newlines in strings, so the only ones in a data line end it.
            nl = find(b"\n", pos)
            if nl < 0 or nl + 1 >= size:
                return start
            after = buf[nl + 1]
            if after == 0x0A:  # \n\n
                end = nl + 2
            elif after == 0x0D and nl + 2 < size and buf[nl + 2] == 0x0A:  # \r\n\r\n, \n\r\n
                end = nl + 3
            elif after == 0x0D and nl + 2 >= size:
                return start  # the blank line may be half here
            else:  # the end of a line within a multi-line event
                pos = nl + 1
                continue
            event = buf if start == 0 and end == size else buf[start:end]
            if buf.startswith(b"data: {", start):
                usage_only = self._json_event(event)
            else:
                usage_only = self._other_event(event)
            if usage_only and stripped is not None and start >= sent:
                stripped.append((start, end))
                self.events -= 1
            start = pos = end

    def _event(self, event: bytes) -> bool:
        """Account for one whole event; True if it is a usage-only event."""
        if event.startswith(_JSON_EVENT):
            return self._json_event(event)
        return self._other_event(event)

    def _other_event(self, event: bytes) -> bool:
        """An event that is not a single ``data: {...}`` line: [DONE], a comment, other fields."""
        payload = data_payload(event)
        if payload is None:
            return False  # a comment (": ping") or an event with no data
        if payload.strip() == _DONE:
            self.done = True
            return False
        if event.startswith(b"event: error") and self.error is None:
            self.error = payload  # the gateway's (and OpenAI's) mid-stream failure
        return self._json_event(payload + b"\n")

    @property
    def content_events(self) -> int:
        """Events that carried generated text (content, reasoning, tool calls), so far."""
        return self._content_events

    @property
    def reported_completion(self) -> int | None:
        """The completion tokens of the backend's last ``usage`` object, if it sent one."""
        return None if self._usage is None else self._usage[1]

    def _json_event(self, data: bytes) -> bool:
        """Account for a data event, given as the event itself or as its data; True if it is a
        usage-only event. ``data`` ends with a newline or a complete JSON value, so that there
        are bytes to look at after any key found in it."""
        self.events += 1
        if data.startswith(_ERROR_EVENT) and self.error is None:
            self.error = data  # a backend's {"error": ...} chunk: the stream failed
        # vLLM and OpenAI put finish_reason last in a choice and usage after the choices, so
        # finish_reason is found near the end and usage is looked for only after it.
        # (Literal bytes below, not the module's constants: this runs for every event.)
        key = data.rfind(b'"finish_reason":')
        if key >= 0:
            value = key + 16
            if data[value] != 0x6E:  # not null
                reason = string_value_at(data, value)
                if reason is not None:
                    self.finish_reason = reason
            has_usage = data.find(b'"usage":', value) >= 0
        else:
            has_usage = data.find(b'"usage":') >= 0
        key = data.rfind(b'content":')  # from the end: the delta sits near the end in vLLM
        if (key >= 0 and data[key + 9] == 0x22 and data[key + 10] != 0x22) or _has_content(
            data, key
        ):
            self._content_events += 1
            self._content_since_usage += 1
        if has_usage:
            return self._usage_event(data)
        return False

    def _usage_event(self, data: bytes) -> bool:
        # ``data`` is a "data: {" event, or an event's data already (see _other_event).
        if not data.startswith(b"data:"):
            payload = data
        elif data.find(b"\n") >= len(data) - 4:  # one line: its end is JSON whitespace
            payload = data[6:]
        else:
            payload = data_payload(data) or data
        try:
            fields = _decode_chunk(payload)
        except msgspec.MsgspecError:
            return False  # a malformed event is relayed as it is and counted as above
        if fields.usage is None:
            return False  # "usage": null, as OpenAI sends in every chunk
        self._usage = fields.usage.counts()
        self._cached = fields.usage.cached()
        self._content_since_usage = 0
        for choice in fields.choices or ():
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason
        return not fields.choices


def _has_content(data: bytes, content_key: int) -> bool:
    """Whether an event carries generated text: a non-empty ``content``, ``reasoning_content``,
    ``reasoning``, completions ``text``, or tool-call ``arguments`` or ``name``.

    ``content_key`` is where the last ``content":`` is (or -1), already found by the caller. A key
    match is always a real key: inside a JSON string every quote is escaped, so ``content":``
    (an unescaped quote then a colon) cannot occur there. ``"content":[`` (the logprobs list),
    ``null`` and ``""`` do not count.
    """
    key = content_key
    while key >= 0:
        if _nonempty_string_at(data, key + len(_CONTENT_KEY)):
            return True
        key = data.rfind(_CONTENT_KEY, 0, key)
    for name in _OTHER_TEXT_KEYS:
        key = data.find(name)
        while key >= 0:
            if _nonempty_string_at(data, key + len(name)):
                return True
            key = data.find(name, key + len(name))
    return False


def _nonempty_string_at(data: bytes, pos: int) -> bool:
    if data[pos : pos + 1] == b" ":
        pos += 1
    return data[pos : pos + 1] == b'"' and data[pos + 1 : pos + 2] not in (b'"', b"")


def data_payload(event: bytes) -> bytes | None:
    """The data of one SSE event: its ``data:`` lines' values joined by ``\\n``; None if none."""
    values = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            values.append(value[1:] if value.startswith(b" ") else value)
    if not values:
        return None
    return values[0] if len(values) == 1 else b"\n".join(values)


def _is_complete(event: bytes) -> bool:
    """Whether an event cut short of its blank line still holds complete data."""
    payload = data_payload(event)
    if payload is None:
        return False
    if payload.strip() == _DONE:
        return True
    try:
        msgspec.json.decode(payload, type=msgspec.Raw)
    except msgspec.MsgspecError:
        return False
    return True


def _may_be_usage_event(partial: bytes) -> bool:
    """Whether an incomplete event may still turn out to be the usage-only event.

    It is not once it is too long for one, or once its ``choices`` list is seen to be non-empty.
    """
    if len(partial) > _MAX_USAGE_EVENT:
        return False
    key = partial.find(_CHOICES_KEY)
    if key < 0:
        return True
    rest = partial[key + len(_CHOICES_KEY) : key + len(_CHOICES_KEY) + 8].lstrip()
    return not (rest.startswith(b"[") and rest[1:].lstrip()[:1] == b"{")
