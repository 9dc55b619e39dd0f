"""Where the request path hands over usage records: :class:`UsageSink`.

::

    sink = UsageSink(config, base_dir=config_dir)
    await sink.start()
    ...
    sink.submit(record)          # request path: synchronous, O(1), never waits on I/O
    ...
    await sink.close(timeout=5)  # shutdown: what is still in memory goes to the store

A record goes (1) to the live :attr:`bus` at once, (2) into a bounded in-memory queue, (3) into
the usage store (``usage.database``: a SQLite file, or PostgreSQL shared by replicas; see
:mod:`llmproxy.usage.store`) in a background task, a batch per transaction, off the event loop:
into the recent-records table (:attr:`store`) and, when ``usage_hook.enabled``, into the outbox,
(4) from the outbox to the webhook (:mod:`llmproxy.usage.delivery`). Without a webhook nothing
goes to the outbox: records are only kept for ``llmproxy usage``.

What is lost where: a record acknowledged by ``on_commit`` survives a killed process (and a power
loss with ``usage.synchronous: full``) and is delivered at least once, on this run or the next. A
record still in memory when the process is killed is lost; one that finds the queue full is not
queued but counted in :attr:`UsageSink.overflow` (with a warning at most every 10 s).

Counters for metrics (plain ints): ``submitted``, ``written``, ``overflow``, ``rejected_closed``,
``write_errors``, ``lost_on_close``, ``outbox_alarms``, ``delivery_attempts``,
``delivery_failures``, ``delivered``; gauges: :meth:`outbox_depth`, :meth:`dead_letters`,
:attr:`outbox_over_limit`, ``bus.dropped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from llmproxy.config.model import Config
from llmproxy.pricing import PriceTable
from llmproxy.usage.bus import UsageBus
from llmproxy.usage.delivery import UsageDelivery
from llmproxy.usage.filejournal import FileJournal
from llmproxy.usage.journal import Journal, OpenBatch, log_recovered, process_owner, recover
from llmproxy.usage.record import UsageRecord
from llmproxy.usage.rows import RecordRefused, Recovered
from llmproxy.usage.store import SqliteUsageStore, UsageStore, open_usage_store

log = logging.getLogger("llmproxy.usage")

CommitHook = Callable[[Sequence[UsageRecord]], None]
"""Called on the event loop with each batch once it is committed to the store."""

WRITE_BATCH = 1000
"""Most records written in one transaction."""

WRITE_LINGER = 0.02
"""How long the writer lets records gather after the first one before it writes them.

