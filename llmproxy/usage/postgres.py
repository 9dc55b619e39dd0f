"""The usage store on PostgreSQL (``usage.database: "postgresql://..."``), shared by replicas.

Every gateway of a fleet writes its records, its webhook outbox and its journal of requests in
flight to the same tables, so:

- records are keyed by their ``id``: a batch written twice (a commit whose answer was lost with
  the connection, then retried) is stored once (``ON CONFLICT (id) DO NOTHING``), and queued for
  the webhook once;
- ``llmproxy usage recent|summary`` answer for the whole fleet from any machine, and ``usage
  tail`` follows it: each write transaction sends ``NOTIFY llmproxy_usage, '<first seq>:<last
  seq>:<xid>'``, and a follower reads exactly that transaction's rows (``xmin``) in that range;
- the outbox is shared: a delivery claims the oldest rows with ``FOR UPDATE SKIP LOCKED`` inside a
  transaction held while it POSTs, so two gateways never send the same record, and a gateway that
  dies mid-batch rolls back with its connection, leaving its rows to the next claimant;
- journal rows carry their owner; owners beat in ``llmproxy_usage_owner``, and any replica settles
  the rows of an owner that stopped beating (:mod:`llmproxy.usage.journal`).

Writes go through one connection at a time, in the order they are called (a FIFO lock), so a
record's write never overtakes the insert of the journal row it deletes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final

import asyncpg
import msgspec

from llmproxy import pg_schema
from llmproxy.dsn import postgres_dsn, scrub_dsn
from llmproxy.usage.alerts import BudgetAlert
from llmproxy.usage.record import UsageRecord
from llmproxy.usage.rows import (
    DeadLetter,
    JournalCheckpoint,
    JournalOpen,
    JournalRow,
    PendingRecord,
    RecordRefused,
    Recovered,
    Settle,
    UsageSummaryRow,
    summary_by_api,
)
from llmproxy.usage.spend import spend_rows

log = logging.getLogger("llmproxy.usage")

CHANNEL: Final = "llmproxy_usage"
"""The NOTIFY channel of written records: ``<first seq>:<last seq>:<transaction id>``."""

FOLLOW_QUIET: Final = 0.5
"""Seconds after which a follower with nothing new yields an empty batch."""

_COMPONENT: Final = "usage"

_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: records (the fields summaries filter and sum on as columns, the record as JSONB), the
    #    outbox, the dead letters, the journal of requests in flight and its owners' heartbeats.
    (
        """
        CREATE TABLE llmproxy_usage (
            seq BIGSERIAL PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            time DOUBLE PRECISION NOT NULL,
            key_id TEXT NOT NULL,
            key_name TEXT NOT NULL,
            user_id TEXT NOT NULL,
            model TEXT NOT NULL,
            status TEXT NOT NULL,
            prompt_tokens BIGINT NOT NULL,
            completion_tokens BIGINT NOT NULL,
            total_tokens BIGINT NOT NULL,
            body JSONB NOT NULL
        )
        """,
        "CREATE INDEX llmproxy_usage_by_time ON llmproxy_usage (time)",
        """
        CREATE TABLE llmproxy_usage_outbox (
            seq BIGSERIAL PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            body JSONB NOT NULL,
            queued_at DOUBLE PRECISION NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0
        )
        """,
        """
        CREATE TABLE llmproxy_usage_dead_letter (
            seq BIGSERIAL PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            body JSONB NOT NULL,
            attempts INTEGER NOT NULL,
            error TEXT NOT NULL,
            moved_at DOUBLE PRECISION NOT NULL
        )
        """,
        """
        CREATE TABLE llmproxy_usage_journal (
            request_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            body JSONB NOT NULL,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            opened_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            lease TEXT NOT NULL DEFAULT ''
        )
        """,
        "CREATE INDEX llmproxy_usage_journal_by_owner ON llmproxy_usage_journal (owner)",
        """
        CREATE TABLE llmproxy_usage_owner (
            owner TEXT PRIMARY KEY,
            heartbeat_at DOUBLE PRECISION NOT NULL
        )
        """,
    ),
    # 2: spend per key and per team and UTC day (llmproxy.usage.spend), added to in the
    #    transaction that stores the records: budgets' periods outlast the records kept.
    (
        """
        CREATE TABLE llmproxy_spend (
            scope TEXT NOT NULL,
            day BIGINT NOT NULL,
            nanos BIGINT NOT NULL,
            PRIMARY KEY (scope, day)
        )
        """,
        # The budget alerts raised (llmproxy.usage.alerts), so the fleet raises each once.
        """
        CREATE TABLE llmproxy_budget_alert (
            id TEXT PRIMARY KEY,
            raised_at DOUBLE PRECISION NOT NULL
        )
        """,
    ),
)

_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

_INSERT: Final = """
INSERT INTO llmproxy_usage (id, time, key_id, key_name, user_id, model, status, prompt_tokens,
                            completion_tokens, total_tokens, body)
