"""Find the API key in a request's headers.

``auth.header_names`` are searched in order, case-insensitively (ASGI lowercases header names).
``Authorization`` carries ``Bearer <key>``; any other header carries the key itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmproxy.http_fields import RawHeaders


def header_order(header_names: Sequence[str]) -> tuple[bytes, ...]:
    """The configured header names, lowercased, as the ASGI server delivers them."""
    return tuple(name.strip().lower().encode("latin-1") for name in header_names)


def extract_key(headers: RawHeaders, names: tuple[bytes, ...]) -> str | None:
    """The key from the first configured header that carries one, or None."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in names and name not in found:
            found[name] = value
    for name in names:
        raw = found.get(name)
        if raw is None:
            continue
        text = raw.decode("latin-1").strip()
        if name == b"authorization":
            scheme, _, credentials = text.partition(" ")
            if scheme.lower() == "bearer":
                text = credentials.strip()
            elif credentials:
                continue  # another scheme (Basic, ...) carries no API key
        if text:
            return text
    return None
