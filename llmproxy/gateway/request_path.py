"""The request path in its one canonical form: what every decision reads and what is forwarded.

A gateway that judges one path and forwards another can be walked past: auth, the model check,
limits and billing looked at ``/v1/x/../chat/completions`` while the backend (after the HTTP
client removed the dot segments) served ``/v1/chat/completions``. So the path is checked once, at
the edge, and must already be in the form every party resolves the same way; anything a
normaliser would change is refused with 400 ``invalid_path`` rather than rewritten:

* it starts with ``/`` and has no empty segment (``//``, a trailing ``/``) and no ``.`` or
  ``..`` segment (RFC 3986 §5.2.4 would remove them; nginx merges slashes);
* its raw bytes are unreserved characters, ``!$&'()*+,=:@`` and ``/`` — no ``;`` (matrix
  parameters some servers strip), no backslash (a separator on some servers), no control
  characters, no raw non-ASCII;
* a percent-escape is allowed only for a byte that has no other spelling: never for an
  unreserved character (``%61`` is ``a``: two spellings of one path), ``/``, ``\\``, ``%``
  (a second decoding) or a control character; escaped non-ASCII must be valid UTF-8.

What passes decodes to exactly one string, the :attr:`RequestPath.path` every rule reads, and its
raw bytes (:attr:`RequestPath.raw`) are sent upstream unchanged, so the backend decodes the same
string. Path rules (``auth.skip_paths``) match whole segments (:func:`under`).
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

# Raw bytes allowed outside escapes: RFC 3986 pchar without ";" plus "/", and "%" for escapes.
_RAW_OK = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,=:@/%]*")
_ESCAPE = re.compile(rb"%(?:[0-9A-Fa-f]{2})?")
# Bytes that must never be escaped: their escape has another spelling or hides a separator.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_NEVER_ESCAPED = _UNRESERVED | frozenset(b"/\\%") | frozenset(range(0x20)) | {0x7F}

MAX_PATH_LENGTH = 2048
"""Longest request path accepted (the header block limit bounds the whole target too)."""


class PathRefused(ValueError):
    """The path is not in canonical form; the message says why (it is shown to the client)."""


class RequestPath(NamedTuple):
    """A request path in canonical form: the decoded ``path`` and the ``raw`` bytes forwarded."""

    path: str
    raw: bytes


_KNOWN: dict[bytes, RequestPath] = {}
_KNOWN_MAX = 4096


def canonical_path(raw: bytes) -> RequestPath:
    """The canonical form of the raw request path, or :class:`PathRefused`.

    Paths that passed are remembered (a few thousand at most, then the memory starts over):
    nearly every request asks for one of a handful, and the check is the same every time.
    """
    known = _KNOWN.get(raw)
    if known is not None:
        return known
    checked = _check(raw)
    if len(_KNOWN) >= _KNOWN_MAX:
        _KNOWN.clear()
    _KNOWN[raw] = checked
    return checked


def _check(raw: bytes) -> RequestPath:
    if not raw.startswith(b"/"):
        raise PathRefused("the request path must start with /")
    if len(raw) > MAX_PATH_LENGTH:
        raise PathRefused(f"the request path is longer than {MAX_PATH_LENGTH} bytes")
    if _RAW_OK.fullmatch(raw) is None:
        raise PathRefused(
            "the request path has a character that must not appear in it "
            "(control characters, spaces, backslashes, ';' and raw non-ASCII are refused)"
        )
    if b"%" in raw:
        for match in _ESCAPE.finditer(raw):
            escape = match.group()
            if len(escape) != 3:
                raise PathRefused("the request path has a malformed percent-escape")
            if int(escape[1:], 16) in _NEVER_ESCAPED:
                raise PathRefused(
                    f"the request path escapes {escape.decode()}, which must be written as "
                    "itself or is a separator: send the path unescaped"
                )
        try:
            path = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise PathRefused("the request path's escapes are not valid UTF-8") from None
    else:
        path = raw.decode("ascii")
    for segment in path.split("/")[1:] if path != "/" else ():
        if segment in ("", ".", ".."):
            raise PathRefused(
                "the request path has an empty, '.' or '..' segment "
                "(a trailing or doubled '/' counts): send the path without them"
            )
    return RequestPath(path, raw)


def under(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``path`` is one of ``prefixes`` or below one of them, by whole segments.

    ``/v1/models`` covers ``/v1/models`` and ``/v1/models/x``, never ``/v1/modelsX``. ``path``
    is canonical, so it holds no ``..`` that could climb back out of a prefix.
    """
    for prefix in prefixes:
        if path.startswith(prefix) and (
            len(path) == len(prefix) or path[len(prefix)] == "/" or prefix.endswith("/")
        ):
            return True
    return False
