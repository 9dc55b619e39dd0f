"""The request body as the backend will parse it: the fields the gateway judges, and its edits.

The gateway decides on a few members of the JSON body (model allowlists, routing, limits,
billing, priority) and forwards the original bytes. That is only safe if it reads those members
exactly as the backend's parser will, so:

* keys are compared after unescaping: ``"mode\\u006c"`` *is* ``model`` (msgspec, like Python's
  ``json``, unescapes keys);
* a member the gateway reads or sets (:data:`JUDGED`) may appear once: parsers disagree on
  which duplicate wins (Python and Go keep the last, serde refuses, others keep the first), so
  a body that has one twice is refused with 400 ``duplicate_member``;
* nesting deeper than :data:`MAX_DEPTH` is refused with 400 before any parser recurses into it;
* the gateway's own edits (``priority``, ``stream_options.include_usage``) are made from what
  was decoded, never from a byte search that an escaped or nested key could fool.

The judged members are decoded in one msgspec pass into boxes whose decode hook notes each
occurrence, which is how duplicates are seen without a second parse; every other member is
skipped unbuilt. An ordinary body costs about 2 µs and is forwarded as its own bytes.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import msgspec

from llmproxy.errors import GatewayError

MAX_DEPTH = 64
"""Deepest nesting of objects and arrays accepted in a request body."""

MAX_COUNT = 2**31 - 1
"""Largest ``max_tokens``, ``max_completion_tokens``, ``max_output_tokens`` or ``n`` accepted
(a 4,000-digit count would reach the limits store as a number no one can add)."""

JUDGED = (
    "model",
    "stream",
    "stream_options",
    "priority",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "n",
    "user",
    "previous_response_id",
)
"""Top-level members the gateway reads or sets; each may appear once."""


class _Box:
    """A judged member's decoded value; the subclass says which member it is and its type."""

    __slots__ = ("value",)
    member = ""
    kinds: tuple[type, ...] = ()
    what = ""

    def __init__(self, value: Any) -> None:
        self.value = value


class _Model(_Box):
    __slots__ = ()
    member, kinds, what = "model", (str,), "a string"


class _Stream(_Box):
    __slots__ = ()
    member, kinds, what = "stream", (bool,), "a boolean"


class _Priority(_Box):
    __slots__ = ()
    member, kinds, what = "priority", (int, float, str, bool, list, dict), "a value"


_COUNT = "an integer from 0 to 2147483647"


class _MaxTokens(_Box):
    __slots__ = ()
    member, kinds, what = "max_tokens", (int,), _COUNT


class _MaxCompletionTokens(_Box):
    __slots__ = ()
    member, kinds, what = "max_completion_tokens", (int,), _COUNT


class _MaxOutputTokens(_Box):
    __slots__ = ()
    member, kinds, what = "max_output_tokens", (int,), _COUNT


class _N(_Box):
    __slots__ = ()
    member, kinds, what = "n", (int,), _COUNT


class _User(_Box):
    __slots__ = ()
    member, kinds, what = "user", (str,), "a string"


class _PreviousResponse(_Box):
    __slots__ = ()
    member, kinds, what = "previous_response_id", (str,), "a string"


class _IncludeUsage(_Box):
    __slots__ = ()
    member, kinds, what = "stream_options.include_usage", (bool,), "a boolean"


class _Options(_Box):
    __slots__ = ()
    member, kinds, what = "stream_options", (dict,), "an object"


_seen: list[str] = []
_duplicate: list[str] = []  # the member the decode running now found twice
"""Judged members met by the decode running now, in order (see :func:`peek_body`). One list per
process is enough: decoding is synchronous and only ever runs on the event loop's thread."""


def _decode_hook(kind: type, value: Any) -> Any:
    if not issubclass(kind, _Box):
        raise NotImplementedError
    if kind.member in _seen:
        # Found at once: a body of a million duplicates is not decoded to its end.
        _duplicate.append(kind.member)
        raise ValueError(f"`{kind.member}` appears more than once")
    _seen.append(kind.member)
    if value is not None:
        kinds = kind.kinds
        # bool is an int to Python but not to the backend's schema: never a count.
        if type(value) not in kinds or (kinds == (int,) and not 0 <= value <= MAX_COUNT):
            raise ValueError(f"`{kind.member}` must be {kind.what} or null")
    return kind(value)


