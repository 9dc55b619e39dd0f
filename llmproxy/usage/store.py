"""One async interface over both usage stores, so the sink, the journal, the webhook delivery and
the admin API need not know which database holds the records.

``usage.database`` names the store: a SQLite path (the embedded default: one machine, its workers
share the file) or a ``postgresql://`` URL (replicas on several machines share it).
:func:`open_usage_store` turns the setting into a :class:`UsageStore`:

- :class:`SqliteUsageStore` runs :class:`~llmproxy.usage.outbox.UsageOutbox`'s blocking calls: the
  writes on one thread of their own, in the order they were made; the reads in any thread;
- :class:`~llmproxy.usage.postgres.PostgresUsageStore` is asyncpg throughout.

Ordering: writes (:meth:`UsageStore.write`, the journal's opens and checkpoints, settlements) run
in the order they are called — the call hands the work over before it first yields. The journal
relies on it: a record's write deletes its request's journal row, so it must not overtake the
row's insert.

Delivery: :meth:`UsageStore.claim` takes the oldest undelivered records for one attempt; on
PostgreSQL the rows stay locked (``FOR UPDATE SKIP LOCKED``) until the claim ends, so gateways
sharing the outbox deliver different records, and a gateway that dies mid-batch releases its rows
to the others with its connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Final, Literal, Protocol, TypeVar

from llmproxy.dsn import is_postgres_url
from llmproxy.extras import require
from llmproxy.usage.alerts import BudgetAlert
from llmproxy.usage.outbox import UsageOutbox
from llmproxy.usage.record import UsageRecord
from llmproxy.usage.rows import (
    DeadLetter,
    JournalCheckpoint,
    JournalOpen,
    PendingRecord,
    Recovered,
    Settle,
    UsageSummaryRow,
)

_T = TypeVar("_T")

FOLLOW_INTERVAL: Final = 0.1
"""How often :meth:`SqliteUsageStore.follow` reads the records written since."""


class Follower(Protocol):
    """Batches of records as they are written; ``aclose`` it when done (it may hold a
    connection)."""

    def __aiter__(self) -> AsyncIterator[list[UsageRecord]]: ...
    async def __anext__(self) -> list[UsageRecord]: ...
    async def aclose(self) -> None: ...


class Claim(Protocol):
    """Records taken for one delivery attempt; end it with :meth:`delivered` or :meth:`failed`."""

    records: list[PendingRecord]

    async def delivered(self, ids: Sequence[str]) -> None:
        """The receiver acknowledged ``ids``: they leave the outbox."""

    async def failed(self, ids: Sequence[str], error: str, max_attempts: int) -> int:
        """An attempt on ``ids`` failed; those at ``max_attempts`` move to the dead letters
        (answers how many moved)."""


class UsageStore(Protocol):
    """What the usage sink, the journal, the delivery and the admin API ask of a usage store."""

    location: str
    """The file, or the URL without its password: for messages."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def write(
        self,
        records: Sequence[UsageRecord],
        *,
        outbox: bool,
        opens: Sequence[JournalOpen] = (),
        trim: bool = True,
    ) -> None:
        """Journal ``opens``, then store ``records`` (each once, by id), delete their journal
        rows, and queue them for the webhook when ``outbox``: one transaction. ``trim`` False
        leaves trimming old records to a later write. Raises ``RecordRefused`` (rows.py) when
        the database refuses the data itself (not the connection): retrying cannot help."""

    async def journal_open(self, rows: Sequence[JournalOpen]) -> None: ...
    async def journal_checkpoint(self, rows: Sequence[JournalCheckpoint]) -> None: ...
    async def heartbeat(self, owner: str, at: float) -> None: ...
    async def forget_owner(self, owner: str) -> None: ...

    async def journal_owners(self) -> list[tuple[str, float | None]]:
        """Every owner of a journal row, and the seconds since its last heartbeat by the
        store's clock (None: none recorded); replicas' clocks may disagree, the store's is one."""

    async def settle_journal(
        self, owners: Collection[str], settle: Settle, *, outbox: bool
    ) -> list[Recovered]:
        """Settle every journal row of ``owners`` (gone) as its record, written in the
        transaction that deletes the rows; rows another gateway is settling are skipped."""

    async def pending(self, limit: int) -> list[PendingRecord]:
        """The oldest undelivered records, without taking them (to decide when to send)."""

    def claim(self, limit: int) -> AbstractAsyncContextManager[Claim]:
        """The oldest undelivered records no other gateway holds, held until the block ends."""

    def depth(self) -> int:
        """Records waiting for the webhook (as last counted; O(1))."""

    def dead_letter_count(self) -> int:
        """Records in the dead letters (as last counted; O(1))."""

    async def dead_letter_records(self, limit: int = 1000) -> list[DeadLetter]: ...
    async def requeue_dead_letters(self) -> int: ...

    async def recent(
        self, limit: int = 100, *, key: str | None = None, model: str | None = None
    ) -> list[UsageRecord]:
        """The newest records, newest first; ``key`` is an id or a name."""

    async def summary(self, since: float) -> list[UsageSummaryRow]:
        """Requests and tokens per key and model since ``since``, the biggest spender first."""

    async def raise_alert(self, alert: BudgetAlert, *, outbox: bool) -> bool:
        """Note ``alert`` raised and queue it for the webhook when ``outbox``, unless it was
        raised before by any gateway sharing the store; answers whether it is new."""

    async def spent(self, scopes: Collection[str], since_day: int) -> dict[str, int]:
        """Nano-units each of ``scopes`` (:func:`llmproxy.budgets.scope`) spent from the UTC
        day ``since_day`` on (absent: nothing)."""

    async def follow(self) -> Follower:
        """Every record any writer stores from the moment this returns, in batches; an empty
        batch now and then when nothing is written (so the reader can check whether to stop).
        Close it when done."""


