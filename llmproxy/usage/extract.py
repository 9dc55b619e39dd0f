"""Token usage read from request and response bodies, and the request rewrite that asks for it.

Helpers around the :class:`Usage` value, one per moment of a request::

    prompt = estimate_prompt_tokens(body, chars_per_token=4.0)   # before: reserve a budget
    reader = ResponseUsage(hold_limit)                           # non-streamed answer, as it
    reader.feed(chunk)                                           #   is relayed
    usage = reader.usage()                                       # then settle

Streamed answers are settled by :class:`llmproxy.usage.stream.StreamUsage`. Everything here decodes
only the fields it needs, with msgspec structs, and answers ``None`` (or an estimate) rather than
raising on a body it cannot read: accounting must never fail a request that the backend served.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from llmproxy.finish import UsageSource

MAX_COUNT = 2**31 - 1
"""The most tokens a backend may report in one count: more is no real request's (a context of
two billion tokens), so such a ``usage`` is not believed — the count falls back to what was
relayed or estimated, never a number no quota can hold."""

NonNegative = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]


@dataclass(frozen=True, slots=True)
class Usage:
    """The tokens one request cost, and how sure we are of them.

    ``source`` says where the numbers come from:

    - ``"backend"``: the backend's own ``usage`` object, exact.
    - ``"counted"``: the prompt from the backend's ``usage``, the completion counted from the
      relayed stream (content events after the backend's last ``usage``).
    - ``"estimated"``: the prompt estimated from the request text (the backend never reported
      one, e.g. a stream cut off before its usage event); the completion counted from the stream.
    """

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    source: UsageSource
    finish_reason: str | None = None
    cached_tokens: int = 0
    """Of ``prompt_tokens``, those the backend read from its prefix cache (priced apart:
    ``pricing.<model>.cached_input_per_million``); 0 when it reported none."""


class _TokenDetails(msgspec.Struct):
    cached_tokens: NonNegative | None = None


class UsageFields(msgspec.Struct):
    """A ``usage`` object: OpenAI's (embeddings send only ``prompt_tokens`` and
    ``total_tokens``), the Responses API's (``input_tokens``, ``output_tokens``) or Anthropic's
    (``input_tokens`` not counting the prompt tokens written to or read from its cache, which
    come in fields of their own)."""

    prompt_tokens: NonNegative | None = None
    completion_tokens: NonNegative | None = None
    total_tokens: NonNegative | None = None
    input_tokens: NonNegative | None = None
    output_tokens: NonNegative | None = None
    cache_creation_input_tokens: NonNegative | None = None
    cache_read_input_tokens: NonNegative | None = None
    prompt_tokens_details: _TokenDetails | None = None
    input_tokens_details: _TokenDetails | None = None

    def cached(self) -> int:
        """Prompt tokens served from the backend's prefix cache: OpenAI's
        ``prompt_tokens_details.cached_tokens`` (vLLM sends it with prefix caching on), the
        Responses API's ``input_tokens_details.cached_tokens``, Anthropic's
        ``cache_read_input_tokens``."""
        details = self.prompt_tokens_details or self.input_tokens_details
        if details is not None and details.cached_tokens is not None:
            return details.cached_tokens
        return self.cache_read_input_tokens or 0

    def prompt(self) -> int | None:
        """The prompt's tokens, cached ones included; None when not reported."""
        if self.prompt_tokens is not None:
            return self.prompt_tokens
        if self.input_tokens is None:
            return None
        cached = (self.cache_creation_input_tokens or 0) + (self.cache_read_input_tokens or 0)
        return self.input_tokens + cached

    def counts(self) -> tuple[int, int, int]:
        """``(prompt, completion, total)`` with the missing ones derived from the others."""
        prompt = self.prompt() or 0
        completion = self.completion_tokens
        if completion is None:
            completion = self.output_tokens
        if completion is None:
            completion = max(0, self.total_tokens - prompt) if self.total_tokens is not None else 0
        total = self.total_tokens if self.total_tokens is not None else prompt + completion
        return prompt, completion, total


class _UsageHolder(msgspec.Struct):
    usage: UsageFields | None = None


_decode_usage_holder = msgspec.json.Decoder(_UsageHolder).decode
_decode_str = msgspec.json.Decoder(str).decode

_FINISH_KEY = b'"finish_reason":'
_STOP_KEY = b'"stop_reason":'
_CHOICES_WITHIN = 1024
_JSON_STRING = re.compile(rb'[ \t]*("(?:[^"\\]|\\.)*")')  # blanks, then a string


