"""The journal of requests in flight for a usage store in a SQLite file: one memory-mapped file
per process (:mod:`llmproxy.usage.slots`) instead of rows written through the database.

Same contract as :class:`~llmproxy.usage.journal.Journal` — a request is journalled before its
first byte, its tokens checkpointed every :data:`~llmproxy.usage.journal.CHECKPOINT_INTERVAL`,
and a killed process's requests billed as ``interrupted`` at the next start or by a live worker
within :data:`~llmproxy.usage.journal.HEARTBEAT_INTERVAL` — at a fraction of the cost: an open
is a copy into memory on the event loop (durable against ``kill -9`` at once, so the response
never waits), a checkpoint a 24-byte copy.

A slot is freed once the request's record is committed (:meth:`FileJournal.written`), not when
the request ends, so a crash between the two bills the request from its slot. A crash in the
instant between the commit and the free leaves a slot whose record is stored: settling skips
every record id the store already holds.

With ``usage.synchronous: full`` (a power loss must not lose records either) the database
journal is used instead: this file is in the page cache, not on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Final

from llmproxy.pricing import NO_PRICES
from llmproxy.usage.journal import (
    CHECKPOINT_INTERVAL,
    HEARTBEAT_INTERVAL,
    Counter,
    Prices,
    RecoveredHook,
    ended,
    interrupted,
    log_recovered,
    process_owner,
)
from llmproxy.usage.record import UsageRecord
from llmproxy.usage.rows import Recovered
from llmproxy.usage.slots import SlotFile, orphans, read_rows
from llmproxy.usage.store import SqliteUsageStore

log = logging.getLogger("llmproxy.usage")

DIRECTORY_SUFFIX: Final = ".inflight"
"""The journal files of a usage file ``X`` live in the directory ``X.inflight``."""

_NOT_JOURNALLED: Final = -1


class SlotEntry:
    """One journalled request: its slot in this process's file."""

    __slots__ = ("counted", "counter", "journal", "key", "offset", "skeleton")

    def __init__(
        self, journal: FileJournal, skeleton: UsageRecord, counter: Counter, offset: int
    ) -> None:
        self.journal = journal
        self.key = skeleton.id
        self.skeleton = skeleton
        self.counter = counter
        self.offset = offset
        self.counted = (-1, -1)
        """The counts at the last checkpoint."""

    async def durable(self) -> None:
        """Nothing to wait for: the slot is in the page cache from the moment it was written."""

    def end(self) -> None:
        """The request ended (its record is on its way)."""
        self.journal.end(self)


class FileJournal:
    """The journal of one process, in ``directory``; settles into ``store``; see the module
    docstring. ``outbox``, ``on_recovered``: as :class:`~llmproxy.usage.journal.Journal`."""

    def __init__(
        self,
        store: SqliteUsageStore,
        directory: Path,
        *,
        outbox: bool,
        on_recovered: RecoveredHook | None = None,
        prices: Prices = lambda: NO_PRICES,
    ) -> None:
        self._store = store
        self._prices = prices
        self.directory = directory
        self._outbox = outbox
        self.on_recovered = on_recovered
        self.owner = process_owner()
        self._file: SlotFile | None = None
        self._live: dict[str, SlotEntry] = {}
        self._ending: dict[str, int] = {}
        """Slots of requests that ended, by record id, until their record is committed."""
        self._tasks: list[asyncio.Task[None]] = []
        self.failures = 0

    @staticmethod
    def directory_for(usage_file: Path) -> Path:
        """Where the journal files of the usage file ``usage_file`` live."""
        return usage_file.with_name(usage_file.name + DIRECTORY_SUFFIX)

    async def start(self) -> None:
        """Create this process's file, then checkpoint and sweep (on the loop)."""
        try:
            self._file = await asyncio.to_thread(SlotFile, self.directory, self.owner)
        except OSError as exc:
            self.failures += 1
            log.error(
                "usage journal: cannot create its file in %s (%s); requests are not journalled, "
                "a crash would leave them unbilled",
                self.directory,
                exc,
            )
        self._tasks = [
            asyncio.create_task(self._checkpoint_loop(), name="usage-journal-checkpoint"),
            asyncio.create_task(self._sweep_loop(), name="usage-journal-sweep"),
        ]

    async def close(self) -> None:
        """Stop; the file stays when requests are still open or their records unwritten (the
        next start settles them), else it goes."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        file, self._file = self._file, None
        if file is not None:
            file.close(remove=not self._live and not self._ending)

    @property
    def open_requests(self) -> int:
        """Requests journalled and not ended."""
        return len(self._live)

    def open(self, skeleton: UsageRecord, counter: Counter, lease: str = "") -> SlotEntry:
        """Journal a request that was admitted (see :meth:`Journal.open
        <llmproxy.usage.journal.Journal.open>`)."""
        offset = _NOT_JOURNALLED
        if self._file is not None:
            try:
                offset = self._file.open(
                    skeleton.to_json(),
                    lease.encode() if lease else b"",
                    time.time(),
                    skeleton.prompt_tokens,
                )
            except (OSError, ValueError) as exc:  # the file could not grow (a full disk)
                self._failed(exc)
        entry = SlotEntry(self, skeleton, counter, offset)
        self._live[entry.key] = entry
        return entry

    def end(self, entry: SlotEntry) -> None:
        """No more checkpoints; the slot stays until the request's record is committed (a
        crash meanwhile, ~20 ms, bills the last checkpoint's count)."""
        self._live.pop(entry.key, None)
        # The counter is the request's own method: forgetting it breaks the request → entry →
        # request cycle, so the request (and its body) is freed now, not by the next GC pass.
        entry.counter = ended
        if entry.offset != _NOT_JOURNALLED:
            self._ending[entry.key] = entry.offset

    def take_opens(self) -> None:
        """Opens are written at once, into the file: never one to hand to the store."""

    def written(self, records: list[UsageRecord]) -> None:
        """These records are committed (or refused and logged): their slots are free."""
        if not self._ending or self._file is None:
            return
        for record in records:
            offset = self._ending.pop(record.id, None)
            if offset is not None:
                self._file.free(offset)

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        log.error("usage journal: cannot journal a request: %s", error)

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            file = self._file
            if file is None:
                continue
            now = time.time()
            for entry in self._live.values():
                counted = entry.counter()
                if counted != entry.counted and entry.offset != _NOT_JOURNALLED:
                    entry.counted = counted
                    file.count(entry.offset, counted[0], counted[1], now)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                recovered = await self.sweep()
            except Exception as exc:
                log.error("usage journal: settling a dead process's requests failed: %s", exc)
                continue
            if recovered:
                log_recovered(recovered)
                if self.on_recovered is not None:
                    self.on_recovered(recovered)

    async def sweep(self) -> list[Recovered]:
        """Settle the files of processes that are gone: each live row becomes its
        ``interrupted`` record, written (and queued for the webhook when ``outbox``) unless the
        store holds its id already; then the file goes."""
        mine = self._file.path if self._file is not None else None
        found = await asyncio.to_thread(orphans, self.directory, mine)
        settled: list[Recovered] = []
        for index, orphan in enumerate(found):
            try:
                rows = read_rows(await asyncio.to_thread(orphan.read), orphan.path.stem)
                prices = self._prices()
                recovered = [Recovered(interrupted(row, prices), row.lease) for row in rows]
                settled += await self._store.settle_records(recovered, outbox=self._outbox)
            except BaseException:
                for left in found[index:]:
                    with contextlib.suppress(OSError):
                        left.release()
                raise
            await asyncio.to_thread(orphan.settled)
        return settled