class _SqliteClaim:
    def __init__(self, store: SqliteUsageStore, records: list[PendingRecord]) -> None:
        self._store = store
        self.records = records

    async def delivered(self, ids: Sequence[str]) -> None:
        await self._store._write_call(self._store.outbox.delivered, ids)

    async def failed(self, ids: Sequence[str], error: str, max_attempts: int) -> int:
        return await self._store._write_call(self._store.outbox.failed, ids, error, max_attempts)


class SqliteUsageStore:
    """:class:`UsageOutbox` (SQLite, blocking) behind the async interface.

    Writes run on one thread of their own, in call order; reads run in the default executor (the
    file's lock serialises them with the writes). The outbox is claimed without a lock: only one
    process delivers from a file (worker 0 when there are several).
    """

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["normal", "full"] = "normal",
        keep_records: int = 100_000,
    ) -> None:
        self.path = path
        self.location = str(path)
        self._synchronous = synchronous
        self._keep_records = keep_records
        self._outbox: UsageOutbox | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmproxy-usage")

    @property
    def outbox(self) -> UsageOutbox:
        """The blocking store underneath (tests and the file's own tools)."""
        if self._outbox is None:
            raise RuntimeError(f"{self.location}: usage store is not open")
        return self._outbox

    async def open(self) -> None:
        if self._outbox is None:
            self._outbox = await asyncio.to_thread(
                UsageOutbox,
                self.path,
                synchronous=self._synchronous,
                keep_records=self._keep_records,
            )

    async def close(self) -> None:
        outbox, self._outbox = self._outbox, None
        if outbox is not None:
            # After whatever writes were handed over: committed batches are already durable.
            await asyncio.get_running_loop().run_in_executor(self._writer, outbox.close)
        self._writer.shutdown(wait=False)

    def _write_call(self, function: Callable[..., _T], *args: object) -> asyncio.Future[_T]:
        """``function(*args)`` on the writer thread, queued now (before the caller yields)."""
        return asyncio.get_running_loop().run_in_executor(self._writer, function, *args)

    async def write(
        self,
        records: Sequence[UsageRecord],
        *,
        outbox: bool,
        opens: Sequence[JournalOpen] = (),
        trim: bool = True,
    ) -> None:
        await self._write_call(
            lambda: self.outbox.write(records, outbox=outbox, opens=opens, trim=trim)
        )

    async def journal_open(self, rows: Sequence[JournalOpen]) -> None:
        await self._write_call(self.outbox.journal_open, rows)

    async def journal_checkpoint(self, rows: Sequence[JournalCheckpoint]) -> None:
        await self._write_call(self.outbox.journal_checkpoint, rows)

    async def heartbeat(self, owner: str, at: float) -> None:
        await self._write_call(self.outbox.heartbeat, owner, at)

    async def forget_owner(self, owner: str) -> None:
        await self._write_call(self.outbox.forget_owner, owner)

    async def journal_owners(self) -> list[tuple[str, float | None]]:
        return await asyncio.to_thread(self.outbox.journal_owners, time.time())

    async def settle_journal(
        self, owners: Collection[str], settle: Settle, *, outbox: bool
    ) -> list[Recovered]:
        return await self._write_call(
            lambda: self.outbox.settle_journal(owners, settle, outbox=outbox)
        )

    async def settle_records(
        self, recovered: Sequence[Recovered], *, outbox: bool
    ) -> list[Recovered]:
        """:meth:`UsageOutbox.settle_records` (the file journal's settlements)."""
        return await self._write_call(lambda: self.outbox.settle_records(recovered, outbox=outbox))

    async def pending(self, limit: int) -> list[PendingRecord]:
        return await asyncio.to_thread(self.outbox.pending, limit)

    @asynccontextmanager
    async def _claim(self, limit: int) -> AsyncIterator[Claim]:
        yield _SqliteClaim(self, await self.pending(limit))

    def claim(self, limit: int) -> AbstractAsyncContextManager[Claim]:
        return self._claim(limit)

    def depth(self) -> int:
        return self._outbox.depth() if self._outbox is not None else 0

    def dead_letter_count(self) -> int:
        return self._outbox.dead_letter_count() if self._outbox is not None else 0

    async def dead_letter_records(self, limit: int = 1000) -> list[DeadLetter]:
        return await asyncio.to_thread(self.outbox.dead_letter_records, limit)

    async def requeue_dead_letters(self) -> int:
        return await self._write_call(self.outbox.requeue_dead_letters)

    async def recent(
        self, limit: int = 100, *, key: str | None = None, model: str | None = None
    ) -> list[UsageRecord]:
        return await asyncio.to_thread(lambda: self.outbox.recent(limit, key=key, model=model))

    async def summary(self, since: float) -> list[UsageSummaryRow]:
        return await asyncio.to_thread(self.outbox.summary, since)

    async def raise_alert(self, alert: BudgetAlert, *, outbox: bool) -> bool:
        return await self._write_call(lambda: self.outbox.raise_alert(alert, outbox=outbox))

    async def spent(self, scopes: Collection[str], since_day: int) -> dict[str, int]:
        return await asyncio.to_thread(self.outbox.spent, scopes, since_day)

    async def follow(self) -> Follower:
        """Every record any worker writes to the file, read every :data:`FOLLOW_INTERVAL`."""
        return self._after(await asyncio.to_thread(self.outbox.last_seq))

    async def _after(self, seq: int) -> AsyncGenerator[list[UsageRecord], None]:
        while True:
            seq, records = await asyncio.to_thread(self.outbox.after, seq)
            yield records
            if not records:
                await asyncio.sleep(FOLLOW_INTERVAL)


def open_usage_store(
    location: str,
    base_dir: Path,
    *,
    synchronous: Literal["normal", "full"] = "normal",
    keep_records: int = 100_000,
) -> UsageStore:
    """The store ``usage.database`` names (not opened yet): PostgreSQL for a ``postgresql://``
    URL, else the SQLite file at that path (relative to the config's directory)."""
    if is_postgres_url(location):
        require("postgres", "usage.database")  # asyncpg is an extra: say which, not ImportError
        from llmproxy.usage.postgres import PostgresUsageStore

        return PostgresUsageStore(location, keep_records=keep_records)
    return SqliteUsageStore(base_dir / location, synchronous=synchronous, keep_records=keep_records)