def usage_from_body(body: bytes) -> Usage | None:
    """The ``usage`` of a non-streamed response (chat, text completion, embeddings), or ``None``.

    ``None`` when the body has no ``usage`` object or cannot be read. The body is searched for
    ``"usage"`` first; only the top-level ``usage`` object is decoded, so a large embeddings
    response is not parsed vector by vector (where the key is not the top-level one, the whole
    body is decoded into a struct that holds nothing but ``usage``; the bytes before a top-level
    key are not checked for syntax). ``finish_reason`` is that of
    ``choices[0]`` when ``choices`` opens within the body's first KiB, as it does in vLLM's and
    OpenAI's responses (after ``id``, ``object``, ``created`` and ``model``); else ``None``.
    """
    key = body.rfind(b'"usage"')
    if key < 0:
        return None
    try:
        # From a top-level key to the end, the body is the tail of that object's members:
        # b"{" + tail is a valid object. Where the key is nested the tail has unbalanced closers
        # and fails to decode, so a nested "usage" is never taken for the real one.
        holder = _decode_usage_holder(b"{" + body[key:])
    except msgspec.MsgspecError:
        try:
            holder = _decode_usage_holder(body)
        except msgspec.MsgspecError:
            return None
    if holder.usage is None:
        return None
    usage = holder.usage
    prompt, completion, total = usage.counts()
    # Bounded, so an embeddings body (no choices, megabytes of vectors) is never scanned whole.
    choices = body.find(b'"choices":', 0, _CHOICES_WITHIN)
    if choices >= 0:
        finish_reason = finish_reason_after(body, choices)
    else:  # an Anthropic message says why it stopped at its top level
        stop = body.rfind(_STOP_KEY)
        finish_reason = string_value_at(body, stop + len(_STOP_KEY)) if stop >= 0 else None
    return Usage(prompt, completion, total, "backend", finish_reason, min(usage.cached(), prompt))


def finish_reason_after(data: bytes, start: int) -> str | None:
    """The first ``finish_reason`` string at or after ``start``; ``None`` if null or absent."""
    key = data.find(_FINISH_KEY, start)
    if key < 0:
        return None
    return string_value_at(data, key + len(_FINISH_KEY))


def string_value_at(data: bytes, pos: int) -> str | None:
    """The JSON string at ``pos`` (after optional blanks), ``None`` if there is no whole one there.

    Used for short enum-like values (finish reasons); msgspec decodes one only if it has escapes.
    """
    match = _JSON_STRING.match(data, pos)
    if match is None:
        return None
    quoted = match.group(1)
    if b"\\" not in quoted:
        return quoted[1:-1].decode("utf-8", "replace")
    try:
        return _decode_str(quoted)
    except msgspec.MsgspecError:
        return None


_USAGE_KEY = b'"usage":'
_CAPTURE = 4096
"""Bytes kept after a ``"usage":`` key seen in a large answer (the object is ~200 bytes)."""
_decode_usage_fields = msgspec.json.Decoder(UsageFields).decode


