"""The journal of requests in flight: what a crash (``kill -9``, OOM, power) would otherwise forget.

A usage record is written when a request ends. A gateway killed while streaming never gets
there, and the tokens its clients already received would go unbilled. So every admitted request
is also journalled, in the usage database, while it runs:

1. :meth:`Journal.open` queues a row (the record as it would read if the request were cut now);
   a background task commits whatever is queued in one transaction, while the backends compute
   their first tokens: when a response is ready to start (:meth:`JournalEntry.durable`, awaited
   before its first byte) or :data:`OPEN_LINGER` after the first open, whichever comes first.
2. Every :data:`CHECKPOINT_INTERVAL` the counted tokens of every open stream whose count moved
   are written in one transaction (off the request path: the task reads each stream's counter).
3. When the request ends, its usage record is written as usual and the same transaction deletes
   its journal row (:meth:`~llmproxy.usage.outbox.UsageOutbox.write`): billed once, never twice.
4. On start-up, rows left by a process that is gone are turned into records with
   ``status: "interrupted"`` — billed for the prompt and the tokens counted at the last
   checkpoint — and written (and queued for the webhook) in one transaction with their deletion.

Rows carry their owner (pid and start time), so with several workers sharing the database a
starting worker settles only the rows of dead processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from llmproxy.usage.outbox import UsageOutbox
from llmproxy.usage.record import UsageRecord

log = logging.getLogger("llmproxy.usage")

CHECKPOINT_INTERVAL: Final = 0.25
"""Seconds between two checkpoints: the most a crash can leave unbilled of a stream's output."""

OPEN_LINGER: Final = 0.005
"""How long opens gather before their commit unless a response is waiting for one: the backend
is still computing, and one transaction for many opens is cheaper than one each."""

QUIET_BELOW: Final = 1
"""With at most this many requests in flight an open is committed at once (no batch to wait for)."""

Counter = Callable[[], tuple[int, int]]

DatabaseRunner = Callable[..., Awaitable[Any]]
"""``await run(function, *args)``: the call, on the usage database's thread."""
"""The request's (prompt, completion) tokens counted so far."""


def _ended() -> tuple[int, int]:
    return 0, 0


def process_owner(pid: int | None = None) -> str:
    """``"<pid>:<start time>"`` of a process (this one by default), or "" when it is gone: a pid
    reused by another process has another start time."""
    pid = os.getpid() if pid is None else pid
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return ""
    return f"{pid}:{int(fields[19])}"  # field 22 of stat(5): the start time, in clock ticks


def owner_alive(owner: str) -> bool:
    """Whether the process that wrote ``owner`` still runs."""
    pid, _, _ = owner.partition(":")
    return pid.isdigit() and process_owner(int(pid)) == owner


@dataclass(slots=True, eq=False)
class JournalEntry:
    """One journalled request."""

    request_id: str
    skeleton: UsageRecord
    counter: Counter
    committed: asyncio.Future[None]
    """Done once the row is durable (at once when journalling failed: never block a client)."""
    needed: asyncio.Event
    lease: str = ""
    """The limits lease the request holds (a Redis one is settled at recovery)."""
    counted: tuple[int, int] = field(default=(-1, -1))
    """The counts at the last checkpoint."""

    async def durable(self) -> None:
        """Wait until the row is committed, asking for the commit now (call before the first
        byte of the response)."""
        if not self.committed.done():
            self.needed.set()
            await self.committed


