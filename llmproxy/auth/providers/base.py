"""The one interface every key provider implements.

A provider answers one question — "what do you know about this key?" — with the key's data (a
flat mapping of JSON-like values: ``status``, ``user_id``, ``total_quota``, ...), ``None`` when it
does not know the key, or :class:`ProviderError` when it cannot answer (server down, timeout,
malformed reply). Deciding what the data means (status, expiry, quota, Lua) is the pipeline's job,
not the provider's.

Providers never log or return the secret key; they receive a
:class:`~llmproxy.apikey.PresentedKey` and use ``secret`` only to query their store, or
``sha256`` when the store keeps hashes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from llmproxy.apikey import PresentedKey

KeyData = Mapping[str, object]
"""What a provider knows about one key: a flat mapping of JSON-like values."""


class ProviderError(Exception):
    """The provider could not answer: the pipeline applies the provider's ``on_error``.

    The message names the provider and the cause (``redis 'sessions': timeout after 0.5s``) and
    never contains the key.
    """


class KeyProvider(Protocol):
    """A source of key data, opened once per runtime snapshot and shared by its requests."""

    name: str

    async def open(self) -> None:
        """Connect (pools are created here, inside the running loop)."""

    async def lookup(self, key: PresentedKey) -> KeyData | None:
        """The key's data, ``None`` when unknown; raises :class:`ProviderError` on failure."""

    async def close(self) -> None:
        """Release connections; called when the snapshot retires."""
