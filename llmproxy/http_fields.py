"""What may become an HTTP header: one definition read by config, key stores and the gateway.

Values that reach a header come from many places — a key's ``user_id`` in the builtin store, a
provider's metadata, a Lua decision, a backend's ``headers`` in the config — and a CR or LF in
any of them would let it write its own headers (or make the HTTP client raise mid-request). So
each is checked where it enters: the config and ``keys add`` refuse a bad one with a clear
message, and the request path refuses a request whose decision produced one (500, logged with
the provider's name), never sending it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

RawHeaders = Sequence[tuple[bytes, bytes]]
"""Header name/value pairs as the ASGI server and the HTTP client give them (names lowercase)."""

# RFC 9110 §5.6.2 token: the characters a field name may have.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters other than horizontal tab are never part of a field value (§5.5).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a header name, or None when it can."""
    if not _TOKEN.fullmatch(name):
        return f"{name!r} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)"
    return None


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as a header value, or None when it can."""
    if _CONTROL.search(value):
        return "it contains a control character (CR, LF, NUL...), which cannot be sent in a header"
    if value != value.strip(" \t"):
        return "it starts or ends with whitespace, which a header value cannot keep"
    return None
