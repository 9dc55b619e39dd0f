"""The journal of requests in flight: what a crash (``kill -9``, OOM, power) would otherwise forget.

This module is the journal in the usage database (PostgreSQL, or a SQLite file with
``synchronous: full``); beside a SQLite file a process journals into a memory-mapped file
instead (:mod:`llmproxy.usage.filejournal`), with the same contract and what both share here
(:func:`interrupted`, the intervals, :class:`JournalHandle`).

A usage record is written when a request ends. A gateway killed while streaming never gets
there, and the tokens its clients already received would go unbilled. So every admitted request
is also journalled, in the usage database, while it runs:

1. :meth:`Journal.open` queues a row (the record as it would read if the request were cut now);
   a background task commits whatever is queued in one transaction — with the usage records
   waiting to be written — while the backends compute their first tokens: when a response is
   ready to start (:meth:`JournalEntry.durable`, awaited before its first byte) or
   :data:`OPEN_LINGER` after the first open, whichever comes first.
2. Every :data:`CHECKPOINT_INTERVAL` the counted tokens of every open stream whose count moved
   are written in one transaction (off the request path: the task reads each stream's counter).
3. When the request ends, its usage record is written as usual and the same transaction deletes
   its journal row (:meth:`~llmproxy.usage.outbox.UsageOutbox.write`): billed once, never twice.
4. Rows left by a process that is gone are turned into records with ``status: "interrupted"``
   — billed for the prompt and the tokens counted at the last checkpoint — and written (and
   queued for the webhook) in one transaction with their deletion: at start-up, before anything
   new is served, and every :data:`HEARTBEAT_INTERVAL` after (:func:`recover`).

Rows carry their owner (``host:pid:start time``). An owner is gone when it ran on this host and
its process no longer does, or when it stopped beating: every journal writes a heartbeat each
:data:`HEARTBEAT_INTERVAL`, and an owner silent for :data:`OWNER_TIMEOUT` (a replica on another
machine that died with it) is settled by whichever gateway sharing the store looks first. With
the usage store on PostgreSQL two gateways never settle the same row (``FOR UPDATE SKIP
LOCKED``), and an interrupted record keeps its journal row's record id, so it is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from llmproxy.finish import milliseconds
from llmproxy.pricing import NANOS, NO_PRICES, PriceTable
from llmproxy.usage.record import UsageRecord
from llmproxy.usage.rows import JournalCheckpoint, JournalOpen, JournalRow, Recovered
from llmproxy.usage.store import UsageStore

log = logging.getLogger("llmproxy.usage")

CHECKPOINT_INTERVAL: Final = 0.25
"""Seconds between two checkpoints: the most a crash can leave unbilled of a stream's output."""

OPEN_LINGER: Final = 0.02
"""How long opens gather before their commit unless a response is waiting for one: the backend
is still computing, and one transaction for many opens (and the usage records written meanwhile:
the sink's writer lingers as long) is far cheaper than one each — a thread hop costs ~70 µs of
CPU on the benchmark machine."""

QUIET_BELOW: Final = 1
"""With at most this many requests in flight an open is committed at once (no batch to wait for)."""

DURABLE_WAIT: Final = 0.5
"""The longest a response's first byte waits for its journal row."""

DEGRADED_FOR: Final = 10.0
"""Seconds after a failed or stalled journal write during which responses do not wait."""

HEARTBEAT_INTERVAL: Final = 5.0
"""Seconds between two heartbeats of a journal's owner, and between two looks for the rows of
owners that are gone."""

OWNER_TIMEOUT: Final = 30.0
"""Seconds of silence after which an owner on another host is taken for dead."""

Counter = Callable[[], tuple[int, int]]
"""The request's (prompt, completion) tokens counted so far."""

RecoveredHook = Callable[[list[Recovered]], None]
"""Called on the loop with the requests a sweep settled (their quota and leases to settle)."""

Flush = Callable[[], Awaitable[None]]

Prices = Callable[[], PriceTable]
"""The prices a settled request is billed at: the current snapshot's, read when it is."""
"""Writes the opens waiting (:meth:`Journal.take_opens`), with whatever else waits to be written."""


def ended() -> tuple[int, int]:
    """The counter of a request that ended: its own method is let go (it holds the request, and
    the request its entry), so the request is freed now, not by the next GC pass."""
    return 0, 0