class Journal:
    """The journal of one process over ``store``; see the module docstring."""

    def __init__(self, store: UsageOutbox, run: DatabaseRunner) -> None:
        self._store = store
        self._run = run
        """Runs a call on the usage database's one thread: opens, checkpoints and record writes
        run in the order they were handed over, so a record's deletion of its row never runs
        before the row's insert."""
        self._owner = process_owner()
        self._live: dict[str, JournalEntry] = {}
        self._opening: list[JournalEntry] = []
        self._linger: asyncio.TimerHandle | None = None
        self.needed = asyncio.Event()
        """Set by a response that waits for its row: commit what is queued now."""
        self._tasks: list[asyncio.Task[None]] = []
        self.failures = 0

    def start(self) -> None:
        """Start committing opens and checkpoints (call on the loop)."""
        self._tasks = [
            asyncio.create_task(self._open_loop(), name="usage-journal-open"),
            asyncio.create_task(self._checkpoint_loop(), name="usage-journal-checkpoint"),
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

    @property
    def open_requests(self) -> int:
        """Requests journalled and not ended."""
        return len(self._live)

    def open(self, skeleton: UsageRecord, counter: Counter, lease: str = "") -> JournalEntry:
        """Journal a request that was admitted: ``skeleton`` is its record if it were cut now
        (``status: "interrupted"``), ``counter`` reads its tokens so far, ``lease`` is the
        limits lease it holds."""
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = JournalEntry(
            skeleton.request_id, skeleton, counter, committed, self.needed, lease=lease
        )
        self._live[entry.request_id] = entry
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
        self._live.pop(entry.request_id, None)
        # The counter is the request's own method: forgetting it breaks the request → entry →
        # request cycle, so the request (and its body) is freed now, not by the next GC pass.
        entry.counter = _ended
        if not entry.committed.done():
            with contextlib.suppress(ValueError):
                self._opening.remove(entry)
            entry.committed.set_result(None)

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
        batch, self._opening = self._opening, []
        if batch:
            now = time.time()
            rows = [(e.request_id, self._owner, e.skeleton.to_json(), now, e.lease) for e in batch]
            try:
                # Handed to the database thread before this coroutine first yields: an entry
                # that left _opening is already queued there (Journal.end relies on it).
                await self._run(self._store.journal_open, rows)
            except Exception as exc:
                self.failures += len(batch)
                log.error("usage journal: cannot write %d opens: %s", len(batch), exc)
            for entry in batch:
                if not entry.committed.done():
                    entry.committed.set_result(None)

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        updates: list[tuple[int, int, float, str]] = []
        now = time.time()
        for entry in list(self._live.values()):
            if not entry.committed.done():
                continue  # its open is not written yet: the next checkpoint has it
            counted = entry.counter()
            if counted != entry.counted:
                entry.counted = counted
                updates.append((counted[0], counted[1], now, entry.request_id))
        if updates:
            try:
                await self._run(self._store.journal_checkpoint, updates)
            except Exception as exc:
                self.failures += 1
                log.error("usage journal: checkpoint failed: %s", exc)


class Recovered(NamedTuple):
    """A request a crash cut off, billed at start-up."""

    record: UsageRecord
    lease: str
    """The limits lease it held ("" for none): a Redis one is settled with the billed tokens."""


def recover(store: UsageOutbox, *, outbox: bool) -> list[Recovered]:
    """Settle the journal rows of processes that are gone (blocking; at start-up, in a thread):
    each becomes its ``interrupted`` record, written — and queued for the webhook when
    ``outbox`` — in the transaction that deletes the row."""
    recovered = [
        Recovered(
            _interrupted(UsageRecord.from_json(body), prompt, completion, opened_at, updated_at),
            lease,
        )
        for _id, owner, body, prompt, completion, opened_at, updated_at, lease in store.journal()
        if not owner_alive(owner)
    ]
    if recovered:
        store.write([r.record for r in recovered], outbox=outbox)
    return recovered


def _interrupted(
    skeleton: UsageRecord, prompt: int, completion: int, opened_at: float, updated_at: float
) -> UsageRecord:
    prompt = max(prompt, skeleton.prompt_tokens)
    return UsageRecord(
        request_id=skeleton.request_id,
        model=skeleton.model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        usage_source=skeleton.usage_source,
        time=updated_at,
        key_id=skeleton.key_id,
        key_name=skeleton.key_name,
        key_prefix=skeleton.key_prefix,
        user_id=skeleton.user_id,
        metadata=skeleton.metadata,
        backend=skeleton.backend,
        endpoint=skeleton.endpoint,
        stream=skeleton.stream,
        status="interrupted",
        latency_ms=max(0.0, updated_at - opened_at) * 1000,
        finish_reason="interrupted",
        cancelled=True,
    )
