"""The protobuf wire format, as much of it as OTLP spans need. Pure functions over bytes.

A message is its fields one after another, each a *tag* (field number and wire type as a
varint) then the value: a varint (ints, enums, bools), 8 little-endian bytes (``fixed64``,
``double``), 4 (``fixed32``), or a length-prefixed run of bytes (strings, bytes and nested
messages). That is all :mod:`llmproxy.tracing.otlp` writes
(https://protobuf.dev/programming-guides/encoding/).

Why by hand: OpenTelemetry's encoder builds a Python protobuf object per span, attribute and
value and then serialises them — about 25 µs per span, most of an export's cost. Here a
message is a ``bytes`` join; a field whose tag and key never change (an attribute's name) is
encoded once at import, so a span costs a few joins.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
"""Wire types."""

_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_FIXED32 = struct.Struct("<I").pack
_SMALL = [bytes((n,)) for n in range(128)]
"""Varints below 128 are their own single byte: most lengths, enums and counts."""


def varint(value: int) -> bytes:
    """``value`` (0 ≤ value < 2**64) as a base-128 varint, low groups first."""
    if value < 128:
        return _SMALL[value]
    if value < 16384:
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while value > 127:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field: int, wire: int) -> bytes:
    """A field's key: its number and wire type."""
    return varint(field << 3 | wire)


_LENGTH_TAGS = tuple(tag(field, LENGTH) for field in range(16))
"""The tags of length-delimited fields 0-15 (one byte each: every one OTLP spans use)."""


def length_delimited(field: int, payload: bytes) -> bytes:
    """A string, bytes or nested message field (``payload`` already encoded)."""
    size = len(payload)
    key = _LENGTH_TAGS[field] if field < 16 else tag(field, LENGTH)
    return key + (_SMALL[size] if size < 128 else varint(size)) + payload


def string(field: int, text: str) -> bytes:
    """A string field (UTF-8)."""
    return length_delimited(field, text.encode())


def int64(field: int, value: int) -> bytes:
    """An ``int64`` field; a negative value takes ten bytes (two's complement), as protobuf's."""
    return tag(field, VARINT) + varint(value & 0xFFFFFFFFFFFFFFFF)


def fixed64(field: int, value: int) -> bytes:
    """A ``fixed64`` field (OTLP's nanosecond times)."""
    return tag(field, FIXED64) + _FIXED64(value)


def fixed32(field: int, value: int) -> bytes:
    """A ``fixed32`` field (a span's flags)."""
    return tag(field, FIXED32) + _FIXED32(value)


# common.proto: AnyValue's fields, and KeyValue { key = 1; value = 2 }.
_STRING_VALUE, _BOOL_VALUE, _INT_VALUE, _DOUBLE_VALUE, _ARRAY_VALUE = 1, 2, 3, 4, 5
_ARRAY_VALUES = 1
_KEY, _VALUE = 1, 2
_STRING_TAG = tag(_STRING_VALUE, LENGTH)
_BOOL_TAG = tag(_BOOL_VALUE, VARINT)
_INT_TAG = tag(_INT_VALUE, VARINT)
_DOUBLE_TAG = tag(_DOUBLE_VALUE, FIXED64)
_VALUE_TAG = tag(_VALUE, LENGTH)

AttributeValue = str | bool | int | float | Sequence[str]
"""What a span attribute holds here: OTLP's scalar values, and arrays of strings."""


def any_value(value: AttributeValue) -> bytes:
    """An ``AnyValue`` message (bool is tested before int: ``True`` is an ``int`` too)."""
    if isinstance(value, str):
        text = value.encode()
        size = len(text)
        return _STRING_TAG + (_SMALL[size] if size < 128 else varint(size)) + text
    if isinstance(value, bool):
        return _BOOL_TAG + _SMALL[value]
    if isinstance(value, int):
        return _INT_TAG + varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return _DOUBLE_TAG + _DOUBLE(value)
    items = b"".join(length_delimited(_ARRAY_VALUES, any_value(item)) for item in value)
    return length_delimited(_ARRAY_VALUE, items)


def key_prefix(key: str) -> bytes:
    """A ``KeyValue``'s key field, encoded once per attribute name (see :func:`key_value`)."""
    return string(_KEY, key)


def key_value(prefix: bytes, value: AttributeValue) -> bytes:
    """A ``KeyValue`` message's payload: ``prefix`` from :func:`key_prefix`, then the value."""
    encoded = any_value(value)
    size = len(encoded)
    return prefix + _VALUE_TAG + (_SMALL[size] if size < 128 else varint(size)) + encoded


def key_value_field(field: int, prefix: bytes, value: AttributeValue) -> bytes:
    """A ``KeyValue`` as field ``field`` of its message (``Span.attributes`` is field 9).

    The hot one: a span has a dozen attributes, so strings and ints are written inline."""
    if isinstance(value, str):
        text = value.encode()
        size = len(text)
        encoded = _STRING_TAG + (_SMALL[size] if size < 128 else varint(size)) + text
    elif isinstance(value, int) and not isinstance(value, bool):
        encoded = _INT_TAG + varint(value & 0xFFFFFFFFFFFFFFFF)
    else:
        encoded = any_value(value)
    size = len(encoded)
    payload = prefix + _VALUE_TAG + (_SMALL[size] if size < 128 else varint(size)) + encoded
    size = len(payload)
    return _LENGTH_TAGS[field] + (_SMALL[size] if size < 128 else varint(size)) + payload