class _StreamOptions(msgspec.Struct):
    include_usage: _IncludeUsage | msgspec.UnsetType = msgspec.UNSET


class _Judged(msgspec.Struct):
    model: _Model | msgspec.UnsetType = msgspec.UNSET
    stream: _Stream | msgspec.UnsetType = msgspec.UNSET
    stream_options: _Options | msgspec.UnsetType = msgspec.UNSET
    priority: _Priority | msgspec.UnsetType = msgspec.UNSET
    max_tokens: _MaxTokens | msgspec.UnsetType = msgspec.UNSET
    max_completion_tokens: _MaxCompletionTokens | msgspec.UnsetType = msgspec.UNSET
    max_output_tokens: _MaxOutputTokens | msgspec.UnsetType = msgspec.UNSET
    n: _N | msgspec.UnsetType = msgspec.UNSET
    user: _User | msgspec.UnsetType = msgspec.UNSET
    previous_response_id: _PreviousResponse | msgspec.UnsetType = msgspec.UNSET


UNSET = msgspec.UNSET
_DECODER = msgspec.json.Decoder(_Judged, dec_hook=_decode_hook)
_OPTIONS_DECODER = msgspec.json.Decoder(_StreamOptions, dec_hook=_decode_hook)


class RequestPeek(msgspec.Struct, frozen=True):
    """What the gateway reads from a request body: exactly what the backend will read.

    A msgspec struct rather than a frozen dataclass: one is built per request, and a frozen
    dataclass's ``__init__`` costs five times as much.
    """

    model: str | None = None
    stream: bool | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    max_output_tokens: int | None = None
    """The Responses API's bound on the answer."""
    n: int | None = None
    has_priority: bool = False
    """The body sets ``priority`` itself (the gateway replaces it when it sends its own)."""
    has_stream_options: bool = False
    """The body has a ``stream_options`` member (an object or null)."""
    include_usage: bool = False
    """The client asked for the usage event itself (``stream_options.include_usage: true``)."""
    previous_response_id: str | None = None
    """The Responses API response this one continues: only its backend has it."""

    @property
    def streaming(self) -> bool:
        """True when the client asked for server-sent events."""
        return bool(self.stream)

    @property
    def completions(self) -> int:
        """How many completions the request asks for (``n``, at least 1)."""
        return self.n if self.n else 1

    @property
    def answer_limit(self) -> int:
        """The largest bound the client gave its answer (0: none): vLLM obeys
        ``max_completion_tokens`` over ``max_tokens``, so reserving the smaller would let the
        answer outgrow its reservation."""
        return max(
            self.max_tokens or 0, self.max_completion_tokens or 0, self.max_output_tokens or 0
        )


EMPTY_PEEK = RequestPeek()


