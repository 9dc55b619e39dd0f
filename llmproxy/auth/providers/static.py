"""Keys written in the config: the top-level ``api_keys`` (type ``file``) or a ``static`` entry.

The keys are indexed by their SHA-256 when the runtime snapshot is built, so a lookup is a dict
access plus a constant-time comparison, and a config reload (which builds a new snapshot) is how
they change.
"""

from __future__ import annotations

from collections.abc import Iterable

from llmproxy.apikey import PresentedKey, digests_equal, display_prefix, key_sha256
from llmproxy.auth.providers.base import KeyData
from llmproxy.config.model import StaticKey


class StaticProvider:
    """A provider over keys known at config load."""

    def __init__(self, name: str, keys: Iterable[StaticKey]) -> None:
        self.name = name
        self._by_hash: dict[str, KeyData] = {}
        for entry in keys:
            digest = key_sha256(entry.key)
            data = entry.model_dump(exclude={"key"})
            data["prefix"] = display_prefix(entry.key)
            data["sha256"] = digest
            self._by_hash[digest] = data

    async def open(self) -> None:
        """Nothing to connect."""

    async def lookup(self, key: PresentedKey) -> KeyData | None:
        data = self._by_hash.get(key.sha256)
        if data is None or not digests_equal(str(data["sha256"]), key.sha256):
            return None
        return data

    async def close(self) -> None:
        """Nothing to release."""