SELECT id, time, key_id, key_name, user_id, model, status, prompt_tokens, completion_tokens,
       total_tokens, body::jsonb
FROM unnest($1::text[], $2::float8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::int8[], $9::int8[], $10::int8[], $11::text[])
     AS b(id, time, key_id, key_name, user_id, model, status, prompt_tokens, completion_tokens,
          total_tokens, body)
ON CONFLICT (id) DO NOTHING
RETURNING seq, id
"""
_QUEUE: Final = """
INSERT INTO llmproxy_usage_outbox (id, body, queued_at)
SELECT b.id, b.body::jsonb, $3 FROM unnest($1::text[], $2::text[]) AS b(id, body)
WHERE b.id = ANY($4::text[])
ON CONFLICT (id) DO NOTHING
"""
_ADD_SPEND: Final = """
INSERT INTO llmproxy_spend (scope, day, nanos)
SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[])
ON CONFLICT (scope, day) DO UPDATE SET nanos = llmproxy_spend.nanos + excluded.nanos
"""
_NOTIFY: Final = (
    "SELECT pg_notify($1, $2::text || ':' || $3::text || ':' "
    "|| (pg_current_xact_id()::text::bigint % 4294967296)::text)"
)


class PostgresUsageError(RuntimeError):
    """The usage database failed; the message names it without its password."""


class _PostgresClaim:
    def __init__(self, connection: asyncpg.Connection, records: list[PendingRecord]) -> None:
        self._connection = connection
        self.records = records

    async def delivered(self, ids: Sequence[str]) -> None:
        await self._connection.execute(
            "DELETE FROM llmproxy_usage_outbox WHERE id = ANY($1::text[])", list(ids)
        )

    async def failed(self, ids: Sequence[str], error: str, max_attempts: int) -> int:
        connection = self._connection
        await connection.execute(
            "UPDATE llmproxy_usage_outbox SET attempts = attempts + 1 WHERE id = ANY($1::text[])",
            list(ids),
        )
        await connection.execute(
            "INSERT INTO llmproxy_usage_dead_letter (id, body, attempts, error, moved_at) "
            "SELECT id, body, attempts, $2, extract(epoch FROM clock_timestamp()) "
            "FROM llmproxy_usage_outbox WHERE attempts >= $3 AND id = ANY($1::text[]) "
            "ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body, attempts = EXCLUDED.attempts, "
            "error = EXCLUDED.error, moved_at = EXCLUDED.moved_at",
            list(ids),
            error,
            max_attempts,
        )
        status = await connection.execute(
            "DELETE FROM llmproxy_usage_outbox WHERE attempts >= $2 AND id = ANY($1::text[])",
            list(ids),
            max_attempts,
        )
        return _count(status)


def _count(status: str) -> int:
    """The row count of a command status (``"DELETE 3"``, ``"INSERT 0 3"``)."""
    return int(status.rsplit(" ", 1)[-1])


_NUL_ESCAPE: Final = b"\\u0000"
"""A NUL as msgspec writes it in JSON: PostgreSQL's text and JSONB cannot hold one."""


def _without_nul(value: object) -> object:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def _storable_json(body: bytes) -> str:
    """A record's JSON as PostgreSQL can store it: a NUL in any text (a Lua decision's
    metadata, a key's name) becomes U+FFFD. Costs one search of the JSON when there is none."""
    if _NUL_ESCAPE in body:
        body = msgspec.json.encode(_without_nul(msgspec.json.decode(body)))
    return body.decode()


