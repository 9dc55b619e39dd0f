"""Keys from llmproxy's own store (``type: builtin``), served from memory.

A lookup is a dict access by the key's SHA-256 plus a constant-time comparison — no SQLite on the
request path (a SQLite read costs ~20 µs and blocks the loop; the dict costs well under 1 µs). The
index holds every non-revoked key and is rebuilt, off the loop, when the store changes:

- a background task polls the store's ``data_version`` every ``refresh_interval`` seconds (a cheap
  pragma, no table read), so a key added, updated or revoked by the CLI or by another gateway
  process is seen within one interval;
- the admin API calls :meth:`BuiltinProvider.reload_now` after a write, so the change is visible to
  this process at once (then ``AuthPipeline.invalidate(sha256)`` drops its cached lookup).

When the store cannot be read the provider keeps serving the index it has and logs the failure once.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from types import MappingProxyType
from typing import Final

from llmproxy.apikey import PresentedKey, digests_equal
from llmproxy.auth.providers.base import KeyData, ProviderError
from llmproxy.keystore import KeyStore, KeyStoreError

log = logging.getLogger("llmproxy.auth")

_STOP_TIMEOUT: Final = 2.0
"""Longest wait in ``close()`` for the refresh task to unwind."""

_Index = dict[str, tuple[str, KeyData]]
"""``sha256 → (sha256, data)``: the digest is kept to compare it in constant time."""


def _load_index(store: KeyStore) -> tuple[int, _Index]:
    """The store's version and every non-revoked key (runs in a worker thread).

    The version is read first: a write landing between the two reads changes the version again,
    so the next poll reloads instead of missing it.
    """
    version = store.data_version()
    index: _Index = {}
    for record in store.all_records():
        index[record.sha256] = (record.sha256, MappingProxyType(record.as_data()))
    return version, index


class BuiltinProvider:
    """The ``builtin`` key provider over the SQLite file at ``path`` (created empty if missing)."""

    def __init__(self, name: str, path: str | Path, *, refresh_interval: float = 1.0) -> None:
        if refresh_interval <= 0:
            raise ValueError(f"refresh_interval: must be positive, got {refresh_interval!r}")
        self.name = name
        self.path = Path(path)
        self._store = KeyStore(path)
        self._refresh_interval = refresh_interval
        self._index: _Index | None = None  # None until open() and after close()
        self._version: int | None = None
        self._reload_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def open(self) -> None:
        """Open (or create) the store, load the index, then watch the store for changes."""
        # 1. Open the store in a thread: creating the file and migrating it is disk I/O.
        try:
            await asyncio.to_thread(self._store.open)
        except (KeyStoreError, sqlite3.Error, OSError) as exc:
            raise ProviderError(f"builtin {self.name!r}: cannot open {self.path}: {exc}") from exc
        # 2. Load every key before the first request is served.
        try:
            await self.reload_now()
        except BaseException:
            await asyncio.to_thread(self._store.close)
            raise
        # 3. Watch for writes by other processes.
        self._task = asyncio.create_task(self._watch(), name=f"llmproxy.auth.builtin.{self.name}")

    async def lookup(self, key: PresentedKey) -> KeyData | None:
        index = self._index
        if index is None:
            raise ProviderError(f"builtin {self.name!r}: not open")
        entry = index.get(key.sha256)
        if entry is None or not digests_equal(entry[0], key.sha256):
            return None
        return entry[1]

    async def reload_now(self) -> None:
        """Rebuild the index from the store now (the admin API calls this after a write)."""
        async with self._reload_lock:
            try:
                version, index = await asyncio.to_thread(_load_index, self._store)
            except (KeyStoreError, sqlite3.Error) as exc:
                raise ProviderError(
                    f"builtin {self.name!r}: cannot read {self.path}: {exc}"
                ) from exc
            # One reference swap: a concurrent lookup sees the old index or the new one, whole.
            self._index = index
            self._version = version

    def invalidate(self) -> None:
        """Reload the index soon, in the background, without waiting (call from the loop)."""
        self._version = None
        self._wake.set()

    async def close(self) -> None:
        """Stop watching, forget the keys and close the store."""
        # 1. Stop the refresh task, waiting with a bound for a reload in flight to unwind.
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=_STOP_TIMEOUT)
            if not done:
                log.warning(
                    "builtin provider %s: refresh task did not stop within %.1fs; abandoning it",
                    self.name,
                    _STOP_TIMEOUT,
                )
            elif not task.cancelled() and task.exception() is not None:
                log.error(
                    "builtin provider %s: refresh task had crashed",
                    self.name,
                    exc_info=task.exception(),
                )
        # 2. Refuse lookups from now on rather than answer from a store being closed.
        self._index = None
        # 3. Close the connection; a thread still reading finishes first (the store's lock), and
        #    the close completes in its thread even if this coroutine is cancelled meanwhile.
        await asyncio.to_thread(self._store.close)

    async def _watch(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._refresh_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._refresh()
            except ProviderError as exc:
                if not self._failing:
                    log.warning("%s; serving the keys loaded before until it recovers", exc)
                self._failing = True
            else:
                if self._failing:
                    log.info("builtin provider %s: key store readable again", self.name)
                self._failing = False

    async def _refresh(self) -> None:
        """Reload when the store changed since the last load (or the index was invalidated)."""
        if self._version is not None:
            try:
                version = await asyncio.to_thread(self._store.data_version)
            except (KeyStoreError, sqlite3.Error) as exc:
                raise ProviderError(
                    f"builtin {self.name!r}: cannot read {self.path}: {exc}"
                ) from exc
            if version == self._version:
                return
        await self.reload_now()
