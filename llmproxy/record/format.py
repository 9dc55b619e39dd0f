"""One line of a traffic recording: what the daemon writes and ``llmproxy replay`` reads.

A recording is JSON Lines, one :class:`RecordedRequest` per line, written as requests end (so
not quite in arrival order: ``llmproxy replay`` sorts by ``offset``). ``offset`` is seconds since
the recording started (the first line of a file need not be 0: a rotated file goes on counting),
so a replay can keep the original spacing of requests. Either ``body`` holds the request body the
client sent (``record.bodies: true``), or ``shape`` holds only its size, enough
for a replay to send a request of the same shape with made-up text. The key's id is kept to group
requests by tenant; the secret never is.

The format is versioned (``v``); a reader refuses versions it does not know, naming the line.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

FORMAT_VERSION: Final = 1


class MessageShape(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """A chat message without its text: its role and how many characters it had."""

    role: str
    chars: int


class RequestShape(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """The size of a request whose body was not recorded.

    ``messages`` for chat completions, ``prompt_chars`` for completions and embeddings;
    ``max_tokens`` as the client asked (None when it did not).
    """

    messages: tuple[MessageShape, ...] = ()
    prompt_chars: int = 0
    max_tokens: int | None = None


class Outcome(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """What the gateway saw happen to the request."""

    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    duration_ms: float = 0.0
    cancelled: bool = False


class RecordedRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One recorded request (one line)."""

    v: int = FORMAT_VERSION
    offset: float
    """Seconds from the start of the recording to the request's arrival."""
    time: float = 0.0
    """Unix time of arrival."""
    method: str = "POST"
    endpoint: str
    """Path, e.g. ``/v1/chat/completions``."""
    model: str = ""
    stream: bool = False
    key_id: str = ""
    body: dict[str, Any] | None = None
    shape: RequestShape | None = None
    outcome: Outcome | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RecordedRequest)


def encode_line(request: RecordedRequest) -> bytes:
    """``request`` as one line of JSON, newline included."""
    return _encoder.encode(request) + b"\n"


class FormatError(ValueError):
    """A line that is not a recorded request; the message names what is wrong."""


def decode_line(line: bytes | str) -> RecordedRequest:
    """Read one line back; raises :class:`FormatError` for malformed JSON, missing fields, a
    body and shape both missing, or a format version this reader does not know."""
    try:
        request = _decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise FormatError(str(exc)) from None
    if request.v != FORMAT_VERSION:
        raise FormatError(f"format version {request.v} unsupported (this reads {FORMAT_VERSION})")
    if request.body is None and request.shape is None:
        raise FormatError("a recorded request needs a `body` or a `shape`")
    return request
