"""Keys from llmproxy's own store (``type: builtin``), served from memory.

A lookup is a dict access by the key's SHA-256 plus a constant-time comparison — no database on
the request path (a SQLite read costs ~20 µs and blocks the loop; a PostgreSQL one is a network
round trip; the dict costs well under 1 µs). The index holds every non-revoked key and follows the
store (``auth.builtin_db``: a SQLite file, or a PostgreSQL database that replicas share):

- a background task asks the store for changes every ``refresh_interval`` seconds — SQLite answers
  with every key when its ``data_version`` moved, PostgreSQL with the keys changed since the last
  answer — so a key added, updated or revoked by the CLI or another gateway is seen within one
  interval;
- PostgreSQL also pushes each change (LISTEN/NOTIFY): the task wakes at once and fetches that key;
- every ``resync_interval`` the whole index is loaded again, the net under both;
- the admin API calls :meth:`BuiltinProvider.reload_now` after a write, so the change is visible to
  this process at once (then ``AuthPipeline.invalidate(sha256)`` drops its cached lookup).

The provider's :attr:`~BuiltinProvider.teams` follows the store's teams the same way: every
load that finds them changed replaces the directory the request path reads.

A second task writes quota use back (:meth:`count_usage`, batched every
:data:`QUOTA_FLUSH_INTERVAL`), so a restart or another replica starts from what was used.
When the store cannot be read the provider keeps serving the index it has and logs the failure once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from pathlib import Path
from types import MappingProxyType
from typing import Final

from llmproxy.apikey import PresentedKey, digests_equal
from llmproxy.auth.providers.base import KeyData, ProviderError
from llmproxy.keystore import KeyRecord, KeyStoreError
from llmproxy.keystore.access import KeyStoreAccess, open_key_store
from llmproxy.teams import TeamIndex

log = logging.getLogger("llmproxy.auth")

_STOP_TIMEOUT: Final = 2.0
"""Longest wait in ``close()`` for the refresh task to unwind and the last quota write."""

QUOTA_FLUSH_INTERVAL: Final = 1.0
"""Seconds between two quota write-backs: one statement for every key used meanwhile."""

_Index = dict[str, tuple[str, KeyData]]
"""``sha256 → (sha256, data)``: the digest is kept to compare it in constant time."""


def _entry(record: KeyRecord) -> tuple[str, KeyData]:
    return record.sha256, MappingProxyType(record.as_data())


class BuiltinProvider:
    """The ``builtin`` key provider over the store ``location`` names (created empty if missing):
    a SQLite path, relative to ``base_dir``, or a ``postgresql://`` URL."""

    def __init__(
        self,
        name: str,
        location: str | Path,
        *,
        base_dir: Path = Path(),
        refresh_interval: float = 1.0,
        resync_interval: float = 60.0,
    ) -> None:
        if refresh_interval <= 0 or resync_interval <= 0:
            raise ValueError(
                f"refresh_interval and resync_interval must be positive, got "
                f"{refresh_interval!r} and {resync_interval!r}"
            )
        self.name = name
        self.store: KeyStoreAccess = open_key_store(str(location), base_dir)
        self.location = self.store.location
        self._refresh_interval = refresh_interval
        self._resync_interval = resync_interval
        self._index: _Index | None = None  # None until open() and after close()
        self._ids: dict[str, str] = {}  # key id → sha256, for patches and quota counting
        self._cursor: object | None = None
        self._synced_at = 0.0
        self._changed: set[str] = set()  # ids another process announced
        self._reload_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failing = False
        self._usage: dict[str, int] = {}
        self.teams = TeamIndex()
        """The store's teams, following it like the keys (the request path's directory)."""

    async def open(self) -> None:
        """Open (or create) the store, load the index, then follow the store's changes."""
        # 1. Open the store (creating or migrating it is I/O, off the loop).
        try:
            await self.store.open()
        except (KeyStoreError, OSError) as exc:
            raise ProviderError(f"builtin {self.name!r}: cannot open the key store: {exc}") from exc
        # 2. Load every key before the first request is served.
        try:
            await self.reload_now()
        except BaseException:
            await self.store.close()
            raise
        # 3. Follow writes by other processes.
        self.store.on_change(self._announced)
        self._tasks = [
            asyncio.create_task(self._watch(), name=f"llmproxy.auth.builtin.{self.name}"),
            asyncio.create_task(self._write_back(), name=f"llmproxy.auth.quota.{self.name}"),
        ]

    async def lookup(self, key: PresentedKey) -> KeyData | None:
        index = self._index
        if index is None:
            raise ProviderError(f"builtin {self.name!r}: not open")
        entry = index.get(key.sha256)
        if entry is None or not digests_equal(entry[0], key.sha256):
            return None
        return entry[1]

    def count_usage(self, key_id: str, tokens: int) -> bool:
        """Add ``tokens`` to the quota used by ``key_id`` at the next write-back; False when the
        key is not one of this store's (a static key, say) and nothing is counted."""
        if tokens <= 0 or key_id not in self._ids:
            return False
        self._usage[key_id] = self._usage.get(key_id, 0) + tokens
        return True

    async def reload_now(self) -> None:
        """Load every key from the store now (the admin API calls this after a write)."""
        await self._load(full=True)

    async def _load(self, *, full: bool) -> None:
        async with self._reload_lock:
            changed, self._changed = self._changed, set()
            cursor = None if full else self._cursor
            try:
                changes = await self.store.changes(cursor, changed)
            except KeyStoreError as exc:
                self._changed |= changed
                raise ProviderError(
                    f"builtin {self.name!r}: cannot read the key store: {exc}"
                ) from exc
            if changes.complete:
                index = {r.sha256: _entry(r) for r in changes.records if not r.revoked}
                ids = {r.id: r.sha256 for r in changes.records if not r.revoked}
                self._synced_at = time.monotonic()
            else:
                index, ids = self._patched(changes.records)
            # One reference swap: a concurrent lookup sees the old index or the new one, whole.
            self._index = index
            self._ids = ids
            if changes.teams is not None:
                self.teams.replace(changes.teams)
            self._cursor = changes.cursor

    def _patched(self, records: Collection[KeyRecord]) -> tuple[_Index, dict[str, str]]:
        index = dict(self._index or {})
        ids = dict(self._ids)
        for record in records:
            old = ids.pop(record.id, None)
            if old is not None:
                index.pop(old, None)
            if not record.revoked:
                index[record.sha256] = _entry(record)
                ids[record.id] = record.sha256
        return index, ids

    def invalidate(self) -> None:
        """Reload the index soon, in the background, without waiting (call from the loop)."""
        self._cursor = None
        self._wake.set()

    def _announced(self, key_id: str) -> None:
        """The store says another process changed ``key_id`` ("" when it cannot say which)."""
        if key_id:
            self._changed.add(key_id)
        self._wake.set()

    async def close(self) -> None:
        """Stop following the store, write back the last quota use, forget the keys, close."""
        # 1. Stop the refresh and write-back tasks, waiting with a bound for a call in flight.
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=_STOP_TIMEOUT)
            if pending:
                log.warning(
                    "builtin provider %s: background task did not stop within %.1fs; abandoning it",
                    self.name,
                    _STOP_TIMEOUT,
                )
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error(
                        "builtin provider %s: background task had crashed",
                        self.name,
                        exc_info=task.exception(),
                    )
        # 2. Write back what was used since the last write-back.
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                await self._flush_usage()
        except (ProviderError, TimeoutError) as exc:
            log.error("builtin provider %s: quota use not written back: %s", self.name, exc)
        # 3. Refuse lookups from now on rather than answer from a store being closed.
        self._index = None
        # 4. Close the store.
        await self.store.close()

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
                    log.info("builtin provider %s: key store usable again", self.name)
                self._failing = False

    async def _refresh(self) -> None:
        """Fetch what changed since the last load; everything when the resync is due."""
        due = time.monotonic() - self._synced_at >= self._resync_interval
        await self._load(full=self._cursor is None or due)

    async def _write_back(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(QUOTA_FLUSH_INTERVAL)
            try:
                await self._flush_usage()
            except ProviderError as exc:
                if not failing:
                    log.warning("%s; keeping the counts to write them later", exc)
                failing = True
            else:
                failing = False

    async def _flush_usage(self) -> None:
        """Write the quota use counted since the last flush; kept for the next one on failure."""
        used, self._usage = self._usage, {}
        if not used:
            return
        try:
            await self.store.add_usage(used)
        except KeyStoreError as exc:
            for key_id, tokens in used.items():
                self._usage[key_id] = self._usage.get(key_id, 0) + tokens
            raise ProviderError(
                f"builtin {self.name!r}: cannot write quota use to the key store: {exc}"
            ) from exc