def _columns(records: Sequence[UsageRecord]) -> list[list[object]]:
    """The batch as one array per column of :data:`_INSERT`, each record encoded once (and
    read back from its stored form only when it held a NUL)."""
    bodies: list[object] = []
    storable: list[UsageRecord] = []
    for record in records:
        encoded = record.to_json()
        body = _storable_json(encoded)
        bodies.append(body)
        # Rare: a NUL was replaced, so the columns come from the stored form too.
        storable.append(UsageRecord.from_json(body) if _NUL_ESCAPE in encoded else record)
    records = storable
    return [
        [r.id for r in records],
        [r.time for r in records],
        [r.key_id for r in records],
        [r.key_name for r in records],
        [r.user_id for r in records],
        [r.model for r in records],
        [str(r.status) for r in records],
        [r.prompt_tokens for r in records],
        [r.completion_tokens for r in records],
        [r.total_tokens for r in records],
        bodies,
    ]


class _Follower:
    """The records of every write transaction announced on :data:`CHANNEL`, in batches; an
    empty batch after :data:`FOLLOW_QUIET` of silence. Its connection is closed by
    :meth:`aclose`, whether or not it was ever iterated."""

    def __init__(
        self, connection: asyncpg.Connection, failure: Callable[[BaseException], Exception]
    ) -> None:
        self._connection = connection
        self._failure = failure
        self._written: asyncio.Queue[str] = asyncio.Queue()

    def notified(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        self._written.put_nowait(payload)

    def __aiter__(self) -> _Follower:
        return self

    async def __anext__(self) -> list[UsageRecord]:
        connection = self._connection
        try:
            async with asyncio.timeout(FOLLOW_QUIET):
                payload = await self._written.get()
        except TimeoutError:
            if connection.is_closed():  # notices were lost with it: the reader must know
                raise self._failure(ConnectionError("the LISTEN connection closed")) from None
            return []
        first, last, xid = (int(part) for part in payload.split(":"))
        try:
            rows = await connection.fetch(
                "SELECT body::text FROM llmproxy_usage WHERE seq BETWEEN $1 AND $2 "
                "AND xmin::text::bigint = $3 ORDER BY seq",
                first,
                last,
                xid,
            )
        except _ERRORS as exc:
            raise self._failure(exc) from None
        return [UsageRecord.from_json(row[0]) for row in rows]

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._connection.close(), 1.0)
        self._connection.terminate()


