"""Token usage read from request and response bodies, and the request rewrite that asks for it.

Three helpers around the :class:`Usage` value, one per moment of a request::

    prompt = estimate_prompt_tokens(body, chars_per_token=4.0)   # before: reserve a budget
    body, client_asked = request_with_usage(body)                # streaming: ask for usage
    usage = usage_from_body(response_body)                       # non-streamed answer: settle

Streamed answers are settled by :class:`llmproxy.usage.stream.StreamUsage`. Everything here decodes
only the fields it needs, with msgspec structs, and answers ``None`` (or an estimate) rather than
raising on a body it cannot read: accounting must never fail a request that the backend served.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

UsageSource = Literal["backend", "counted", "estimated"]

NonNegative = Annotated[int, msgspec.Meta(ge=0)]


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


class UsageFields(msgspec.Struct):
    """An OpenAI ``usage`` object; embeddings send only ``prompt_tokens`` and ``total_tokens``."""

    prompt_tokens: NonNegative | None = None
    completion_tokens: NonNegative | None = None
    total_tokens: NonNegative | None = None

    def counts(self) -> tuple[int, int, int]:
        """``(prompt, completion, total)`` with the missing ones derived from the others."""
        prompt = self.prompt_tokens or 0
        completion = self.completion_tokens
        if completion is None:
            completion = max(0, self.total_tokens - prompt) if self.total_tokens is not None else 0
        total = self.total_tokens if self.total_tokens is not None else prompt + completion
        return prompt, completion, total


class _UsageHolder(msgspec.Struct):
    usage: UsageFields | None = None


_decode_usage_holder = msgspec.json.Decoder(_UsageHolder).decode
_decode_str = msgspec.json.Decoder(str).decode

_FINISH_KEY = b'"finish_reason":'
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
    prompt, completion, total = holder.usage.counts()
    # Bounded, so an embeddings body (no choices, megabytes of vectors) is never scanned whole.
    choices = body.find(b'"choices":', 0, _CHOICES_WITHIN)
    finish_reason = finish_reason_after(body, choices) if choices >= 0 else None
    return Usage(prompt, completion, total, "backend", finish_reason)


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


_TRUE = b"true"
_INCLUDE_USAGE = msgspec.Raw(_TRUE)
_decode_members = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_encode = msgspec.json.Encoder().encode


_STREAM_OPTIONS_MEMBER = b'"stream_options":{"include_usage":true},'


def request_with_usage(body: bytes, *, streaming: bool = False) -> tuple[bytes, bool]:
    """Ask a streaming request for its usage event: ``(body_to_forward, client_asked)``.

    ``client_asked`` is True when the client set ``stream_options.include_usage`` itself (the
    body is returned unchanged and its usage event must reach the client), and also when there
    is nothing to do: a body that is not a JSON object, not ``"stream": true``, or whose
    ``stream_options`` is neither an object nor null (the backend will reject that one).
    Otherwise the body comes back with ``stream_options.include_usage`` set to true and
    ``client_asked`` False, and the gateway strips the usage event from the stream
    (``StreamUsage(strip_usage_event=True)``) so the client sees what it asked for.

    ``streaming=True`` says the caller already knows ``body`` is a JSON object with
    ``"stream": true``; it allows a byte-level fast path.

    The new body keeps every member, in order, with its value's exact bytes (non-ASCII text and
    number spelling included); only the whitespace between top-level members goes, and of
    duplicate keys only the last survives (as with any JSON decoder the backend uses).
    """
    if streaming and b'"stream_options"' not in body:
        # The caller parsed the body already (a JSON object with "stream": true) and there is
        # no stream_options to merge with: the member is added in front, the rest untouched.
        start = body.find(b"{")
        return body[: start + 1] + _STREAM_OPTIONS_MEMBER + body[start + 1 :], False
    if b'"stream"' not in body:
        return body, True
    try:
        members = _decode_members(body)
    except msgspec.MsgspecError:
        return body, True
    stream = members.get("stream")
    if stream is None or bytes(stream) != _TRUE:
        return body, True
    options_raw = members.get("stream_options")
    if options_raw is None or bytes(options_raw) == b"null":
        options: dict[str, msgspec.Raw] = {}
    else:
        try:
            options = _decode_members(options_raw)
        except msgspec.MsgspecError:
            return body, True
        asked = options.get("include_usage")
        if asked is not None and bytes(asked) == _TRUE:
            return body, True
    options["include_usage"] = _INCLUDE_USAGE
    members["stream_options"] = msgspec.Raw(_encode(options))
    return _encode(members), False


class _Part(msgspec.Struct):
    text: str | None = None  # image and audio parts carry no text


class _Message(msgspec.Struct):
    content: str | list[_Part] | None = None


Prompt = str | list[str | int | list[int]]  # text, texts, token ids, or lists of token ids


class _PromptFields(msgspec.Struct):
    messages: list[_Message] | None = None
    prompt: Prompt | None = None
    input: Prompt | None = None  # embeddings


_decode_prompt_fields = msgspec.json.Decoder(_PromptFields).decode


def estimate_prompt_tokens(body: bytes, chars_per_token: float) -> int:
    """A cheap prompt-token estimate for a request body, at least 1.

    Counts the characters of chat ``messages[].content`` (a string, or the ``text`` of its parts),
    of a completions ``prompt`` or of an embeddings ``input`` (a string or a list of strings),
    divides by ``chars_per_token`` and rounds up; pre-tokenized prompts count one token per id.
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
    for prompt in (fields.prompt, fields.input):
        if isinstance(prompt, str):
            chars += len(prompt)
        elif prompt:
            for item in prompt:
                if isinstance(item, str):
                    chars += len(item)
                else:
                    ids += len(item) if isinstance(item, list) else 1
    return max(1, math.ceil(chars / chars_per_token) + ids)