def peek_body(body: bytes, *, model_required: bool) -> RequestPeek:
    """Decode ``body``'s judged members or raise a 400 :class:`GatewayError` naming the problem."""
    if not body:
        if model_required:
            raise GatewayError(400, "the request body is empty; send a JSON object", "invalid_body")
        return EMPTY_PEEK
    if too_deep(body, MAX_DEPTH):
        raise GatewayError(
            400,
            f"the request body nests objects and arrays deeper than {MAX_DEPTH} levels",
            "invalid_body",
        )
    _seen.clear()
    _duplicate.clear()
    try:
        judged = _DECODER.decode(body)
        options = judged.stream_options
        include_usage = False
        if options is not UNSET and options.value:
            # Its members were decoded last-one-wins; once more, for a duplicate among them.
            raw = _decode_members(body)["stream_options"]
            asked = _OPTIONS_DECODER.decode(raw).include_usage
            include_usage = asked is not UNSET and asked.value is True
    except msgspec.ValidationError as exc:
        if _duplicate:
            raise _twice(_duplicate[0]) from None
        raise _invalid(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise GatewayError(
            400, f"the request body is not valid JSON: {exc}", "invalid_json"
        ) from None
    if not body.isascii():
        # msgspec checks the strings it decodes; those it skips are checked here, since the
        # backend's parser would refuse them (or read them differently).
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GatewayError(
                400, f"the request body is not valid UTF-8 (byte {exc.start})", "invalid_json"
            ) from None
    model, stream, max_tokens = judged.model, judged.stream, judged.max_tokens
    most, n, output = judged.max_completion_tokens, judged.n, judged.max_output_tokens
    previous = judged.previous_response_id
    peek = RequestPeek(
        model=None if model is UNSET else model.value,
        stream=None if stream is UNSET else stream.value,
        max_tokens=None if max_tokens is UNSET else max_tokens.value,
        max_completion_tokens=None if most is UNSET else most.value,
        max_output_tokens=None if output is UNSET else output.value,
        n=None if n is UNSET else n.value,
        has_priority=judged.priority is not UNSET,
        has_stream_options=options is not UNSET,
        include_usage=include_usage,
        previous_response_id=None if previous is UNSET else previous.value,
    )
    if model_required and not peek.model:
        raise GatewayError(
            400, "you must provide a model parameter", "missing_model", param="model"
        )
    if peek.model is not None:
        _check_model(peek.model)
    return peek


MAX_MODEL_CHARS = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_model(model: str) -> None:
    """A model is a name: it becomes a routing key, a metric label, a log field and a usage
    record column (PostgreSQL refuses a NUL in text), so control characters and runaway lengths
    are the client's mistake, refused here rather than failing further on."""
    if len(model) > MAX_MODEL_CHARS or _CONTROL.search(model):
        raise GatewayError(
            400,
            f"model must be a name of at most {MAX_MODEL_CHARS} characters, without control "
            "characters",
            "invalid_model",
            param="model",
        )


_BOUNDARY = re.compile(rb'boundary="?([^";]+)"?', re.IGNORECASE)
_FORM_NAME = re.compile(rb'\bname="([^"]*)"', re.IGNORECASE)
_FORM_FIELDS = ("model", "stream")


def peek_form(body: bytes, content_type: bytes) -> RequestPeek:
    """The judged fields of a ``multipart/form-data`` body (``/v1/audio/transcriptions``):
    its ``model`` (and ``stream``), so such requests are routed, allowed and billed by model
    like JSON ones. A field sent twice is refused, as in JSON; a body whose form cannot be read
    is refused with 400 (the backend would not read it either)."""
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise GatewayError(400, "a multipart body needs a boundary", "invalid_body")
    delimiter = b"--" + found.group(1).strip()
    fields: dict[str, bytes] = {}
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, separator, value = part.partition(b"\r\n\r\n")
        if not separator:
            raise GatewayError(400, "a multipart part has no header block", "invalid_body")
        name = _FORM_NAME.search(head)
        if name is None:
            continue
        field = name.group(1).decode("latin-1")
        if field in _FORM_FIELDS:
            if field in fields:
                raise _twice(field)
            fields[field] = value.removesuffix(b"\r\n")
    try:
        model = fields["model"].decode("utf-8") if "model" in fields else None
    except UnicodeDecodeError:
        raise GatewayError(400, "the form's model is not UTF-8", "invalid_body") from None
    stream = fields.get("stream", b"").strip().lower() in (b"true", b"1")
    if model:
        _check_model(model)
    return RequestPeek(model=model or None, stream=stream or None)


def _twice(member: str) -> GatewayError:
    return GatewayError(
        400,
        f"the request body has the member `{member}` more than once; send it once",
        "duplicate_member",
        param=member,
    )


def _invalid(text: str) -> GatewayError:
    if "Expected `object`" in text and "at `$" not in text:
        return GatewayError(400, "the request body must be a JSON object", "invalid_body")
    field = text.rsplit("at `$.", 1)[-1].rstrip("`") if "at `$." in text else None
    return GatewayError(400, f"invalid request body: {text}", "invalid_body", param=field)


# Everything but quotes and brackets (deleted), and brackets as +1 / -1 (signed bytes).
_NOT_STRUCTURE = bytes(byte for byte in range(256) if byte not in b'[]{}"')
_AS_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def too_deep(body: bytes, limit: int) -> bool:
    """Whether ``body`` nests arrays and objects deeper than ``limit`` (or opens more than it
    closes that deep, which no JSON parser accepts either).

    Decoders recurse per level, so this runs before any of them. A body with no more than
    ``limit`` opening brackets cannot be deeper (the common case: two counts). Otherwise the
    depth is measured with operations that run in C: escaped backslashes and quotes go, so the
    quotes left delimit strings; all but quotes and brackets go; strings with no bracket in
    them go; the brackets left outside strings become +1 / -1 steps whose running sum is the
    depth (about 25 ns a bracket). Strings that do hold brackets are cut out a slice at a
    time, so memory stays bounded however many there are.
    """
    if body.count(b"{") + body.count(b"[") <= limit:
        return False
    structure = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    # Removing "" takes out a string without brackets, or joins two adjacent strings: either
    # way what lies outside strings is unchanged.
    structure = structure.replace(b'""', b"")
    depth = 0
    inside = False
    for start in range(0, len(structure), _SLICE):
        parts = structure[start : start + _SLICE].split(b'"')
        outside = b"".join(parts[1::2] if inside else parts[::2])
        if len(parts) % 2 == 0:
            inside = not inside  # the slice ends inside a string
        steps = memoryview(outside.translate(_AS_STEPS)).cast("b")
        if max(itertools.accumulate(steps, initial=depth)) > limit:
            return True
        depth += outside.count(b"[") + outside.count(b"{")
        depth -= outside.count(b"]") + outside.count(b"}")
    return False


_SLICE = 64 * 1024


_decode_members = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_encode = msgspec.json.Encoder().encode


def with_priority(body: bytes, peek: RequestPeek, priority: int) -> bytes:
    """``body`` with the top-level ``priority`` set to the gateway's value.

    Added in front when the body has none (what the decoder found, not a byte search, says
    so); when the client sent its own, the object is re-encoded with the gateway's value (a
    client must not choose its own priority). Only the whitespace between top-level members
    changes; every value keeps its bytes.
    """
    value = str(int(priority)).encode()
    if not peek.has_priority:
        start = body.find(b"{")
        return body[: start + 1] + b'"priority":' + value + b"," + body[start + 1 :]
    members = _decode_members(body)
    members["priority"] = msgspec.Raw(value)
    return _encode(members)


def without_priority(body: bytes) -> bytes:
    """``body`` without its top-level ``priority`` (a client may not choose its own place in
    vLLM's queue): the object re-encoded without it, every other value keeping its bytes."""
    members = _decode_members(body)
    members.pop("priority", None)
    return _encode(members)


_STREAM_OPTIONS_MEMBER = b'"stream_options":{"include_usage":true},'


def with_usage_requested(body: bytes, peek: RequestPeek) -> bytes:
    """A streaming ``body`` that asks for the usage event (``stream_options.include_usage``).

    Call only when the client did not ask itself (``not peek.include_usage``); the gateway then
    hides the usage event from the stream. Without a ``stream_options`` member it is added in
    front; otherwise the object is re-encoded with ``include_usage: true`` merged in.
    """
    if not peek.has_stream_options:
        start = body.find(b"{")
        return body[: start + 1] + _STREAM_OPTIONS_MEMBER + body[start + 1 :]
    members = _decode_members(body)
    raw = members.get("stream_options")
    options = {} if raw is None or bytes(raw) == b"null" else _decode_members(raw)
    options["include_usage"] = msgspec.Raw(b"true")
    members["stream_options"] = msgspec.Raw(_encode(options))
    return _encode(members)


def with_output_limit(body: bytes, member: str, tokens: int) -> bytes:
    """``body`` with its answer bounded to ``tokens`` (``member``: ``max_tokens``, or the
    Responses API's ``max_output_tokens``), for a request that set no bound: what a budget
    reserved is then all the backend may generate. A member present as ``null`` is replaced
    (two members would leave the backend's parser to pick one)."""
    members = _decode_members(body)
    members[member] = msgspec.Raw(b"%d" % tokens)
    return _encode(members)