def _start_time(pid: int) -> str:
    """A process's start time in clock ticks since boot, or "" when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return ""
    return fields[19].decode()  # field 22 of stat(5)


def _pid_namespace() -> str:
    """This process's PID namespace (its inode): two containers may share a host name, never
    a PID namespace, so a pid is looked up in /proc only by a process of the same namespace."""
    try:
        return os.readlink("/proc/self/ns/pid").rpartition("[")[2].rstrip("]")
    except OSError:
        return "0"


def process_owner(pid: int | None = None) -> str:
    """``"<host>:<pid namespace>:<pid>:<start time>"`` of a process of this namespace (this
    one by default), or "" when it is gone: a pid reused by another process has another start
    time."""
    pid = os.getpid() if pid is None else pid
    started = _start_time(pid)
    if not started:
        return ""
    return f"{socket.gethostname()}:{_pid_namespace()}:{pid}:{started}"


def owner_alive(owner: str) -> bool | None:
    """Whether the process that wrote ``owner`` still runs: None when it ran elsewhere (another
    host or PID namespace: its heartbeat tells). ``"<pid>:<start time>"``, an earlier version's
    owner, is this host's."""
    parts = owner.split(":")
    if len(parts) == 2:
        pid, started = parts
    elif len(parts) >= 4:
        host, namespace = ":".join(parts[:-3]), parts[-3]
        pid, started = parts[-2], parts[-1]
        if host != socket.gethostname() or namespace != _pid_namespace():
            return None
    else:
        return None
    return pid.isdigit() and _start_time(int(pid)) == started


def owner_gone(owner: str, silent_for: float | None) -> bool:
    """Whether ``owner``'s journal rows are orphans: its process is gone, or (elsewhere) it has
    not beaten for :data:`OWNER_TIMEOUT` (``silent_for``: seconds since its last heartbeat, by
    the store's clock; None when it never beat)."""
    alive = owner_alive(owner)
    if alive is not None:
        return not alive
    return silent_for is None or silent_for > OWNER_TIMEOUT


class JournalHandle(Protocol):
    """A request's place in a journal (:class:`JournalEntry`, or a slot of a file journal:
    :mod:`llmproxy.usage.filejournal`), as the request sees it."""

    @property
    def skeleton(self) -> UsageRecord:
        """Its record if it were cut now; the final record keeps its id."""

    async def durable(self) -> None:
        """Wait, if need be, until the request is journalled: before its first byte."""

    def end(self) -> None:
        """The request ended: its record is on its way."""


@dataclass(slots=True, eq=False)
class JournalEntry:
    """One journalled request."""

    key: str
    """The row's key: the skeleton's record id, which the request's final record keeps."""
    skeleton: UsageRecord
    counter: Counter
    committed: asyncio.Future[None]
    """Done once the row is durable (at once when journalling failed: never block a client)."""
    journal: Journal
    lease: str = ""
    """The limits lease the request holds (a Redis one is settled at recovery)."""
    counted: tuple[int, int] = field(default=(-1, -1))
    """The counts at the last checkpoint."""

    async def durable(self) -> None:
        """Wait until the row is committed, asking for the commit now (call before the first
        byte of the response); never longer than :data:`DURABLE_WAIT`."""
        if not self.committed.done():
            await self.journal.wait(self.committed)

    def end(self) -> None:
        """The request ended (its record is on its way)."""
        self.journal.end(self)


class OpenBatch:
    """Opens taken for one write: their rows, and the entries to tell once it is done."""

    __slots__ = ("_entries", "_journal", "rows")

    def __init__(self, journal: Journal, entries: list[JournalEntry], rows: list[JournalOpen]):
        self._journal = journal
        self._entries = entries
        self.rows = rows

    def settle(self, error: BaseException | None) -> None:
        """The write is done (``error`` None) or failed: either way no response waits longer
        (a failed open is counted and logged, never a client's problem)."""
        if error is not None and self._entries:
            self._journal.failed(f"cannot write {len(self._entries)} opens: {error}")
        for entry in self._entries:
            if not entry.committed.done():
                entry.committed.set_result(None)
        self._entries = []