class ResponseUsage:
    """The usage of a non-streamed answer, read while it is relayed chunk by chunk.

    Up to ``hold_limit`` bytes the body is kept and read whole by :func:`usage_from_body`, as
    before relaying began. A larger body (a big embeddings batch, an answer with vLLM's
    ``prompt_logprobs``, which comes *after* ``usage``) is not held: each ``"usage": {...}``
    object is caught as it goes by (a few KiB at most are kept), and the last one that reads as
    a usage object counts, as does the last ``finish_reason``. Inside JSON strings quotes are
    escaped, so an unescaped ``"usage":`` is always a key.
    """

    __slots__ = ("_capture", "_carry", "_found", "_hold_limit", "_parts", "_reason", "_size")

    def __init__(self, hold_limit: int) -> None:
        self._hold_limit = hold_limit
        self._parts: list[bytes] | None = []
        self._size = 0
        self._carry = b""  # the end of the last chunk: a key may be cut between two chunks
        self._capture: bytes | None = None  # from a "usage": key on, while it is being read
        self._found: UsageFields | None = None
        self._reason: str | None = None

    def feed(self, chunk: bytes) -> None:
        """Look at the next chunk of the body."""
        self._size += len(chunk)
        if self._parts is not None:
            self._parts.append(chunk)
            if self._size <= self._hold_limit:
                return
            chunk = b"".join(self._parts)
            self._parts = None
        self._scan(chunk)

    def _scan(self, chunk: bytes) -> None:
        if self._capture is not None:
            self._capture += chunk[: _CAPTURE - len(self._capture)]
            if len(self._capture) >= _CAPTURE:
                self._settle_capture()
        carried = len(self._carry)
        data = self._carry + chunk
        self._carry = data[-32:]
        # Keys wholly inside the carried bytes were seen with the last chunk.
        key = data.find(_USAGE_KEY, max(0, carried - len(_USAGE_KEY) + 1))
        while key >= 0:
            self._settle_capture()
            after = key + len(_USAGE_KEY)
            self._capture = data[after : after + _CAPTURE]
            key = data.find(_USAGE_KEY, after)
        if self._capture is not None and len(self._capture) >= _CAPTURE:
            self._settle_capture()
        reason = data.rfind(_FINISH_KEY)
        if reason >= 0:
            value = string_value_at(data, reason + len(_FINISH_KEY))
            if value is not None:
                self._reason = value

    def _settle_capture(self) -> None:
        captured, self._capture = self._capture, None
        if not captured:
            return
        start = captured.find(b"{")
        if start < 0 or captured[:start].strip():
            return  # "usage": null, or not an object
        depth = 0
        for index in range(start, len(captured)):
            byte = captured[index]
            if byte == 0x7B:
                depth += 1
            elif byte == 0x7D:
                depth -= 1
                if depth == 0:
                    with contextlib.suppress(msgspec.MsgspecError):
                        self._found = _decode_usage_fields(captured[start : index + 1])
                    return

    def usage(self) -> Usage | None:
        """The backend's usage, once the whole body went by; None when it reported none."""
        if self._parts is not None:
            return usage_from_body(b"".join(self._parts))
        self._settle_capture()
        if self._found is None:
            return None
        found = self._found
        prompt, completion, total = found.counts()
        return Usage(
            prompt, completion, total, "backend", self._reason, min(found.cached(), prompt)
        )


class _Part(msgspec.Struct):
    text: str | None = None  # image and audio parts carry no text


class _Message(msgspec.Struct):
    content: str | list[_Part] | None = None


Prompt = str | list[str | int | list[int]]  # text, texts, token ids, or lists of token ids


class _PromptFields(msgspec.Struct):
    messages: list[_Message] | None = None
    prompt: Prompt | None = None
    input: str | list[Any] | None = None  # embeddings; the Responses API (text or items)
    system: str | list[_Part] | None = None  # Anthropic Messages
    instructions: str | None = None  # the Responses API


_decode_prompt_fields = msgspec.json.Decoder(_PromptFields).decode


def estimate_prompt_tokens(body: bytes, chars_per_token: float) -> int:
    """A cheap prompt-token estimate for a request body, at least 1.

    Counts the characters of chat ``messages[].content`` (a string, or the ``text`` of its parts),
    of a completions ``prompt``, of an embeddings ``input`` (a string or a list of strings), of
    Anthropic's ``system`` and of a Responses ``input`` (text, or items whose ``content`` is
    text or parts) and ``instructions``, divides by ``chars_per_token`` and rounds up;
    pre-tokenized prompts count one token per id.
    Only those fields are decoded. A body that does not decode is estimated from its length in
    bytes, an upper bound, so a reservation made from it is never too small.
    """
    try:
        fields = _decode_prompt_fields(body)
    except msgspec.MsgspecError:
        return max(1, math.ceil(len(body) / chars_per_token))
    chars = ids = 0
    for message in fields.messages or ():
        content = message.content
        if isinstance(content, str):
            chars += len(content)
        elif content:
            chars += sum(len(part.text) for part in content if part.text)
    system = fields.system
    if isinstance(system, str):
        chars += len(system)
    elif system:
        chars += sum(len(part.text) for part in system if part.text)
    chars += len(fields.instructions or "")
    for prompt in (fields.prompt, fields.input):
        if isinstance(prompt, str):
            chars += len(prompt)
        elif prompt:
            for item in prompt:
                if isinstance(item, str):
                    chars += len(item)
                elif isinstance(item, dict):
                    chars += _item_chars(item)
                else:
                    ids += len(item) if isinstance(item, list) else 1
    return max(1, math.ceil(chars / chars_per_token) + ids)


def content_chars(content: Any) -> int:
    """Characters of a message's decoded ``content``: the text, or its parts' ``text`` (the
    recorder sizes messages with it too)."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(
            len(part["text"])
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return 0


def _item_chars(item: dict[str, Any]) -> int:
    """Characters of one Responses input item: its ``content``, or a function call's result."""
    content = item.get("content")
    if isinstance(content, str | list):
        return content_chars(content)
    output = item.get("output")
    return len(output) if isinstance(output, str) else 0
