"""The ``database`` provider: a key's data in a row of a SQL table.

Drivers and the DSNs they take (see :mod:`llmproxy.dsn` for every form):

- ``postgres`` / ``postgresql`` (asyncpg): ``postgres://user:pass@host:5432/db``;
- ``mysql`` / ``mariadb`` (aiomysql): ``mysql://user:pass@host:3306/db`` or the seed's Go form
  ``user:pass@tcp(host:3306)/db``;
- ``sqlite`` / ``sqlite3`` (the standard library, in a worker thread): a file path or
  ``sqlite:///path``, always opened read-only.

The row is found with ``table``/``key_column``/``fields`` or with a custom ``query``; the rules
(quoted names, the accepted ``$1``/``?``/``%s`` placeholders) and the SQL for stores that keep
SHA-256 digests are in :mod:`llmproxy.auth.providers._sql`. With a custom ``query``, a non-empty
``fields`` keeps only those result columns. Values are converted by
:func:`~llmproxy.auth.providers._sql.json_like` (whole ``Decimal`` → ``int``, other ``Decimal`` →
``float``, date/time → ISO 8601 string), and a column holding the secret itself is left out.

PostgreSQL and MySQL pools come from :class:`~llmproxy.connections.ConnectionPools`, shared with
every provider naming the same server; each lookup (waiting for a connection included) is bounded
by ``timeout``. A configuration that cannot work (unknown DSN form, a table name that is not a
plain name, a query without its parameter) is refused with :class:`ValueError` at construction.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from llmproxy.apikey import PresentedKey
from llmproxy.auth.providers._redact import scrub, without_secret
from llmproxy.auth.providers._sql import Dialect, KeyQuery, custom_query, json_like, table_query
from llmproxy.auth.providers.base import KeyData, ProviderError
from llmproxy.config.model import DatabaseConnection
from llmproxy.connections import ConnectionPools, PoolError
from llmproxy.dsn import (
    parse_mysql_dsn,
    postgres_dsn,
    sqlite_path,
    sqlite_readonly_uri,
)

_DIALECTS: dict[str, Dialect] = {
    "postgres": "postgres",
    "postgresql": "postgres",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
}
Row = tuple[Sequence[str], Sequence[Any]]
"""Column names and the values of one row."""


class DatabaseProvider:
    """Looks keys up in PostgreSQL, MySQL/MariaDB or SQLite."""

    def __init__(self, name: str, conn: DatabaseConnection, pools: ConnectionPools) -> None:
        dialect = _DIALECTS[conn.driver]
        try:
            if conn.query:
                self._query = custom_query(conn.query, dialect)
            else:
                self._query = table_query(conn.table, conn.key_column, conn.fields, dialect)
            self._store = _make_store(dialect, conn, pools)
        except ValueError as exc:
            raise ValueError(f"database provider {name!r}: {exc}") from None
        self.name = name
        self._conn = conn
        self._pools = pools
        self._password = self._store.password
        # With a custom query, `fields` names result columns (a "t.col" field means "col").
        self._columns = (
            {field.rpartition(".")[2] for field in conn.fields}
            if conn.query and conn.fields
            else None
        )
        self._state = "new"

    async def open(self) -> None:
        """Get the shared pool (no connection is made until the first lookup)."""
        try:
            await self._store.open()
        except PoolError as exc:
            raise ProviderError(f"database {self.name!r}: {exc}") from None
        self._state = "open"

    async def lookup(self, key: PresentedKey) -> KeyData | None:
        """The first row the query returns for ``key``, ``None`` when there is none."""
        if self._state != "open" or self._pools.closed:
            raise ProviderError(
                f"database {self.name!r}: provider is not open (or its runtime has shut down)"
            )
        try:
            async with asyncio.timeout(self._conn.timeout):
                row = await self._store.fetch_row(self._query, key.secret)
        except (TimeoutError, _StatementTimeout):
            raise self._error(f"timeout after {self._conn.timeout:g}s", key) from None
        except (_DriverError, sqlite3.Error, _NoResultSet) as exc:
            raise self._error(str(exc), key) from None
        except OSError as exc:
            raise self._error(f"cannot connect: {exc}", key) from None
        if row is None:
            return None
        names, values = row
        data = {
            name: json_like(value)
            for name, value in zip(names, values, strict=True)
            if self._columns is None or name in self._columns
        }
        return without_secret(data, key)

    async def close(self) -> None:
        """Close what this provider owns (a SQLite file); shared pools stay with their registry."""
        self._state = "closed"
        await self._store.close()

    def _error(self, cause: str, key: PresentedKey) -> ProviderError:
        return ProviderError(f"database {self.name!r}: {scrub(cause, key.secret, self._password)}")


class _DriverError(Exception):
    """A driver's error, in words: each store translates its own driver's exceptions, so the
    provider never names a driver module that may not be installed (they are extras)."""


class _StatementTimeout(Exception):
    """The statement ran past its deadline (SQLite, which asyncio cannot cancel)."""


class _Store(Protocol):
    password: str

    async def open(self) -> None: ...

    async def fetch_row(self, query: KeyQuery, key: str) -> Row | None: ...

    async def close(self) -> None: ...


def _make_store(dialect: Dialect, conn: DatabaseConnection, pools: ConnectionPools) -> _Store:
    if dialect == "postgres":
        return _PostgresStore(conn, pools)
    if dialect == "mysql":
        return _MySQLStore(conn, pools)
    return _SQLiteStore(sqlite_path(conn.dsn), conn.timeout)


class _PostgresStore:
    def __init__(self, conn: DatabaseConnection, pools: ConnectionPools) -> None:
        self._dsn = postgres_dsn(conn.dsn)
        self.password = unquote(urlsplit(self._dsn).password or "")
        self._conn = conn
        self._pools = pools
        self._pool: Any = None
        self._errors: tuple[type[Exception], ...] = ()

    async def open(self) -> None:
        self._pool = await self._pools.postgres(self._dsn, self._conn.pool_size, self._conn.timeout)
        import asyncpg  # installed: the pool above exists

        self._errors = (asyncpg.PostgresError, asyncpg.InterfaceError)

    async def fetch_row(self, query: KeyQuery, key: str) -> Row | None:
        try:
            async with self._pool.acquire() as connection:
                record = await connection.fetchrow(query.sql, *query.arguments(key))
        except self._errors as exc:
            raise _DriverError(str(exc)) from None
        if record is None:
            return None
        return list(record.keys()), list(record.values())

    async def close(self) -> None:
        self._pool = None


@functools.cache
def _quiet_cursor() -> type[Any]:
    """A cursor that does not turn server warnings into Python warnings.

    A SELECT's warnings (a truncated comparison, say) are not actionable per request, and
    aiomysql would spend a ``SHOW WARNINGS`` round trip on each before warning. Made on first
    use: aiomysql is an extra.
    """
    import aiomysql

    class QuietCursor(aiomysql.Cursor):  # type: ignore[misc]
        async def _show_warnings(self, conn: Any) -> None:
            return None

    return QuietCursor


class _MySQLStore:
    def __init__(self, conn: DatabaseConnection, pools: ConnectionPools) -> None:
        self.password = parse_mysql_dsn(conn.dsn).password
        self._conn = conn
        self._pools = pools
        self._pool: Any = None
        self._cursor: type[Any] = object
        self._error: type[Exception] = _DriverError
        self._clean: tuple[type[BaseException], ...] = (_NoResultSet,)

    async def open(self) -> None:
        self._pool = await self._pools.mysql(
            self._conn.dsn, self._conn.pool_size, self._conn.timeout
        )
        import aiomysql  # installed: the pool above exists

        self._cursor = _quiet_cursor()
        self._error = aiomysql.Error
        self._clean = (aiomysql.ProgrammingError, aiomysql.DataError, _NoResultSet)

    async def fetch_row(self, query: KeyQuery, key: str) -> Row | None:
        try:
            return await self._fetch_row(query, key)
        except self._error as exc:
            raise _DriverError(_mysql_message(exc)) from None

    async def _fetch_row(self, query: KeyQuery, key: str) -> Row | None:
        try:
            connection = await self._pool.acquire()
        except RuntimeError as exc:  # aiomysql's "Cannot acquire connection after closing pool"
            raise _DriverError(str(exc)) from None
        try:
            async with connection.cursor(self._cursor) as cursor:
                await cursor.execute(query.sql, query.arguments(key))
                if cursor.description is None:
                    raise _NoResultSet
                names = [column[0] for column in cursor.description]
                values = await cursor.fetchone()
        except BaseException as exc:
            # A statement cut short (timeout, cancellation, lost connection) leaves the protocol
            # mid-reply: the connection must not go back to the pool. A SQL error leaves it clean.
            if not isinstance(exc, self._clean):
                connection.close()
            raise
        finally:
            await self._pool.release(connection)
        return None if values is None else (names, values)

    async def close(self) -> None:
        self._pool = None


class _NoResultSet(Exception):
    def __init__(self) -> None:
        super().__init__("the query returned no result set (it must be a SELECT)")


def _mysql_message(exc: Exception) -> str:
    # PyMySQL errors carry (code, message); str() of them is a tuple's repr.
    if len(exc.args) == 2 and isinstance(exc.args[0], int):
        return f"MySQL error {exc.args[0]}: {exc.args[1]}"
    return str(exc) or type(exc).__name__


class _SQLiteStore:
    """One read-only connection, used by one worker thread at a time.

    SQLite reads take well under a millisecond, so serialising them costs little and keeps the
    connection handling trivially correct. A statement is aborted at its deadline by a progress
    handler, since a worker thread cannot be cancelled.
    """

    password = ""

    def __init__(self, path: str, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._deadline = 0.0

    async def open(self) -> None:
        pass  # the file is opened by the first lookup, so it may appear after startup

    async def fetch_row(self, query: KeyQuery, key: str) -> Row | None:
        deadline = time.monotonic() + self._timeout
        return await asyncio.to_thread(self._fetch_row, query, key, deadline)

    def _fetch_row(self, query: KeyQuery, key: str, deadline: float) -> Row | None:
        if not self._lock.acquire(timeout=max(deadline - time.monotonic(), 0.001)):
            raise _StatementTimeout
        try:
            connection = self._connection or self._connect()
            self._deadline = deadline
            cursor = connection.execute(query.sql, query.arguments(key))
            try:
                values = cursor.fetchone()
                names = [column[0] for column in cursor.description or ()]
            finally:
                cursor.close()
        except sqlite3.OperationalError as exc:
            if "interrupted" in str(exc):  # by _past_deadline
                raise _StatementTimeout from None
            raise
        finally:
            self._lock.release()
        return None if values is None else (names, values)

    def _connect(self) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(
                sqlite_readonly_uri(self._path),
                uri=True,
                timeout=self._timeout,
                check_same_thread=False,
                isolation_level=None,
            )
        except sqlite3.Error as exc:
            raise sqlite3.OperationalError(f"{self._path}: {exc}") from None
        try:
            # Read the schema now, so that a file that is not a database is named in the error.
            connection.execute("SELECT 1 FROM sqlite_master LIMIT 1").close()
        except sqlite3.Error as exc:
            connection.close()
            raise sqlite3.OperationalError(f"{self._path}: {exc}") from None
        connection.set_progress_handler(self._past_deadline, 1000)
        self._connection = connection
        return connection

    def _past_deadline(self) -> bool:
        return time.monotonic() >= self._deadline

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