A transaction and a thread hand-off per record cost ~200 µs of the gateway's CPU; gathering for
20 ms turns that into one per batch. It is also the bound on how long a record can sit in memory
before it is durable (plus the write itself).
"""

DURABLE_LINGER = 0.002
"""The linger under ``usage.acknowledge: durable``: responses wait for the write, so batches
form from what arrives while the previous one is written (group commit) rather than by waiting.
"""

JOURNAL_FLUSH_RECORDS = 100
"""Most queued records a commit the journal asks for (a response waits for it) carries along."""

WARN_EVERY = 10.0
"""Seconds between two warnings about the same overflow."""


class UsageSink:
    """Accepts usage records on the request path and makes them durable and delivered."""

    def __init__(
        self,
        config: Config,
        base_dir: Path,
        *,
        on_commit: CommitHook | None = None,
        deliver: bool = True,
    ) -> None:
        self.config = config
        usage = config.usage
        self._store: UsageStore = open_usage_store(
            usage.database,
            base_dir,
            synchronous=usage.synchronous,
            keep_records=usage.keep_records,
        )
        self.location = self._store.location
        self.hook_enabled = config.usage_hook.enabled
        """Records are queued for the webhook."""
        self._deliver = deliver and self.hook_enabled
        """This process delivers the outbox (with several workers on one SQLite file, one does)."""
        self.on_commit = on_commit
        self.bus = UsageBus(config.usage.subscriber_queue)
        self._queue: asyncio.Queue[UsageRecord] = asyncio.Queue(maxsize=config.usage.queue_size)
        self.durable = config.usage.acknowledge == "durable"
        """Responses wait for their record to be committed (:meth:`submit_durable`)."""
        self._linger = DURABLE_LINGER if self.durable else WRITE_LINGER
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._held: list[UsageRecord] = []
        """Records taken off the queue whose write failed once: the writer retries them."""
        self._pending = asyncio.Event()
        """Set when records wait: the writer wakes, lingers, writes."""
        self._opened = False
        self._delivery: UsageDelivery | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._last_overflow_warning = -WARN_EVERY
        self._last_alarm_warning = -WARN_EVERY
        self.submitted = 0
        self.written = 0
        self.overflow = 0
        self.rejected_closed = 0
        self.write_errors = 0
        self.lost_on_close = 0
        self.outbox_alarms = 0
        self.recovered = 0
        self.refused = 0
        """Records the database refused as data (logged whole, not stored)."""
        self._recovered: list[Recovered] = []
        self.on_recovered: Callable[[], None] | None = None
        """Called when a sweep settled requests a crash cut off (:meth:`take_recovered` has
        them): the daemon counts them against quotas and settles their leases."""
        self.prices = PriceTable.of(config.pricing)
        """Prices records of requests a crash cut off (the current snapshot's, set on reload)."""
        self.journal: Journal | FileJournal | None = None
        """Journals requests in flight once started: in a file per process beside a SQLite
        store (:mod:`llmproxy.usage.filejournal`), else in the database
        (:mod:`llmproxy.usage.journal`)."""

    def _current_prices(self) -> PriceTable:
        return self.prices

    @property
    def store(self) -> UsageStore:
        """The usage store (SQLite file or PostgreSQL): records for the CLI, dead letters."""
        if not self._opened:
            raise RuntimeError("UsageSink.start() has not been awaited")
        return self._store

    async def start(self) -> None:
        """Open the store and start writing and (with a webhook) delivering."""
        await self._store.open()
        self._opened = True
        # Requests a killed process left open are billed before anything new is served.
        self._settled(
            await recover(
                self._store, outbox=self.hook_enabled, me=process_owner(), prices=self.prices
            ),
            announce=False,
        )
        if self.config.usage.journal:
            self.journal = await self._start_journal()
        self._tasks.append(asyncio.create_task(self._write_loop(), name="usage-writer"))
        if self._deliver:
            self._delivery = UsageDelivery(self.config.usage_hook, self._store)
            self._tasks.append(asyncio.create_task(self._delivery.run(), name="usage-delivery"))

    async def _start_journal(self) -> Journal | FileJournal:
        """The journal this store takes: a file per process beside a SQLite file (a killed
        process is what ``synchronous: normal`` survives, and the page cache survives it too),
        else rows in the database (PostgreSQL: replicas on other machines; ``synchronous:
        full``: a power loss). A file journal first settles what dead processes left."""

        def announce(recovered: list[Recovered]) -> None:
            self._settled(recovered, announce=True)

        store = self._store
        journal: Journal | FileJournal
        if isinstance(store, SqliteUsageStore) and self.config.usage.synchronous == "normal":
            journal = FileJournal(
                store,
                FileJournal.directory_for(store.path),
                outbox=self.hook_enabled,
                on_recovered=announce,
                prices=self._current_prices,
            )
            self._settled(await journal.sweep(), announce=False)
        else:
            journal = Journal(
                store,
                outbox=self.hook_enabled,
                on_recovered=announce,
                flush=self.flush,
                prices=self._current_prices,
            )
        await journal.start()
        return journal

    def _settled(self, recovered: list[Recovered], *, announce: bool) -> None:
        """Requests a crash cut off were billed: published, and kept for the daemon."""
        if not recovered:
            return
        if not announce:
            log_recovered(recovered)
        self.recovered += len(recovered)
        self._recovered.extend(recovered)
        for each in recovered:
            self.bus.publish(each.record)
        if self._delivery is not None:
            self._delivery.wake()
        if announce and self.on_recovered is not None:
            self.on_recovered()

    def take_recovered(self) -> list[Recovered]:
        """The interrupted records settled since the last call (the daemon counts them against
        the keys' quotas and settles their leases, once)."""
        recovered, self._recovered = self._recovered, []
        return recovered

    def submit_durable(self, record: UsageRecord) -> asyncio.Future[None]:
        """:meth:`submit`, and a future that is done once ``record`` is committed to the store.

        It is done at once when the record could not be queued (overflow, closed sink): the
        caller waits for durability, never for a record that will not be written.
        """
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[record.id] = written
        if not self.submit(record):
            self._acks.pop(record.id, None)
            written.set_result(None)
        return written

    def submit(self, record: UsageRecord) -> bool:
        """Hand over one record; never blocks, never raises on a full queue (counts overflow).

        False when the record was not queued (sink closed, queue full).
        """
        if self._closed:
            self.rejected_closed += 1
            log.error("usage record %s submitted after the usage sink closed", record.id)
            return False
        self.bus.publish(record)
        try:
            self._queue.put_nowait(record)
            self._pending.set()
        except asyncio.QueueFull:
            self.overflow += 1
            now = time.monotonic()
            if now - self._last_overflow_warning >= WARN_EVERY:
                self._last_overflow_warning = now
                log.warning(
                    "usage queue full (usage.queue_size=%d): %d records not stored so far; "
                    "the disk is too slow or usage.queue_size too small",
                    self._queue.maxsize,
                    self.overflow,
                )
            return False
        self.submitted += 1
        return True

    async def requeue_dead_letters(self) -> int:
        """Give the dead letters to the webhook again (`llmproxy usage dead-letters --requeue`)."""
        moved = await self.store.requeue_dead_letters()
        if moved and self._delivery is not None:
            self._delivery.wake()
        return moved

    def outbox_depth(self) -> int:
        """Records waiting for the webhook (0 without one)."""
        return self._store.depth() if self._opened else 0

    def dead_letters(self) -> int:
        """Records the webhook refused ``max_attempts`` times, kept in the dead-letter table."""
        return self._store.dead_letter_count() if self._opened else 0

    @property
    def queued(self) -> int:
        """Records in memory, not yet written."""
        return self._queue.qsize()

    @property
    def outbox_over_limit(self) -> bool:
        """Whether the outbox holds more than ``usage_hook.max_outbox_records``."""
        return self.outbox_depth() > self.config.usage_hook.max_outbox_records

    @property
    def delivery_attempts(self) -> int:
        """POSTs made to the webhook."""
        return self._delivery.delivery_attempts if self._delivery else 0

    @property
    def delivery_failures(self) -> int:
        """POSTs that failed (network error or a non-2xx answer)."""
        return self._delivery.delivery_failures if self._delivery else 0

    @property
    def delivered(self) -> int:
        """Records the webhook acknowledged."""
        return self._delivery.delivered if self._delivery else 0

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - a bound, not a cancel
        """Write what is still queued, within ``timeout``, then stop; the outbox waits for the next
        start. Records still in memory when the bound is reached are counted in ``lost_on_close``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # 1. Refuse new records.
        self._closed = True
        # 2. Let the writer drain the queue, within the bound.
        if self._tasks:
            try:
                await asyncio.wait_for(self._queue.join(), timeout=max(0.0, timeout))
            except TimeoutError:
                self.lost_on_close = self._queue.qsize() + len(self._held)
                log.error(
                    "usage sink closed with %d records not written (timeout %.1fs)",
                    self.lost_on_close,
                    timeout,
                )
        # Responses waiting for records that will not be written now must not wait forever.
        for written in self._acks.values():
            if not written.done():
                written.set_result(None)
        self._acks.clear()
        # 3. Stop journalling (rows of requests still open settle at the next start), writing
        #    and delivering; undelivered records stay in the outbox.
        if self.journal is not None:
            await self.journal.close()
        for task in self._tasks:
            task.cancel()
        remaining = max(0.1, deadline - loop.time())
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=remaining)
        self._tasks.clear()
        # 4. Close the store (committed batches are already durable).
        if self._opened:
            with contextlib.suppress(Exception):
                await self._store.close()

    async def _write_loop(self) -> None:
        """Move queued records to the store: whatever is queued, in one transaction per batch,
        retried while the store fails."""
        while True:
            await self._pending.wait()
            self._pending.clear()
            if not self._closed:
                await asyncio.sleep(self._linger)
            await self._flush(retry=True)
            if self._held or not self._queue.empty():
                self._pending.set()

    async def flush(self) -> None:
        """Write the journal's opens now, with the records queued by then (up to
        :data:`JOURNAL_FLUSH_RECORDS`), in one transaction: the journal calls it when a response
        needs its row, and the writer's commits carry opens too — one thread hop (about 70 µs
        of CPU on the benchmark machine) for both. Tried once: if the store fails, the opens
        are given up (no response waits on a failing store) and the records go back to the
        writer, which retries them."""
        await self._flush(retry=False)

    async def _flush(self, *, retry: bool) -> None:
        if retry:
            batch, self._held = self._held, []
            most = WRITE_BATCH
        else:  # a response waits: no records of a failing retry, no big batch
            batch, most = [], JOURNAL_FLUSH_RECORDS
        while len(batch) < most and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        opens = self.journal.take_opens() if self.journal is not None else None
        if not batch and opens is None:
            return
        written = False
        try:
            written = await self._write(batch, opens, retry=retry)
        finally:
            if opens is not None:
                opens.settle(None)  # done, or failed, or cancelled: nobody waits on it any more
            if written or retry:
                for _ in batch:
                    self._queue.task_done()
            else:
                self._held[:0] = batch  # the writer's to retry
                self._pending.set()

    async def _write(
        self, batch: list[UsageRecord], opens: OpenBatch | None, *, retry: bool
    ) -> bool:
        """Write one batch, retrying while the store fails (a full disk, a locked file, a
        database that is down) when ``retry``; a retried batch is stored once. Opens are tried
        once. A batch the database refuses as data is split until the refused record is found
        (logged whole, not stored). Answers whether the records were written."""
        store = self.store
        failures = 0
        while True:
            try:
                # After the journal inserts handed to the store before it.
                await store.write(
                    batch,
                    outbox=self.hook_enabled,
                    opens=opens.rows if opens else (),
                    trim=retry,
                )
                break
            except RecordRefused as exc:
                if opens is not None:
                    opens.settle(exc)
                    opens = None
                return await self._refused(batch, exc, retry=retry)
            except Exception as exc:
                self.write_errors += 1
                failures += 1
                if failures == 1:
                    log.error("usage: cannot write to %s (%s); retrying", self.location, exc)
                if opens is not None:
                    opens.settle(exc)
                    opens = None
                if not batch or not retry:
                    return False
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))
        if opens is not None:
            opens.settle(None)
        if batch:
            self._written(batch)
        return True

    async def _refused(self, batch: list[UsageRecord], error: Exception, *, retry: bool) -> bool:
        """Write the records of a refused batch but the one(s) the database refuses."""
        if len(batch) == 1:
            self.refused += 1
            log.error(
                "usage: %s; the record is not stored, here it is: %s",
                error,
                batch[0].to_json().decode(),
            )
            if self.journal is not None:
                self.journal.written(batch)  # logged whole: not billed again after a crash
            return True
        middle = len(batch) // 2
        first = await self._write(batch[:middle], None, retry=retry)
        second = await self._write(batch[middle:], None, retry=retry)
        return first and second

    def _written(self, batch: list[UsageRecord]) -> None:
        self.written += len(batch)
        if self.journal is not None:
            self.journal.written(batch)
        if self._acks:
            for record in batch:
                written = self._acks.pop(record.id, None)
                if written is not None and not written.done():
                    written.set_result(None)
        if self._delivery is not None:
            self._delivery.wake()
            self._check_outbox_limit(len(batch))
        if self.on_commit is not None:
            try:
                self.on_commit(batch)
            except Exception:
                log.exception("usage: on_commit hook failed")

    def _check_outbox_limit(self, added: int) -> None:
        """Raise the alarm when undelivered records pile up beyond the configured bound."""
        if not self.outbox_over_limit:
            return
        self.outbox_alarms += added
        now = time.monotonic()
        if now - self._last_alarm_warning >= WARN_EVERY:
            self._last_alarm_warning = now
            log.warning(
                "usage outbox holds %d undelivered records (usage_hook.max_outbox_records=%d); "
                "is %s up?",
                self.outbox_depth(),
                self.config.usage_hook.max_outbox_records,
                self.config.usage_hook.url,
            )