class PostgresUsageStore:
    """Usage records, outbox and journal in PostgreSQL: a usage store for replicas."""

    def __init__(
        self, dsn: str, *, keep_records: int = 100_000, pool_size: int = 4, timeout: float = 10.0
    ) -> None:
        self._url = postgres_dsn(dsn)
        self.location = scrub_dsn(self._url)
        self.keep_records = keep_records
        self._trim_every = max(1, keep_records // 10)
        self._since_trim = self._trim_every
        self._pool_size = pool_size
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._write_lock = asyncio.Lock()
        self._depth = 0
        self._dead = 0

    # Lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and bring the schema up to date."""
        if self._pool is not None:
            return
        try:
            self._pool = await pg_schema.migrated_pool(
                self._url,
                _COMPONENT,
                _MIGRATIONS,
                min_size=1,
                max_size=self._pool_size,
                wait=self._timeout,
            )
        except (*_ERRORS, pg_schema.SchemaTooNew) as exc:
            raise self._failure(exc) from None
        await self._refresh_counts()

    async def close(self) -> None:
        """Close every connection (after the writes already handed over)."""
        async with self._write_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            await pg_schema.close_pool(pool, self._timeout)

    def _failure(self, exc: BaseException) -> PostgresUsageError:
        text = str(exc).replace(self._url, self.location) or type(exc).__name__
        return PostgresUsageError(f"usage store {self.location}: {text}")

    def _connected(self) -> asyncpg.Pool:
        if self._pool is None:
            raise PostgresUsageError(f"usage store {self.location} is not open")
        return self._pool

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection in a transaction, after every write called before this one."""
        async with self._write_lock:
            try:
                async with self._connected().acquire() as connection, connection.transaction():
                    yield connection
            except asyncpg.DataError as exc:  # a value the database cannot hold
                raise RecordRefused(f"usage store {self.location}: {exc}") from None
            except _ERRORS as exc:
                raise self._failure(exc) from None

    # Records -------------------------------------------------------------------------------

    async def write(
        self,
        records: Sequence[UsageRecord],
        *,
        outbox: bool,
        opens: Sequence[JournalOpen] = (),
        trim: bool = True,
    ) -> None:
        """Journal ``opens``, store the records not stored yet, delete their journal rows, queue
        the new ones."""
        if not records and not opens:
            return
        async with self._writing() as connection:
            if opens:
                await self._open(connection, opens)
            if records:
                await self._insert(connection, records, outbox=outbox, trim=trim)

    async def _insert(
        self,
        connection: asyncpg.Connection,
        records: Sequence[UsageRecord],
        *,
        outbox: bool,
        trim: bool = True,
    ) -> None:
        columns = _columns(records)
        ids: list[str] = columns[0]  # type: ignore[assignment]
        if self.keep_records > 0:
            stored = await connection.fetch(_INSERT, *columns)
            new = [row["id"] for row in stored]
            if stored:
                seqs = [row["seq"] for row in stored]
                await connection.execute(_NOTIFY, CHANNEL, str(min(seqs)), str(max(seqs)))
                self._since_trim += len(stored)
                if trim and self._since_trim >= self._trim_every:
                    self._since_trim = 0
                    await connection.execute(
                        "DELETE FROM llmproxy_usage "
                        "WHERE seq <= (SELECT max(seq) FROM llmproxy_usage) - $1",
                        self.keep_records,
                    )
        else:
            new = ids  # nothing kept to tell repeats by: the outbox's own ids do
        if new:
            fresh = set(new)
            # Sorted: replicas adding to the same rows lock them in one order (no deadlock).
            spent = sorted(spend_rows(r for r in records if r.id in fresh))
            if spent:
                await connection.execute(
                    _ADD_SPEND, [r[0] for r in spent], [r[1] for r in spent], [r[2] for r in spent]
                )
        await connection.execute(
            "DELETE FROM llmproxy_usage_journal WHERE request_id = ANY($1::text[])", ids
        )
        if outbox and new:
            await connection.execute(_QUEUE, ids, columns[10], time.time(), new)

    async def recent(
        self, limit: int = 100, *, key: str | None = None, model: str | None = None
    ) -> list[UsageRecord]:
        """The newest records of the fleet, newest first; ``key`` is an id or a name."""
        where: list[str] = []
        arguments: list[object] = []
        if key is not None:
            arguments.append(key)
            where.append(f"(key_id = ${len(arguments)} OR key_name = ${len(arguments)})")
        if model is not None:
            arguments.append(model)
            where.append(f"model = ${len(arguments)}")
        arguments.append(limit)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = await self._fetch(
            f"SELECT body::text FROM llmproxy_usage {clause}"
            f"ORDER BY seq DESC LIMIT ${len(arguments)}",
            *arguments,
        )
        return [UsageRecord.from_json(row[0]) for row in rows]

    async def summary(self, since: float) -> list[UsageSummaryRow]:
        """Requests and tokens per key and model of the fleet since ``since`` (Unix time), the
        biggest spender first; a key renamed meanwhile shows its latest name."""
        rows = await self._fetch(
            "SELECT key_id, (array_agg(key_name ORDER BY seq DESC))[1], model, "
            "coalesce(body->>'endpoint', ''), count(*), sum(prompt_tokens), "
            "sum(completion_tokens), sum(total_tokens), user_id, coalesce(body->>'team', ''), "
            "coalesce(sum((body->>'cost')::float8), 0), max(seq) "
            "FROM llmproxy_usage WHERE time >= $1 GROUP BY key_id, model, 4, 9, 10 "
            "ORDER BY max(seq) DESC",
            since,
        )
        return summary_by_api(tuple(row)[:11] for row in rows)

    async def raise_alert(self, alert: BudgetAlert, *, outbox: bool) -> bool:
        """Note ``alert`` as raised (fleet-wide) and queue it for the webhook when ``outbox``,
        unless some gateway raised it before; answers whether it is new."""
        async with self._writing() as connection:
            new = await connection.fetchval(
                "INSERT INTO llmproxy_budget_alert (id, raised_at) VALUES ($1, $2) "
                "ON CONFLICT (id) DO NOTHING RETURNING true",
                alert.id,
                alert.time,
            )
            if new and outbox:
                await connection.execute(
                    "INSERT INTO llmproxy_usage_outbox (id, body, queued_at) "
                    "VALUES ($1, $2::jsonb, $3) ON CONFLICT (id) DO NOTHING",
                    alert.id,
                    alert.to_json().decode(),
                    time.time(),
                )
        return bool(new)

    async def spent(self, scopes: Collection[str], since_day: int) -> dict[str, int]:
        """Nano-units each of ``scopes`` spent from the UTC day ``since_day`` on, fleet-wide."""
        if not scopes:
            return {}
        rows = await self._fetch(
            "SELECT scope, sum(nanos)::int8 FROM llmproxy_spend "
            "WHERE day >= $1 AND scope = ANY($2::text[]) GROUP BY scope",
            since_day,
            list(scopes),
        )
        return {str(row[0]): int(row[1]) for row in rows}

    async def follow(self) -> _Follower:
        """Every record any gateway writes from now on (LISTEN on a connection of its own,
        closed by the follower's ``aclose``)."""
        try:
            connection = await asyncpg.connect(self._url, timeout=self._timeout)
        except _ERRORS as exc:
            raise self._failure(exc) from None
        follower = _Follower(connection, self._failure)
        try:
            await connection.add_listener(CHANNEL, follower.notified)
        except BaseException:
            connection.terminate()
            raise
        return follower

    # The journal ---------------------------------------------------------------------------

    async def journal_open(self, rows: Sequence[JournalOpen]) -> None:
        async with self._writing() as connection:
            await self._open(connection, rows)

    @staticmethod
    async def _open(connection: asyncpg.Connection, rows: Sequence[JournalOpen]) -> None:
        await connection.execute(
            "INSERT INTO llmproxy_usage_journal "
            "(request_id, owner, body, opened_at, updated_at, lease) "
            "SELECT r, o, b::jsonb, t, t, l "
            "FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::text[]) "
            "AS j(r, o, b, t, l) "
            "ON CONFLICT (request_id) DO UPDATE SET owner = EXCLUDED.owner, "
            "body = EXCLUDED.body, opened_at = EXCLUDED.opened_at, "
            "updated_at = EXCLUDED.updated_at, lease = EXCLUDED.lease",
            [row.request_id for row in rows],
            [row.owner for row in rows],
            [_storable_json(row.body) for row in rows],
            [row.opened_at for row in rows],
            [row.lease for row in rows],
        )

    async def journal_checkpoint(self, rows: Sequence[JournalCheckpoint]) -> None:
        async with self._writing() as connection:
            await connection.execute(
                "UPDATE llmproxy_usage_journal AS j SET prompt_tokens = c.p, "
                "completion_tokens = c.c, updated_at = c.t "
                "FROM unnest($1::int8[], $2::int8[], $3::float8[], $4::text[]) AS c(p, c, t, id) "
                "WHERE j.request_id = c.id",
                [row.prompt_tokens for row in rows],
                [row.completion_tokens for row in rows],
                [row.at for row in rows],
                [row.request_id for row in rows],
            )

    async def heartbeat(self, owner: str, at: float) -> None:
        """``owner`` beats, at the server's clock (``at`` is not used: replicas' clocks may
        disagree by more than the owner timeout)."""
        async with self._writing() as connection:
            await connection.execute(
                "INSERT INTO llmproxy_usage_owner (owner, heartbeat_at) "
                "VALUES ($1, extract(epoch FROM clock_timestamp())) "
                "ON CONFLICT (owner) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at",
                owner,
            )

    async def forget_owner(self, owner: str) -> None:
        async with self._writing() as connection:
            await connection.execute("DELETE FROM llmproxy_usage_owner WHERE owner = $1", owner)

    async def journal_owners(self) -> list[tuple[str, float | None]]:
        rows = await self._fetch(
            "SELECT j.owner, extract(epoch FROM clock_timestamp())::float8 - o.heartbeat_at "
            "FROM (SELECT DISTINCT owner FROM llmproxy_usage_journal) AS j "
            "LEFT JOIN llmproxy_usage_owner AS o ON o.owner = j.owner"
        )
        return [(row[0], row[1]) for row in rows]

    async def settle_journal(
        self, owners: Collection[str], settle: Settle, *, outbox: bool
    ) -> list[Recovered]:
        """Settle the rows of ``owners``; rows another replica is settling are skipped (it
        writes them)."""
        if not owners:
            return []
        async with self._writing() as connection:
            rows = [
                JournalRow(row[0], row[1], row[2].encode(), row[3], row[4], row[5], row[6], row[7])
                for row in await connection.fetch(
                    "SELECT request_id, owner, body::text, prompt_tokens, completion_tokens, "
                    "opened_at, updated_at, lease FROM llmproxy_usage_journal "
                    "WHERE owner = ANY($1::text[]) ORDER BY opened_at FOR UPDATE SKIP LOCKED",
                    list(owners),
                )
            ]
            recovered = [Recovered(settle(row), row.lease) for row in rows]
            if recovered:
                await self._insert(connection, [r.record for r in recovered], outbox=outbox)
            await connection.execute(
                "DELETE FROM llmproxy_usage_owner WHERE owner = ANY($1::text[])", list(owners)
            )
        return recovered

    # The outbox ----------------------------------------------------------------------------

    async def pending(self, limit: int) -> list[PendingRecord]:
        rows = await self._fetch(
            "SELECT seq, id, body::text, queued_at, attempts, "
            "(SELECT count(*) FROM llmproxy_usage_outbox), "
            "(SELECT count(*) FROM llmproxy_usage_dead_letter) "
            "FROM llmproxy_usage_outbox ORDER BY seq LIMIT $1",
            limit,
        )
        if rows:
            self._depth, self._dead = int(rows[0][5]), int(rows[0][6])
        else:
            await self._refresh_counts()
        return [PendingRecord(row[0], row[1], row[2].encode(), row[3], row[4]) for row in rows]

    @asynccontextmanager
    async def _claim(self, limit: int) -> AsyncIterator[_PostgresClaim]:
        try:
            async with self._connected().acquire() as connection, connection.transaction():
                rows = await connection.fetch(
                    "SELECT seq, id, body::text, queued_at, attempts FROM llmproxy_usage_outbox "
                    "ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                    limit,
                )
                yield _PostgresClaim(
                    connection,
                    [PendingRecord(r[0], r[1], r[2].encode(), r[3], r[4]) for r in rows],
                )
        except _ERRORS as exc:
            raise self._failure(exc) from None
        with contextlib.suppress(PostgresUsageError):
            await self._refresh_counts()

    def claim(self, limit: int) -> AbstractAsyncContextManager[_PostgresClaim]:
        """The oldest records no other gateway holds, locked until the block ends (a POST
        inside it): delivered or failed with the claim's methods, committed at the end."""
        return self._claim(limit)

    def depth(self) -> int:
        return self._depth

    def dead_letter_count(self) -> int:
        return self._dead

    async def _refresh_counts(self) -> None:
        row = await self._fetchrow(
            "SELECT (SELECT count(*) FROM llmproxy_usage_outbox), "
            "(SELECT count(*) FROM llmproxy_usage_dead_letter)"
        )
        if row is not None:
            self._depth, self._dead = int(row[0]), int(row[1])

    async def dead_letter_records(self, limit: int = 1000) -> list[DeadLetter]:
        rows = await self._fetch(
            "SELECT id, body::text, attempts, error, moved_at FROM llmproxy_usage_dead_letter "
            "ORDER BY seq DESC LIMIT $1",
            limit,
        )
        await self._refresh_counts()
        return [DeadLetter(row[0], row[1].encode(), row[2], row[3], row[4]) for row in rows]

    async def requeue_dead_letters(self) -> int:
        async with self._writing() as connection:
            status = await connection.execute(
                "WITH moved AS (DELETE FROM llmproxy_usage_dead_letter RETURNING seq, id, body) "
                "INSERT INTO llmproxy_usage_outbox (id, body, queued_at) "
                "SELECT id, body, $1 FROM moved ORDER BY seq ON CONFLICT (id) DO NOTHING",
                time.time(),
            )
        await self._refresh_counts()
        return _count(status)

    # Reads ---------------------------------------------------------------------------------

    async def _fetch(self, query: str, *arguments: object) -> list[asyncpg.Record]:
        try:
            async with self._connected().acquire() as connection:
                return list(await connection.fetch(query, *arguments))
        except _ERRORS as exc:
            raise self._failure(exc) from None

    async def _fetchrow(self, query: str, *arguments: object) -> asyncpg.Record | None:
        try:
            async with self._connected().acquire() as connection:
                return await connection.fetchrow(query, *arguments)
        except _ERRORS as exc:
            raise self._failure(exc) from None
