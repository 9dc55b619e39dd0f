"""A bounded TTL cache of provider lookups, keyed by the key's SHA-256.

A hit costs one dict lookup and a clock comparison, so a cached request never waits on Redis, SQL
or a webhook. Found keys live ``ttl`` seconds, unknown keys ``negative_ttl`` (short, so a key added
elsewhere works quickly while a flood of bad keys still does not reach the store). When full, the
oldest entry goes first. Failures are never cached: the next request asks again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

Value = TypeVar("Value")


class LookupCache(Generic[Value]):
    """``sha256 → value`` with per-entry expiry and a size bound (FIFO eviction)."""

    __slots__ = ("_clock", "_entries", "_max_entries", "_negative_ttl", "_ttl")

    def __init__(
        self,
        ttl: float,
        negative_ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, Value | None]] = {}

    def get(self, sha256: str) -> tuple[bool, Value | None]:
        """``(True, value)`` on a live hit (None: cached "unknown key"), else ``(False, None)``."""
        entry = self._entries.get(sha256)
        if entry is None:
            return False, None
        if entry[0] <= self._clock():
            del self._entries[sha256]
            return False, None
        return True, entry[1]

    def put(self, sha256: str, value: Value | None) -> None:
        """Remember ``value`` (None: the key is unknown) for the matching TTL."""
        ttl = self._ttl if value is not None else self._negative_ttl
        if ttl <= 0:
            return
        entries = self._entries
        if sha256 not in entries and len(entries) >= self._max_entries:
            del entries[next(iter(entries))]
        entries[sha256] = (self._clock() + ttl, value)

    def invalidate(self, sha256: str | None = None) -> None:
        """Forget one key (after a revoke or update), or everything."""
        if sha256 is None:
            self._entries.clear()
        else:
            self._entries.pop(sha256, None)

    def __len__(self) -> int:
        return len(self._entries)