class Journal:
    """The journal of one process over ``store``; see the module docstring.

    ``outbox``: settled records are queued for the webhook too. ``on_recovered`` receives the
    requests a sweep settled while running. ``flush`` (the usage sink's) writes the opens in the
    transaction of the records waiting to be written, one thread hop for both; without it the
    journal writes its opens alone.
    """

    def __init__(
        self,
        store: UsageStore,
        *,
        outbox: bool,
        on_recovered: RecoveredHook | None = None,
        flush: Flush | None = None,
        prices: Prices = lambda: NO_PRICES,
    ) -> None:
        self._store = store
        self._prices = prices
        """Its writes run in the order they are called: a record's deletion of its row never
        runs before the row's insert."""
        self._outbox = outbox
        self.on_recovered = on_recovered
        self._flush = flush or self._write_opens
        self.owner = process_owner()
        self._live: dict[str, JournalEntry] = {}
        self._opening: list[JournalEntry] = []
        self._linger: asyncio.TimerHandle | None = None
        self.needed = asyncio.Event()
        """Set by a response that waits for its row: commit what is queued now."""
        self._tasks: list[asyncio.Task[None]] = []
        self.failures = 0
        self._degraded_until = 0.0

    async def start(self) -> None:
        """Beat once, then start committing opens and checkpoints and beating (on the loop)."""
        try:
            await self._store.heartbeat(self.owner, time.time())
        except Exception as exc:
            log.error("usage journal: cannot write its heartbeat: %s", exc)
        self._tasks = [
            asyncio.create_task(self._open_loop(), name="usage-journal-open"),
            asyncio.create_task(self._checkpoint_loop(), name="usage-journal-checkpoint"),
            asyncio.create_task(self._liveness_loop(), name="usage-journal-heartbeat"),
        ]

    async def close(self) -> None:
        """Stop; rows of requests still open stay for the next start to settle."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for entry in self._opening:
            if not entry.committed.done():
                entry.committed.set_result(None)
        self._opening.clear()
        if not self._live:
            # A clean stop: nothing of ours is left to settle, so no heartbeat row either.
            with contextlib.suppress(Exception):
                await self._store.forget_owner(self.owner)

    async def wait(self, committed: asyncio.Future[None]) -> None:
        """Ask for the commit now and wait for it, at most :data:`DURABLE_WAIT`; while the
        store is failing or slow (:data:`DEGRADED_FOR` after it was), do not wait at all."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._degraded_until:
            return
        self.needed.set()
        try:
            async with asyncio.timeout(DURABLE_WAIT):
                await asyncio.shield(committed)
        except TimeoutError:
            self.failed(f"a journal row took over {DURABLE_WAIT} s to commit")

    def failed(self, why: str) -> None:
        """The store failed or stalled: responses stop waiting for their rows for a while."""
        self.failures += 1
        loop = asyncio.get_running_loop()
        if loop.time() >= self._degraded_until:
            log.error(
                "usage journal: %s; responses do not wait for their rows for %.0f s "
                "(a crash meanwhile may leave requests unbilled)",
                why,
                DEGRADED_FOR,
            )
        self._degraded_until = loop.time() + DEGRADED_FOR

    @property
    def open_requests(self) -> int:
        """Requests journalled and not ended."""
        return len(self._live)

    def open(self, skeleton: UsageRecord, counter: Counter, lease: str = "") -> JournalEntry:
        """Journal a request that was admitted: ``skeleton`` is its record if it were cut now
        (``status: "interrupted"``), ``counter`` reads its tokens so far, ``lease`` is the
        limits lease it holds."""
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = JournalEntry(skeleton.id, skeleton, counter, committed, self, lease=lease)
        self._live[entry.key] = entry
        if len(self._live) <= QUIET_BELOW:
            # A quiet gateway commits at once: the commit runs while the backend computes, and
            # the first byte does not wait for it. Batching pays only under concurrency.
            self.needed.set()
        elif not self._opening and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(OPEN_LINGER, self.needed.set)
        self._opening.append(entry)
        return entry

    def end(self, entry: JournalEntry) -> None:
        """The request ended (its record is on its way): no more checkpoints; an open not yet
        committed is not written at all."""
        self._live.pop(entry.key, None)
        # The counter is the request's own method: forgetting it breaks the request → entry →
        # request cycle, so the request (and its body) is freed now, not by the next GC pass.
        entry.counter = ended
        if not entry.committed.done():
            with contextlib.suppress(ValueError):
                self._opening.remove(entry)
            entry.committed.set_result(None)

    def written(self, records: list[UsageRecord]) -> None:
        """Records were committed: nothing to do (their write deleted their rows)."""

    async def _open_loop(self) -> None:
        while True:
            # Woken when a response needs its row, or OPEN_LINGER after the batch's first open:
            # one wake-up, one transaction and one thread hop for everything queued by then.
            await self.needed.wait()
            self.needed.clear()
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            # In a call of its own: a batch kept in this frame while it waits would keep each
            # entry's request (and its body) alive until the next open.
            await self._commit_opens()

    async def _commit_opens(self) -> None:
        if self._opening:
            await self._flush()

    def take_opens(self) -> OpenBatch | None:
        """The opens waiting to be written, taken: the caller hands the rows to the store before
        it first yields (an entry that left the waiting list is already queued there, which
        :meth:`end` relies on), then settles the batch."""
        batch, self._opening = self._opening, []
        if not batch:
            return None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        now = time.time()
        rows = [JournalOpen(e.key, self.owner, e.skeleton.to_json(), now, e.lease) for e in batch]
        return OpenBatch(self, batch, rows)

    async def _write_opens(self) -> None:
        opens = self.take_opens()
        if opens is None:
            return
        try:
            await self._store.journal_open(opens.rows)
        except Exception as exc:
            opens.settle(exc)
        else:
            opens.settle(None)

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        updates: list[JournalCheckpoint] = []
        now = time.time()
        for entry in list(self._live.values()):
            counted = entry.counter()
            if counted != entry.counted and entry.committed.done():  # else: the next one
                entry.counted = counted
                updates.append(JournalCheckpoint(counted[0], counted[1], now, entry.key))
        if updates:
            try:
                await self._store.journal_checkpoint(updates)
            except Exception as exc:
                self.failures += 1
                log.error("usage journal: checkpoint failed: %s", exc)

    async def _liveness_loop(self) -> None:
        """Beat, and settle the rows of owners that are gone (a worker or a replica killed)."""
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                await self._store.heartbeat(self.owner, time.time())
                recovered = await recover(
                    self._store, outbox=self._outbox, me=self.owner, prices=self._prices()
                )
            except Exception as exc:
                log.error("usage journal: heartbeat failed: %s", exc)
                continue
            if recovered:
                log_recovered(recovered)
                if self.on_recovered is not None:
                    self.on_recovered(recovered)


async def recover(
    store: UsageStore, *, outbox: bool, me: str = "", prices: PriceTable = NO_PRICES
) -> list[Recovered]:
    """Settle the journal rows of owners that are gone: each becomes its ``interrupted`` record,
    written — and queued for the webhook when ``outbox`` — in the transaction that deletes it."""
    gone = [
        owner
        for owner, silent_for in await store.journal_owners()
        if owner != me and owner_gone(owner, silent_for)
    ]
    if not gone:
        return []
    return await store.settle_journal(
        gone, functools.partial(interrupted, prices=prices), outbox=outbox
    )


def log_recovered(recovered: list[Recovered]) -> None:
    """Say what a crash cut off and how it was billed."""
    log.warning(
        "usage: %d requests were cut by a crash; billed as interrupted (%d tokens)",
        len(recovered),
        sum(r.record.total_tokens for r in recovered),
    )


def interrupted(row: JournalRow, prices: PriceTable = NO_PRICES) -> UsageRecord:
    """The record of a request a crash cut off: its skeleton, billed for the prompt and the
    tokens counted at its last checkpoint, at ``prices``; it keeps the skeleton's id (stored
    once)."""
    skeleton = UsageRecord.from_json(row.body)
    prompt = max(row.prompt_tokens, skeleton.prompt_tokens)
    cost = prices.cost_nanos(skeleton.model, prompt, 0, row.completion_tokens) / NANOS
    return UsageRecord(
        id=skeleton.id,
        request_id=skeleton.request_id,
        model=skeleton.model,
        prompt_tokens=prompt,
        completion_tokens=row.completion_tokens,
        total_tokens=prompt + row.completion_tokens,
        usage_source=skeleton.usage_source,
        time=row.updated_at,
        key_id=skeleton.key_id,
        key_name=skeleton.key_name,
        key_prefix=skeleton.key_prefix,
        user_id=skeleton.user_id,
        metadata=skeleton.metadata,
        backend=skeleton.backend,
        endpoint=skeleton.endpoint,
        api=skeleton.api,
        stream=skeleton.stream,
        status="interrupted",
        latency_ms=milliseconds(max(0.0, row.updated_at - row.opened_at)),
        finish_reason="interrupted",
        cancelled=True,
        team=skeleton.team,
        cost=cost,
    )
